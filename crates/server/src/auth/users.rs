//! Users as mongod keeps them: documents in `admin.system.users`, written through the engine
//! like any other (so the log makes them durable, and backups and recovery carry them), read
//! from the latest snapshot when a client authenticates or a command is authorized.
//!
//! A user document:
//! `{_id: "<db>.<user>", userId: UUID, user, db, credentials: {"SCRAM-SHA-1": {...},
//! "SCRAM-SHA-256": {...}}, roles: [{role, db}], customData?}`.

use bson::raw::RawBsonRef;
use bson::{Bson, Document, doc};
use mangrove_storage::{CollectionInfo, ReadView, Txn};

use super::scram::{Credential, Mechanism};
use crate::access::key_of;
use crate::error::{CommandError, CommandResult, code};

/// Where users live.
pub const USERS_NS: &str = "admin.system.users";

/// A role as users and roles name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoleRef {
    pub role: String,
    pub db: String,
}

impl RoleRef {
    pub fn to_document(&self) -> Document {
        doc! { "role": &self.role, "db": &self.db }
    }
}

/// One stored user.
#[derive(Clone, Debug)]
pub struct User {
    pub user: String,
    pub db: String,
    pub roles: Vec<RoleRef>,
    pub doc: Document,
}

impl User {
    pub fn id_of(db: &str, user: &str) -> String {
        format!("{db}.{user}")
    }

    /// The user's keys for `mechanism`, if the user has that mechanism.
    pub fn credential(&self, mechanism: Mechanism) -> Option<Credential> {
        let creds = self.doc.get_document("credentials").ok()?;
        Credential::from_document(creds.get_document(mechanism.name()).ok()?)
    }

    pub fn mechanisms(&self) -> Vec<String> {
        self.doc
            .get_document("credentials")
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn from_document(doc: Document) -> Option<User> {
        let user = doc.get_str("user").ok()?.to_string();
        let db = doc.get_str("db").ok()?.to_string();
        let roles = roles_of(doc.get_array("roles").ok()?)?;
        Some(User {
            user,
            db,
            roles,
            doc,
        })
    }
}

fn roles_of(roles: &[Bson]) -> Option<Vec<RoleRef>> {
    roles
        .iter()
        .map(|r| {
            let d = r.as_document()?;
            Some(RoleRef {
                role: d.get_str("role").ok()?.to_string(),
                db: d.get_str("db").ok()?.to_string(),
            })
        })
        .collect()
}

/// The users collection as `view` sees it (absent until the first user is created).
pub fn users_collection(view: &dyn ReadView) -> Option<CollectionInfo> {
    view.collection(USERS_NS)
}

/// The user `user` of database `db`.
pub fn find(view: &dyn ReadView, db: &str, user: &str) -> CommandResult<Option<User>> {
    let Some(coll) = users_collection(view) else {
        return Ok(None);
    };
    let id = User::id_of(db, user);
    let Some(raw) = view.get(&coll, &key_of(RawBsonRef::String(&id)))? else {
        return Ok(None);
    };
    let doc = Document::try_from(raw.as_ref())
        .map_err(|e| CommandError::new(code::INTERNAL_ERROR, format!("user document {id}: {e}")))?;
    User::from_document(doc).map(Some).ok_or_else(|| {
        CommandError::new(
            code::INTERNAL_ERROR,
            format!("user document {id} is not a valid user"),
        )
    })
}

/// Every user (of `db` only, if given), in `_id` order.
pub fn all(view: &dyn ReadView, db: Option<&str>) -> CommandResult<Vec<User>> {
    let Some(coll) = users_collection(view) else {
        return Ok(Vec::new());
    };
    let mut users = Vec::new();
    let mut bad = None;
    view.scan(&coll, None, &mut |_, raw| {
        match Document::try_from(raw.as_ref())
            .ok()
            .and_then(User::from_document)
        {
            Some(u) if db.is_none_or(|d| d == u.db) => users.push(u),
            Some(_) => {}
            None => bad = Some(()),
        }
        std::ops::ControlFlow::Continue(())
    })?;
    if bad.is_some() {
        tracing::warn!("admin.system.users holds a document that is not a valid user; skipped");
    }
    Ok(users)
}

/// Whether any user exists (the localhost exception ends with the first).
pub fn any(view: &dyn ReadView) -> CommandResult<bool> {
    let Some(coll) = users_collection(view) else {
        return Ok(false);
    };
    let mut found = false;
    view.scan(&coll, None, &mut |_, _| {
        found = true;
        std::ops::ControlFlow::Break(())
    })?;
    Ok(found)
}

/// Writes `doc` (a user or a role) into `ns` under its string `_id`: a new document, or the
/// replacement of the one there.
pub fn put(txn: &mut Txn, ns: &str, doc: &Document) -> CommandResult<()> {
    let internal = |e: String| CommandError::new(code::INTERNAL_ERROR, e);
    let (coll, _) = txn.ensure_collection(ns, Document::new())?;
    let id = doc.get_str("_id").map_err(|e| internal(e.to_string()))?;
    let key = key_of(RawBsonRef::String(id));
    let raw = bson::RawDocumentBuf::try_from(doc).map_err(|e| internal(e.to_string()))?;
    let raw = std::sync::Arc::new(raw);
    if txn.get(&coll, &key)?.is_some() {
        txn.replace(&coll, key, raw)?;
    } else {
        txn.insert(&coll, key, raw)?;
    }
    Ok(())
}

/// The credentials document for `password`, for each of `mechanisms`.
pub fn credentials(
    user: &str,
    password: &str,
    mechanisms: &[Mechanism],
    iterations: impl Fn(Mechanism) -> u32,
) -> CommandResult<Document> {
    let mut creds = Document::new();
    for &m in mechanisms {
        let secret = super::scram::mechanism_password(m, user, password).ok_or_else(|| {
            CommandError::bad_value(
                "the password holds characters SASLprep prohibits (SCRAM-SHA-256); choose another",
            )
        })?;
        creds.insert(
            m.name(),
            Credential::derive(m, &secret, iterations(m)).to_document(),
        );
    }
    Ok(creds)
}
