//! Actions and mongod's built-in roles: which actions each role grants on which databases.
//!
//! An action is either on a database (find, insert, createIndex, createUser, ...) or on the
//! cluster (serverStatus, setParameter, ...). A database role granted on database `D` (`read`,
//! `readWrite`, `dbAdmin`, `userAdmin`, `dbOwner`) gives its actions on `D` alone; the
//! `...AnyDatabase` roles, the cluster roles and `root` exist only on `admin` and give their
//! actions on every database (and the cluster). The sets follow mongod 7.0's documented
//! built-in roles for the commands Mangrove has.

use super::users::RoleRef;

/// What a command does, as authorization sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    // On a database.
    Find,
    Insert,
    Update,
    Remove,
    ChangeStream,
    KillCursors,
    ListCollections,
    ListIndexes,
    CollStats,
    DbStats,
    CreateCollection,
    DropCollection,
    CreateIndex,
    DropIndex,
    CollMod,
    ConvertToCapped,
    RenameCollectionSameDb,
    DropDatabase,
    EnableProfiler,
    Validate,
    BypassDocumentValidation,
    CreateUser,
    DropUser,
    ChangePassword,
    GrantRole,
    RevokeRole,
    ViewUser,
    CreateRole,
    DropRole,
    ViewRole,
    // On the cluster.
    ListDatabases,
    ServerStatus,
    HostInfo,
    GetCmdLineOpts,
    GetLog,
    GetParameter,
    SetParameter,
    Inprog,
    Killop,
    Top,
    Fsync,
    Unlock,
    CreateBackup,
    KillAnySession,
    ReplSetGetStatus,
    ReplSetGetConfig,
    ReplSetConfigure,
    ReplSetStateChange,
    ReplSetResizeOplog,
    GetDefaultRwConcern,
    SetDefaultRwConcern,
    Shutdown,
    /// `configureFailPoint`, with `--enable-test-commands`: `root` only.
    TestCommands,
}

use Action::*;

/// mongod's names of the actions, as privileges spell them.
const NAMES: &[(Action, &str)] = &[
    (Find, "find"),
    (Insert, "insert"),
    (Update, "update"),
    (Remove, "remove"),
    (ChangeStream, "changeStream"),
    (KillCursors, "killCursors"),
    (ListCollections, "listCollections"),
    (ListIndexes, "listIndexes"),
    (CollStats, "collStats"),
    (DbStats, "dbStats"),
    (CreateCollection, "createCollection"),
    (DropCollection, "dropCollection"),
    (CreateIndex, "createIndex"),
    (DropIndex, "dropIndex"),
    (CollMod, "collMod"),
    (ConvertToCapped, "convertToCapped"),
    (RenameCollectionSameDb, "renameCollectionSameDB"),
    (DropDatabase, "dropDatabase"),
    (EnableProfiler, "enableProfiler"),
    (Validate, "validate"),
    (BypassDocumentValidation, "bypassDocumentValidation"),
    (CreateUser, "createUser"),
    (DropUser, "dropUser"),
    (ChangePassword, "changePassword"),
    (GrantRole, "grantRole"),
    (RevokeRole, "revokeRole"),
    (ViewUser, "viewUser"),
    (CreateRole, "createRole"),
    (DropRole, "dropRole"),
    (ViewRole, "viewRole"),
    (ListDatabases, "listDatabases"),
    (ServerStatus, "serverStatus"),
    (HostInfo, "hostInfo"),
    (GetCmdLineOpts, "getCmdLineOpts"),
    (GetLog, "getLog"),
    (GetParameter, "getParameter"),
    (SetParameter, "setParameter"),
    (Inprog, "inprog"),
    (Killop, "killop"),
    (Top, "top"),
    (Fsync, "fsync"),
    (Unlock, "unlock"),
    (CreateBackup, "createBackup"),
    (KillAnySession, "killAnySession"),
    (ReplSetGetStatus, "replSetGetStatus"),
    (ReplSetGetConfig, "replSetGetConfig"),
    (ReplSetConfigure, "replSetConfigure"),
    (ReplSetStateChange, "replSetStateChange"),
    (ReplSetResizeOplog, "replSetResizeOplog"),
    (GetDefaultRwConcern, "getDefaultRWConcern"),
    (SetDefaultRwConcern, "setDefaultRWConcern"),
    (Shutdown, "shutdown"),
    (TestCommands, "configureFailPoint"),
];

impl Action {
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(a, _)| *a == self)
            .map_or("unknown", |(_, n)| n)
    }

    pub fn from_name(name: &str) -> Option<Action> {
        NAMES.iter().find(|(_, n)| *n == name).map(|(a, _)| *a)
    }

    /// An action on the cluster rather than on a database.
    pub fn on_cluster(self) -> bool {
        matches!(
            self,
            ListDatabases
                | ServerStatus
                | HostInfo
                | GetCmdLineOpts
                | GetLog
                | GetParameter
                | SetParameter
                | Inprog
                | Killop
                | Top
                | Fsync
                | Unlock
                | CreateBackup
                | KillAnySession
                | ReplSetGetStatus
                | ReplSetGetConfig
                | ReplSetConfigure
                | ReplSetStateChange
                | ReplSetResizeOplog
                | GetDefaultRwConcern
                | SetDefaultRwConcern
                | Shutdown
                | TestCommands
        )
    }
}

const READ: &[Action] = &[
    ChangeStream,
    CollStats,
    DbStats,
    Find,
    KillCursors,
    ListCollections,
    ListIndexes,
];
const READ_WRITE: &[Action] = &[
    ConvertToCapped,
    CreateCollection,
    CreateIndex,
    DropCollection,
    DropIndex,
    Insert,
    Remove,
    RenameCollectionSameDb,
    Update,
];
const DB_ADMIN: &[Action] = &[
    BypassDocumentValidation,
    CollMod,
    CollStats,
    ConvertToCapped,
    CreateCollection,
    CreateIndex,
    DbStats,
    DropCollection,
    DropDatabase,
    DropIndex,
    EnableProfiler,
    ListCollections,
    ListIndexes,
    RenameCollectionSameDb,
    Validate,
];
const USER_ADMIN: &[Action] = &[
    ChangePassword,
    CreateRole,
    CreateUser,
    DropRole,
    DropUser,
    GrantRole,
    RevokeRole,
    ViewRole,
    ViewUser,
];
const CLUSTER_MONITOR: &[Action] = &[
    GetCmdLineOpts,
    GetLog,
    GetParameter,
    HostInfo,
    Inprog,
    ListDatabases,
    ReplSetGetStatus,
    ReplSetGetConfig,
    GetDefaultRwConcern,
    ServerStatus,
    Top,
];
const CLUSTER_MANAGER: &[Action] = &[
    ReplSetGetStatus,
    ReplSetGetConfig,
    ReplSetConfigure,
    ReplSetStateChange,
    ReplSetResizeOplog,
    GetDefaultRwConcern,
    SetDefaultRwConcern,
];
const HOST_MANAGER: &[Action] = &[
    CreateBackup,
    Fsync,
    KillAnySession,
    Killop,
    SetParameter,
    Shutdown,
    Unlock,
];
const BACKUP: &[Action] = &[
    CollStats,
    CreateBackup,
    DbStats,
    Find,
    ListCollections,
    ListDatabases,
    ListIndexes,
    ServerStatus,
];
const RESTORE: &[Action] = &[
    BypassDocumentValidation,
    CollMod,
    ConvertToCapped,
    CreateCollection,
    CreateIndex,
    CreateUser,
    DropCollection,
    GrantRole,
    Insert,
    ListCollections,
    Update,
];

/// The built-in roles' names, for `rolesInfo` and checking `roles` arguments.
pub const BUILT_IN: &[&str] = &[
    "read",
    "readWrite",
    "dbAdmin",
    "dbOwner",
    "userAdmin",
    "clusterMonitor",
    "clusterManager",
    "clusterAdmin",
    "hostManager",
    "backup",
    "restore",
    "readAnyDatabase",
    "readWriteAnyDatabase",
    "userAdminAnyDatabase",
    "dbAdminAnyDatabase",
    "root",
];

/// Roles that exist only on `admin`.
pub fn admin_only(role: &str) -> bool {
    !matches!(
        role,
        "read" | "readWrite" | "dbAdmin" | "dbOwner" | "userAdmin"
    )
}

/// Whether `role` names a built-in role that exists on `db`.
pub fn exists(role: &RoleRef) -> bool {
    BUILT_IN.contains(&role.role.as_str()) && (role.db == "admin" || !admin_only(&role.role))
}

/// Whether one role grants `action` (on `db` for a database action).
fn grants(role: &RoleRef, db: &str, action: Action) -> bool {
    let on_role_db = role.db == db && !action.on_cluster();
    let any = |sets: &[&[Action]]| sets.iter().any(|s| s.contains(&action));
    let database = |sets: &[&[Action]]| on_role_db && any(sets);
    let everywhere = |sets: &[&[Action]]| role.db == "admin" && any(sets);
    match role.role.as_str() {
        "read" => database(&[READ]),
        "readWrite" => database(&[READ, READ_WRITE]),
        "dbAdmin" => database(&[DB_ADMIN]),
        "userAdmin" => database(&[USER_ADMIN]),
        "dbOwner" => database(&[READ, READ_WRITE, DB_ADMIN, USER_ADMIN]),
        "readAnyDatabase" => everywhere(&[READ]) || (role.db == "admin" && action == ListDatabases),
        "readWriteAnyDatabase" => {
            everywhere(&[READ, READ_WRITE]) || (role.db == "admin" && action == ListDatabases)
        }
        "userAdminAnyDatabase" => {
            everywhere(&[USER_ADMIN]) || (role.db == "admin" && action == ListDatabases)
        }
        "dbAdminAnyDatabase" => {
            everywhere(&[DB_ADMIN]) || (role.db == "admin" && action == ListDatabases)
        }
        "clusterMonitor" => everywhere(&[CLUSTER_MONITOR]),
        "clusterManager" => everywhere(&[CLUSTER_MANAGER]),
        "hostManager" => everywhere(&[HOST_MANAGER]),
        "clusterAdmin" => {
            everywhere(&[CLUSTER_MONITOR, CLUSTER_MANAGER, HOST_MANAGER])
                || (role.db == "admin" && action == DropDatabase)
        }
        "backup" => everywhere(&[BACKUP]),
        "restore" => everywhere(&[RESTORE]),
        "root" => role.db == "admin",
        _ => false,
    }
}

/// Whether any of `roles` grants `action` on `db`.
pub fn allowed(roles: &[RoleRef], db: &str, action: Action) -> bool {
    roles.iter().any(|r| grants(r, db, action))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(role: &str, db: &str) -> RoleRef {
        RoleRef {
            role: role.into(),
            db: db.into(),
        }
    }

    #[test]
    fn database_roles_stay_on_their_database() {
        let r = [role("readWrite", "app")];
        assert!(allowed(&r, "app", Insert));
        assert!(allowed(&r, "app", Find));
        assert!(!allowed(&r, "other", Find));
        assert!(!allowed(&r, "app", DropDatabase));
        assert!(!allowed(&r, "app", ServerStatus));
        let admin_read = [role("read", "admin")];
        assert!(allowed(&admin_read, "admin", Find));
        assert!(
            !allowed(&admin_read, "app", Find),
            "read@admin is not readAnyDatabase"
        );
    }

    #[test]
    fn action_names_round_trip() {
        for (action, name) in NAMES {
            assert_eq!(Action::from_name(name), Some(*action));
            assert_eq!(action.name(), *name);
        }
        assert_eq!(Action::from_name("fly"), None);
    }

    #[test]
    fn admin_roles_span_databases() {
        assert!(allowed(&[role("readAnyDatabase", "admin")], "x", Find));
        assert!(!allowed(&[role("readAnyDatabase", "admin")], "x", Insert));
        assert!(allowed(&[role("root", "admin")], "x", TestCommands));
        assert!(!allowed(
            &[role("clusterAdmin", "admin")],
            "x",
            TestCommands
        ));
        assert!(allowed(
            &[role("clusterMonitor", "admin")],
            "x",
            ServerStatus
        ));
        assert!(!allowed(
            &[role("clusterMonitor", "admin")],
            "x",
            SetParameter
        ));
        assert!(!allowed(&[role("dbAdmin", "app")], "app", Find));
        assert!(allowed(&[role("dbOwner", "app")], "app", CreateUser));
        assert!(!exists(&role("root", "app")));
        assert!(exists(&role("read", "app")));
        assert!(!exists(&role("superuser", "admin")));
    }
}
