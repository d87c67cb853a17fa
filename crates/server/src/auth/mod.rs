//! Who a connection is, and what it may do: authentication (SCRAM, `scram.rs`), users
//! (`users.rs`), built-in roles (`roles.rs`), and the check every command passes before it runs
//! ([`authorize`]), from what its entry in the command table says it needs.
//!
//! Invariants:
//! - Without `--auth` nothing is checked (every connection may do everything, as mongod).
//! - With `--auth`, a command runs only if its table entry says it is open to all (the
//!   handshake and the authentication commands), or the connection's user holds, through its
//!   roles, every action the entry lists on the command's database (or on the cluster).
//! - A connection's rights follow the users collection: when a user is changed or dropped
//!   ([`Registry::changed`]), every connection re-reads its user before its next command, so a
//!   dropped user's connections lose their rights at once.
//! - mongod's localhost exception: while no user exists, a client on a loopback address may
//!   create the first user (and nothing else that needs rights).

pub mod role_defs;
pub mod roles;
pub mod scram;
pub mod users;
pub mod x509;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use roles::Action;
use scram::{Conversation, Mechanism};
use users::RoleRef;

/// What a command needs, as its table entry says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Open to every connection: the handshake, authentication itself.
    Nothing,
    /// Any authenticated user (sessions and transactions are the user's own).
    Authentication,
    /// These actions on the command's database (or the cluster, for cluster actions).
    Actions(&'static [Action]),
}

/// Users changes, counted: a connection re-reads its user when this moves.
#[derive(Default)]
pub struct Registry {
    generation: AtomicU64,
}

impl Registry {
    /// A user was created, changed or dropped.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// An authenticated user of one connection.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub user: String,
    pub db: String,
    /// The roles granted to the user itself.
    pub roles: Vec<RoleRef>,
    /// What they grant, inherited roles followed.
    pub grants: role_defs::Grants,
    /// `user@db`: whose sessions the connection's requests use.
    pub owner: std::sync::Arc<str>,
    /// The users generation the roles were read at.
    generation: u64,
}

impl Authenticated {
    fn read(shared: &Shared, user: &users::User) -> CommandResult<Authenticated> {
        let snapshot = shared.engine.snapshot();
        Ok(Authenticated {
            user: user.user.clone(),
            db: user.db.clone(),
            roles: user.roles.clone(),
            grants: role_defs::resolve(&snapshot, &user.roles)?,
            owner: format!("{}@{}", user.user, user.db).into(),
            generation: shared.auth.generation(),
        })
    }
}

/// A SASL conversation in progress on one connection.
pub struct Pending {
    pub conversation: Conversation,
    pub db: String,
    pub conversation_id: i32,
    pub skip_empty_exchange: bool,
    /// The proof was verified; only the client's empty last message is awaited.
    pub verified: bool,
}

/// One connection's authentication state.
#[derive(Default)]
pub struct Identity {
    user: Option<Authenticated>,
    pub pending: Option<Pending>,
}

impl Identity {
    /// Becomes `user`, with its roles as of now.
    pub fn authenticate(&mut self, shared: &Shared, user: &users::User) -> CommandResult<()> {
        self.user = Some(Authenticated::read(shared, user)?);
        Ok(())
    }

    pub fn logout(&mut self) {
        self.user = None;
        self.pending = None;
    }

    /// The authenticated user, re-read if users changed since (`None`: not authenticated, or
    /// the user was dropped).
    pub fn current(&mut self, shared: &Shared) -> CommandResult<Option<&Authenticated>> {
        let generation = shared.auth.generation();
        if let Some(user) = &self.user
            && user.generation != generation
        {
            let snapshot = shared.engine.snapshot();
            self.user = match users::find(&snapshot, &user.db, &user.user)? {
                Some(u) => Some(Authenticated::read(shared, &u)?),
                None => None,
            };
        }
        Ok(self.user.as_ref())
    }
}

/// Checks that the connection may run `req` (whose command needs `needs`) on its database and
/// the collection it names (the command's value, when that is a string).
pub fn authorize(
    shared: &Shared,
    identity: &mut Identity,
    peer: std::net::SocketAddr,
    req: &crate::request::Request<'_>,
    needs: Needs,
) -> CommandResult<()> {
    if !shared.config.auth || needs == Needs::Nothing {
        return Ok(());
    }
    let (name, db) = (req.name, req.db);
    let collection = match req.command_value() {
        Some(bson::raw::RawBsonRef::String(c)) => Some(c),
        _ => None,
    };
    let Some(user) = identity.current(shared)? else {
        if localhost_exception(shared, peer, name)? {
            return Ok(());
        }
        return Err(CommandError::new(
            code::UNAUTHORIZED,
            format!("Command {name} requires authentication"),
        ));
    };
    if let Needs::Actions(actions) = needs
        && let Some(missing) = actions
            .iter()
            .find(|&&a| !user.grants.allows(db, collection, a))
    {
        tracing::debug!(user = %user.user, db = %user.db, command = name, action = ?missing, "unauthorized");
        return Err(unauthorized(db, name));
    }
    // `$currentOp` shows every user's operations: it needs `inprog` on the cluster.
    if name == "aggregate"
        && starts_with_current_op(req)
        && !user.grants.allows(db, None, Action::Inprog)
    {
        return Err(unauthorized(db, name));
    }
    Ok(())
}

fn starts_with_current_op(req: &crate::request::Request<'_>) -> bool {
    let Ok(Some(stages)) = req.opt_array("pipeline") else {
        return false;
    };
    match stages.into_iter().next() {
        Some(Ok(bson::raw::RawBsonRef::Document(first))) => {
            matches!(first.iter().next(), Some(Ok((name, _))) if name.as_str() == "$currentOp")
        }
        _ => false,
    }
}

/// mongod's Unauthorized for a command the user's roles do not allow.
pub fn unauthorized(db: &str, name: &str) -> CommandError {
    CommandError::new(
        code::UNAUTHORIZED,
        format!("not authorized on {db} to execute command {{ {name}: ... }}"),
    )
}

/// Whether `peer` may run `name` under the localhost exception: no user exists yet, the client
/// is on a loopback address, and the command creates the first user.
fn localhost_exception(
    shared: &Shared,
    peer: std::net::SocketAddr,
    name: &str,
) -> CommandResult<bool> {
    if name != "createUser" || !peer.ip().is_loopback() {
        return Ok(false);
    }
    Ok(!users::any(&shared.engine.snapshot())?)
}

/// The mechanisms new users get, and which `hello` offers.
pub const MECHANISMS: [Mechanism; 2] = [Mechanism::Sha1, Mechanism::Sha256];

/// Whether a user of this connection may run `action` on `db` (for checks a command makes
/// beyond its table entry, such as `$out`'s writes).
pub fn may(
    shared: &Shared,
    identity: &mut Identity,
    db: &str,
    action: Action,
) -> CommandResult<bool> {
    allows(shared, identity, (db, None), action)
}

/// Whether a user of this connection may run `action` on collection `coll` of `db` (for
/// commands that name several namespaces, such as `bulkWrite`).
pub fn may_on(
    shared: &Shared,
    identity: &mut Identity,
    (db, coll): (&str, &str),
    action: Action,
) -> CommandResult<bool> {
    allows(shared, identity, (db, Some(coll)), action)
}

fn allows(
    shared: &Shared,
    identity: &mut Identity,
    (db, coll): (&str, Option<&str>),
    action: Action,
) -> CommandResult<bool> {
    if !shared.config.auth {
        return Ok(true);
    }
    Ok(identity
        .current(shared)?
        .is_some_and(|u| u.grants.allows(db, coll, action)))
}

/// The connection's user, as `connectionStatus` reports it.
pub fn status(shared: &Shared, identity: &mut Identity) -> CommandResult<bson::Document> {
    let (users, roles) = match identity.current(shared)? {
        Some(u) => (
            vec![bson::doc! { "user": &u.user, "db": &u.db }],
            u.roles.iter().map(RoleRef::to_document).collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    Ok(bson::doc! {
        "authInfo": { "authenticatedUsers": users, "authenticatedUserRoles": roles },
        "ok": 1.0,
    })
}
