//! User-defined roles, as mongod keeps them in `admin.system.roles`: privileges (actions on a
//! resource) and inherited roles (built-in or user-defined), and what a user's roles grant once
//! every inherited role is followed ([`resolve`]).
//!
//! A role document: `{_id: "<db>.<role>", role, db, privileges: [{resource: {db, collection} |
//! {cluster: true} | {anyResource: true}, actions: [...]}], roles: [{role, db}]}`.
//!
//! Invariants:
//! - Resolution follows inherited roles at most [`MAX_DEPTH`] deep and visits each role once,
//!   so a cycle (which `createRole`/`grantRolesToRole` refuse anyway) cannot loop.
//! - A privilege on a database resource `{db: "", collection: ""}` means every database, as in
//!   mongod; a role defined on a database other than `admin` may only name its own database.

use std::collections::HashSet;
use std::ops::ControlFlow;

use bson::raw::RawBsonRef;
use bson::{Bson, Document, doc};
use mangrove_storage::ReadView;

use super::roles::{self, Action};
use super::users::RoleRef;
use crate::access::key_of;
use crate::error::{CommandError, CommandResult, code};

pub const ROLES_NS: &str = "admin.system.roles";
/// How deep inherited roles are followed.
pub const MAX_DEPTH: usize = 16;

/// What a privilege applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    Cluster,
    /// `anyResource: true`.
    Any,
    /// `""` for either part means any.
    Namespace {
        db: String,
        collection: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Privilege {
    pub resource: Resource,
    pub actions: Vec<Action>,
}

impl Privilege {
    fn allows(&self, db: &str, collection: Option<&str>, action: Action) -> bool {
        if !self.actions.contains(&action) {
            return false;
        }
        match &self.resource {
            Resource::Any => true,
            Resource::Cluster => action.on_cluster(),
            Resource::Namespace {
                db: d,
                collection: c,
            } => {
                !action.on_cluster()
                    && (d.is_empty() || d == db)
                    && (c.is_empty() || collection == Some(c.as_str()))
            }
        }
    }

    pub fn to_document(&self) -> Document {
        let resource = match &self.resource {
            Resource::Cluster => doc! { "cluster": true },
            Resource::Any => doc! { "anyResource": true },
            Resource::Namespace { db, collection } => doc! { "db": db, "collection": collection },
        };
        let actions: Vec<&str> = self.actions.iter().map(|a| a.name()).collect();
        doc! { "resource": resource, "actions": actions }
    }
}

/// A user-defined role.
#[derive(Clone, Debug)]
pub struct RoleDef {
    pub role: String,
    pub db: String,
    pub privileges: Vec<Privilege>,
    pub roles: Vec<RoleRef>,
}

impl RoleDef {
    pub fn id_of(db: &str, role: &str) -> String {
        format!("{db}.{role}")
    }

    pub fn to_document(&self) -> Document {
        doc! {
            "_id": RoleDef::id_of(&self.db, &self.role),
            "role": &self.role,
            "db": &self.db,
            "privileges": self.privileges.iter().map(Privilege::to_document).collect::<Vec<_>>(),
            "roles": self.roles.iter().map(RoleRef::to_document).collect::<Vec<_>>(),
        }
    }

    fn from_document(d: &Document) -> Option<RoleDef> {
        Some(RoleDef {
            role: d.get_str("role").ok()?.to_string(),
            db: d.get_str("db").ok()?.to_string(),
            privileges: d
                .get_array("privileges")
                .ok()?
                .iter()
                .map(|p| parse_privilege_doc(p.as_document()?, None).ok())
                .collect::<Option<_>>()?,
            roles: d
                .get_array("roles")
                .ok()?
                .iter()
                .map(|r| {
                    let r = r.as_document()?;
                    Some(RoleRef {
                        role: r.get_str("role").ok()?.to_string(),
                        db: r.get_str("db").ok()?.to_string(),
                    })
                })
                .collect::<Option<_>>()?,
        })
    }
}

/// A privilege from a command's argument; `role_db` (when defining a role on a database other
/// than `admin`) limits the resource to that database.
pub fn parse_privilege_doc(d: &Document, role_db: Option<&str>) -> CommandResult<Privilege> {
    let bad = |m: &str| CommandError::bad_value(format!("invalid privilege: {m}"));
    let resource = d.get_document("resource").map_err(|_| bad("no resource"))?;
    let resource = if resource.get_bool("cluster").unwrap_or(false) {
        Resource::Cluster
    } else if resource.get_bool("anyResource").unwrap_or(false) {
        Resource::Any
    } else {
        Resource::Namespace {
            db: resource
                .get_str("db")
                .map_err(|_| bad("resource.db"))?
                .to_string(),
            collection: resource
                .get_str("collection")
                .map_err(|_| bad("resource.collection"))?
                .to_string(),
        }
    };
    if let Some(own) = role_db.filter(|d| *d != "admin") {
        let fits = matches!(&resource, Resource::Namespace { db, .. } if db == own);
        if !fits {
            return Err(CommandError::bad_value(format!(
                "Roles on the '{own}' database cannot be granted privileges that target other databases or the cluster"
            )));
        }
    }
    let mut actions = Vec::new();
    for a in d.get_array("actions").map_err(|_| bad("no actions"))? {
        let name = a.as_str().ok_or_else(|| bad("actions must be strings"))?;
        let action = Action::from_name(name).ok_or_else(|| {
            CommandError::bad_value(format!("Unrecognized action privilege string: {name}"))
        })?;
        if !actions.contains(&action) {
            actions.push(action);
        }
    }
    Ok(Privilege { resource, actions })
}

/// The role `db.role`, if defined.
pub fn find(view: &dyn ReadView, db: &str, role: &str) -> CommandResult<Option<RoleDef>> {
    let Some(coll) = view.collection(ROLES_NS) else {
        return Ok(None);
    };
    let id = RoleDef::id_of(db, role);
    let Some(raw) = view.get(&coll, &key_of(RawBsonRef::String(&id)))? else {
        return Ok(None);
    };
    let doc = Document::try_from(raw.as_ref())
        .map_err(|e| CommandError::new(code::INTERNAL_ERROR, format!("role {id}: {e}")))?;
    Ok(RoleDef::from_document(&doc))
}

/// Every user-defined role of `db` (of all databases: `None`).
pub fn all(view: &dyn ReadView, db: Option<&str>) -> CommandResult<Vec<RoleDef>> {
    let Some(coll) = view.collection(ROLES_NS) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    view.scan(&coll, None, &mut |_, raw| {
        if let Some(r) = Document::try_from(raw.as_ref())
            .ok()
            .and_then(|d| RoleDef::from_document(&d))
            && db.is_none_or(|d| d == r.db)
        {
            out.push(r);
        }
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

/// Whether `role` exists: built in, or defined.
pub fn exists(view: &dyn ReadView, role: &RoleRef) -> CommandResult<bool> {
    Ok(roles::exists(role) || find(view, &role.db, &role.role)?.is_some())
}

/// What a set of roles grants once inherited roles are followed.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    pub builtin: Vec<RoleRef>,
    pub privileges: Vec<Privilege>,
}

impl Grants {
    pub fn allows(&self, db: &str, collection: Option<&str>, action: Action) -> bool {
        roles::allowed(&self.builtin, db, action)
            || self
                .privileges
                .iter()
                .any(|p| p.allows(db, collection, action))
    }
}

/// Follows `direct` and every role they inherit.
pub fn resolve(view: &dyn ReadView, direct: &[RoleRef]) -> CommandResult<Grants> {
    let mut grants = Grants::default();
    let mut seen = HashSet::new();
    let mut level: Vec<RoleRef> = direct.to_vec();
    for _ in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for role in level {
            if !seen.insert(role.clone()) {
                continue;
            }
            if roles::exists(&role) {
                grants.builtin.push(role);
            } else if let Some(def) = find(view, &role.db, &role.role)? {
                grants.privileges.extend(def.privileges);
                next.extend(def.roles);
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Ok(grants)
}

/// Whether `role` inherits `target`, directly or not (a grant that would make a cycle).
pub fn inherits(view: &dyn ReadView, role: &RoleRef, target: &RoleRef) -> CommandResult<bool> {
    let mut seen = HashSet::new();
    let mut stack = vec![role.clone()];
    while let Some(r) = stack.pop() {
        if &r == target {
            return Ok(true);
        }
        if !seen.insert(r.clone()) || seen.len() > 10_000 {
            continue;
        }
        if let Some(def) = find(view, &r.db, &r.role)? {
            stack.extend(def.roles);
        }
    }
    Ok(false)
}

/// A role's document as `rolesInfo` shows it, with its inherited roles (`roles`) and, for a
/// built-in role, `isBuiltin: true`.
pub fn info(role: &RoleRef, def: Option<&RoleDef>, show_privileges: bool) -> Bson {
    let mut d = doc! {
        "_id": RoleDef::id_of(&role.db, &role.role),
        "role": &role.role,
        "db": &role.db,
        "isBuiltin": def.is_none(),
        "roles": def.map(|d| d.roles.iter().map(RoleRef::to_document).collect::<Vec<_>>()).unwrap_or_default(),
        "inheritedRoles": def.map(|d| d.roles.iter().map(RoleRef::to_document).collect::<Vec<_>>()).unwrap_or_default(),
    };
    if show_privileges && let Some(def) = def {
        d.insert(
            "privileges",
            def.privileges
                .iter()
                .map(Privilege::to_document)
                .collect::<Vec<_>>(),
        );
    }
    Bson::Document(d)
}
