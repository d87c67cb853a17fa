//! User management: `createUser`, `updateUser`, `dropUser`, `dropAllUsersFromDatabase`,
//! `usersInfo`, `grantRolesToUser`, `revokeRolesFromUser`, `rolesInfo` (the built-in roles).
//!
//! Users are documents of `admin.system.users` (`auth/users.rs`), each change one engine
//! transaction (so durable and in the log like any write), after which every connection
//! re-reads its user (`Registry::changed`).

use bson::raw::RawBsonRef;
use bson::{Document, doc};
use mangrove_storage::{ReadView, Txn};

use crate::Shared;
use crate::access::key_of;
use crate::auth::role_defs;
use crate::auth::roles::Action;
use crate::auth::scram::Mechanism;
use crate::auth::users::{self, RoleRef, USERS_NS, User};
use crate::auth::{self, Identity, MECHANISMS};
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::Reply;
use super::args::internal;
use super::write_path::{WriteOptions, retry_conflicts};

/// The fields `createUser` and `updateUser` take.
const USER_FIELDS: &[&str] = &[
    "pwd",
    "roles",
    "customData",
    "mechanisms",
    "digestPassword",
    "authenticationRestrictions",
];

/// mongod's code for a user that already exists.
const USER_EXISTS: i32 = 51003;

fn user_not_found(user: &str, db: &str) -> CommandError {
    CommandError::new(
        code::USER_NOT_FOUND,
        format!("Could not find user \"{user}\" for db \"{db}\""),
    )
}

/// The `roles` argument: role names (on `db`) or `{role, db}` documents, each a built-in role.
fn parse_roles(
    view: &dyn ReadView,
    v: Option<RawBsonRef<'_>>,
    db: &str,
    field: &str,
) -> CommandResult<Vec<RoleRef>> {
    let Some(v) = v else {
        return Err(CommandError::new(
            code::MISSING_FIELD,
            format!("BSON field '{field}' is missing but a required field"),
        ));
    };
    let RawBsonRef::Array(items) = v else {
        return Err(CommandError::type_mismatch(format!(
            "BSON field '{field}' is the wrong type, expected type 'array'"
        )));
    };
    let mut out = Vec::new();
    for item in items {
        let role = match item.map_err(internal)? {
            RawBsonRef::String(name) => RoleRef {
                role: name.to_string(),
                db: db.to_string(),
            },
            RawBsonRef::Document(d) => RoleRef {
                role: d.get_str("role").map_err(|_| bad_role_spec())?.to_string(),
                db: d.get_str("db").map_err(|_| bad_role_spec())?.to_string(),
            },
            _ => return Err(bad_role_spec()),
        };
        if !role_defs::exists(view, &role)? {
            return Err(CommandError::new(
                code::ROLE_NOT_FOUND,
                format!("Could not find role: {}@{}", role.role, role.db),
            ));
        }
        if !out.contains(&role) {
            out.push(role);
        }
    }
    Ok(out)
}

fn bad_role_spec() -> CommandError {
    CommandError::bad_value("a role must be a name or a document {role: <name>, db: <database>}")
}

/// The connection must be allowed to grant (or revoke) each of `roles`.
fn check_role_rights(
    shared: &Shared,
    identity: &mut Identity,
    roles: &[RoleRef],
    action: Action,
) -> CommandResult<()> {
    // Unauthenticated, only the localhost exception's first user gets here: any roles.
    if shared.config.auth && identity.current(shared)?.is_none() {
        return Ok(());
    }
    for role in roles {
        if !auth::may(shared, identity, &role.db, action)? {
            return Err(auth::unauthorized(&role.db, "grantRolesToUser"));
        }
    }
    Ok(())
}

/// `mechanisms`: a subset of SCRAM-SHA-1 and SCRAM-SHA-256 (both by default).
fn parse_mechanisms(req: &Request<'_>) -> CommandResult<Vec<Mechanism>> {
    let Some(list) = req.opt_array("mechanisms")? else {
        return Ok(MECHANISMS.to_vec());
    };
    let mut out = Vec::new();
    for item in list {
        let name = match item.map_err(internal)? {
            RawBsonRef::String(s) => s,
            _ => return Err(CommandError::bad_value("mechanisms must be strings")),
        };
        let m = Mechanism::from_name(name)
            .ok_or_else(|| CommandError::bad_value(format!("Unknown auth mechanism '{name}'")))?;
        out.push(m);
    }
    if out.is_empty() {
        return Err(CommandError::bad_value(
            "mechanisms field must not be empty",
        ));
    }
    Ok(out)
}

fn new_credentials(
    shared: &Shared,
    req: &Request<'_>,
    user: &str,
    mechanisms: &[Mechanism],
) -> CommandResult<Document> {
    if req.opt_bool("digestPassword")? == Some(false) {
        return Err(CommandError::bad_value(
            "digestPassword: false is not supported: the server derives SCRAM keys from the password",
        ));
    }
    let pwd = req.opt_str("pwd")?.ok_or_else(|| {
        CommandError::bad_value(
            "Must provide a 'pwd' field for all user documents, except those with '$external' as the user's source db",
        )
    })?;
    if pwd.is_empty() {
        return Err(CommandError::bad_value("Password cannot be empty"));
    }
    let config = &shared.config;
    users::credentials(user, pwd, mechanisms, |m| match m {
        Mechanism::Sha1 => config.scram_sha1_iterations,
        Mechanism::Sha256 => config.scram_sha256_iterations,
    })
}

fn check_user_db(db: &str) -> CommandResult<()> {
    if matches!(db, "local" | "config") {
        return Err(CommandError::bad_value(format!(
            "Cannot create users in the {db} database"
        )));
    }
    Ok(())
}

/// `createUser`.
pub(super) async fn create_user(
    shared: &Shared,
    identity: &mut Identity,
    req: &Request<'_>,
) -> CommandResult<Reply> {
    req.check_fields(USER_FIELDS)?;
    let name = req.collection()?;
    check_user_db(req.db)?;
    let roles = parse_roles(
        &shared.engine.snapshot(),
        req.get("roles"),
        req.db,
        "createUser.roles",
    )?;
    check_role_rights(shared, identity, &roles, Action::GrantRole)?;
    // Users of `$external` authenticate with their certificate (MONGODB-X509): no password.
    let credentials = if req.db == "$external" {
        if req.get("pwd").is_some() {
            return Err(CommandError::bad_value(
                "Cannot set 'pwd' for users of the $external database",
            ));
        }
        doc! { "external": true }
    } else {
        new_credentials(shared, req, name, &parse_mechanisms(req)?)?
    };
    let mut user = doc! {
        "_id": User::id_of(req.db, name),
        "userId": bson::Uuid::new(),
        "user": name,
        "db": req.db,
        "credentials": credentials,
        "roles": roles.iter().map(RoleRef::to_document).collect::<Vec<_>>(),
    };
    if let Some(data) = req.opt_doc("customData")? {
        user.insert("customData", Document::try_from(data).map_err(internal)?);
    }
    let opts = WriteOptions::from_request(req)?;
    retry_conflicts(shared, &opts, |txn: &mut Txn| {
        if users::find(txn, req.db, name)?.is_some() {
            return Err(CommandError::new(
                USER_EXISTS,
                format!("User \"{name}@{}\" already exists", req.db),
            ));
        }
        users::put(txn, USERS_NS, &user)
    })
    .await?;
    shared.auth.changed();
    tracing::info!(user = name, db = req.db, "created user");
    Ok(doc! { "ok": 1.0 }.into())
}

/// `updateUser`: a new password, roles or custom data.
pub(super) async fn update_user(
    shared: &Shared,
    identity: &mut Identity,
    req: &Request<'_>,
) -> CommandResult<Reply> {
    req.check_fields(USER_FIELDS)?;
    let name = req.collection()?;
    let roles = match req.get("roles") {
        Some(v) => Some(parse_roles(
            &shared.engine.snapshot(),
            Some(v),
            req.db,
            "updateUser.roles",
        )?),
        None => None,
    };
    if let Some(roles) = &roles {
        check_role_rights(shared, identity, roles, Action::GrantRole)?;
    }
    let credentials = match req.get("pwd") {
        Some(_) => Some(new_credentials(shared, req, name, &parse_mechanisms(req)?)?),
        None => None,
    };
    let custom = req
        .opt_doc("customData")?
        .map(Document::try_from)
        .transpose()
        .map_err(internal)?;
    if roles.is_none() && credentials.is_none() && custom.is_none() {
        return Err(CommandError::bad_value(
            "Must specify at least one field to update in updateUser",
        ));
    }
    let opts = WriteOptions::from_request(req)?;
    retry_conflicts(shared, &opts, |txn: &mut Txn| {
        let user = users::find(txn, req.db, name)?.ok_or_else(|| user_not_found(name, req.db))?;
        let mut doc = user.doc;
        if let Some(roles) = &roles {
            doc.insert(
                "roles",
                roles.iter().map(RoleRef::to_document).collect::<Vec<_>>(),
            );
        }
        if let Some(credentials) = &credentials {
            doc.insert("credentials", credentials.clone());
        }
        if let Some(custom) = &custom {
            doc.insert("customData", custom.clone());
        }
        users::put(txn, USERS_NS, &doc)
    })
    .await?;
    shared.auth.changed();
    Ok(doc! { "ok": 1.0 }.into())
}

/// `grantRolesToUser` and `revokeRolesFromUser`.
pub(super) async fn change_roles(
    shared: &Shared,
    identity: &mut Identity,
    req: &Request<'_>,
    grant: bool,
) -> CommandResult<Reply> {
    req.check_fields(&["roles"])?;
    let name = req.collection()?;
    let field = format!("{}.roles", req.name);
    let changed = parse_roles(&shared.engine.snapshot(), req.get("roles"), req.db, &field)?;
    let action = if grant {
        Action::GrantRole
    } else {
        Action::RevokeRole
    };
    check_role_rights(shared, identity, &changed, action)?;
    let opts = WriteOptions::from_request(req)?;
    retry_conflicts(shared, &opts, |txn: &mut Txn| {
        let user = users::find(txn, req.db, name)?.ok_or_else(|| user_not_found(name, req.db))?;
        let mut roles = user.roles.clone();
        if grant {
            roles.extend(changed.iter().filter(|r| !user.roles.contains(r)).cloned());
        } else {
            roles.retain(|r| !changed.contains(r));
        }
        let mut doc = user.doc;
        doc.insert(
            "roles",
            roles.iter().map(RoleRef::to_document).collect::<Vec<_>>(),
        );
        users::put(txn, USERS_NS, &doc)
    })
    .await?;
    shared.auth.changed();
    Ok(doc! { "ok": 1.0 }.into())
}

/// `dropUser`.
pub(super) async fn drop_user(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[])?;
    let name = req.collection()?;
    let opts = WriteOptions::from_request(req)?;
    retry_conflicts(shared, &opts, |txn: &mut Txn| {
        let coll = users::users_collection(txn).ok_or_else(|| user_not_found(name, req.db))?;
        let key = key_of(RawBsonRef::String(&User::id_of(req.db, name)));
        if txn.get(&coll, &key)?.is_none() {
            return Err(user_not_found(name, req.db));
        }
        txn.delete(&coll, key)?;
        Ok(())
    })
    .await?;
    shared.auth.changed();
    tracing::info!(user = name, db = req.db, "dropped user");
    Ok(doc! { "ok": 1.0 }.into())
}

/// `dropAllUsersFromDatabase`: `n`, the users dropped.
pub(super) async fn drop_all_users(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[])?;
    let opts = WriteOptions::from_request(req)?;
    let n = retry_conflicts(shared, &opts, |txn: &mut Txn| {
        let Some(coll) = users::users_collection(txn) else {
            return Ok(0);
        };
        let gone = users::all(txn, Some(req.db))?;
        for user in &gone {
            let key = key_of(RawBsonRef::String(&User::id_of(&user.db, &user.user)));
            txn.delete(&coll, key)?;
        }
        Ok(gone.len() as i32)
    })
    .await?;
    shared.auth.changed();
    Ok(doc! { "n": n, "ok": 1.0 }.into())
}

/// The users `usersInfo` names: `1` (all of the database, or of all with `forAllDBs`), a
/// name, `{user, db}`, or a list of those.
fn users_named(shared: &Shared, req: &Request<'_>) -> CommandResult<Vec<(String, String)>> {
    let one = |v: RawBsonRef<'_>| -> CommandResult<(String, String)> {
        match v {
            RawBsonRef::String(name) => Ok((name.to_string(), req.db.to_string())),
            RawBsonRef::Document(d) => Ok((
                d.get_str("user").map_err(|_| bad_user_spec())?.to_string(),
                d.get_str("db").map_err(|_| bad_user_spec())?.to_string(),
            )),
            _ => Err(bad_user_spec()),
        }
    };
    match req.command_value() {
        Some(RawBsonRef::Array(items)) => items
            .into_iter()
            .map(|i| one(i.map_err(internal)?))
            .collect(),
        Some(v @ (RawBsonRef::String(_) | RawBsonRef::Document(_))) => Ok(vec![one(v)?]),
        Some(v) if crate::request::as_i64(v) == Some(1) => {
            let all_dbs = req.opt_bool("forAllDBs")?.unwrap_or(false);
            let db = (!all_dbs).then_some(req.db);
            Ok(users::all(&shared.engine.snapshot(), db)?
                .into_iter()
                .map(|u| (u.user, u.db))
                .collect())
        }
        _ => Err(bad_user_spec()),
    }
}

fn bad_user_spec() -> CommandError {
    CommandError::bad_value(
        "usersInfo takes 1, a user name, a document {user, db}, or an array of those",
    )
}

/// `usersInfo`: users as mongod shows them (credentials only with `showCredentials`). A user
/// may see itself; others need `viewUser` on their database.
pub(super) fn users_info(
    shared: &Shared,
    identity: &mut Identity,
    req: &Request<'_>,
) -> CommandResult<Reply> {
    req.check_fields(&[
        "showCredentials",
        "showPrivileges",
        "showAuthenticationRestrictions",
        "showCustomData",
        "forAllDBs",
        "filter",
    ])?;
    let show_credentials = req.opt_bool("showCredentials")?.unwrap_or(false);
    let snapshot = shared.engine.snapshot();
    let me = identity
        .current(shared)?
        .map(|u| (u.user.clone(), u.db.clone()));
    let mut out = Vec::new();
    for (user, db) in users_named(shared, req)? {
        let own = me.as_ref().is_some_and(|(u, d)| *u == user && *d == db);
        if !own && !auth::may(shared, identity, &db, Action::ViewUser)? {
            return Err(auth::unauthorized(&db, "usersInfo"));
        }
        if let Some(found) = users::find(&snapshot, &db, &user)? {
            out.push(user_info(&found, show_credentials));
        }
    }
    Ok(doc! { "users": out, "ok": 1.0 }.into())
}

fn user_info(user: &User, show_credentials: bool) -> Document {
    let mut d = doc! {
        "_id": User::id_of(&user.db, &user.user),
        "user": &user.user,
        "db": &user.db,
        "roles": user.roles.iter().map(RoleRef::to_document).collect::<Vec<_>>(),
        "mechanisms": user.mechanisms(),
    };
    if let Ok(id) = user.doc.get("userId").ok_or(()) {
        d.insert("userId", id.clone());
    }
    if let Ok(data) = user.doc.get_document("customData") {
        d.insert("customData", data.clone());
    }
    if show_credentials && let Ok(c) = user.doc.get_document("credentials") {
        d.insert("credentials", c.clone());
    }
    d
}
