//! User-defined roles: `createRole`, `updateRole`, `dropRole`, `dropAllRolesFromDatabase`,
//! `grantPrivilegesToRole`, `revokePrivilegesFromRole`, `grantRolesToRole`,
//! `revokeRolesFromRole`, and `rolesInfo` (built-in and defined roles).
//!
//! Roles are documents of `admin.system.roles` (`auth/role_defs.rs`), each change one engine
//! transaction; afterwards every connection re-reads what its user's roles grant.

use bson::raw::RawBsonRef;
use bson::{Bson, Document, doc};
use mangrove_storage::{ReadView, Txn};

use crate::Shared;
use crate::access::key_of;
use crate::auth::role_defs::{self, Privilege, ROLES_NS, RoleDef};
use crate::auth::roles;
use crate::auth::users::RoleRef;
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::Reply;
use super::args::internal;
use super::write_path::{WriteOptions, retry_conflicts};

/// mongod's code for a role that already exists.
const ROLE_EXISTS: i32 = 51002;

fn role_not_found(role: &str, db: &str) -> CommandError {
    CommandError::new(
        code::ROLE_NOT_FOUND,
        format!("Could not find role: {role}@{db}"),
    )
}

/// `privileges`: each checked (a role outside `admin` only on its own database).
fn parse_privileges(req: &Request<'_>, required: bool) -> CommandResult<Option<Vec<Privilege>>> {
    let Some(list) = req.opt_array("privileges")? else {
        if required {
            return Err(CommandError::new(
                code::MISSING_FIELD,
                format!(
                    "BSON field '{}.privileges' is missing but a required field",
                    req.name
                ),
            ));
        }
        return Ok(None);
    };
    let mut out = Vec::new();
    for item in list {
        let RawBsonRef::Document(d) = item.map_err(internal)? else {
            return Err(CommandError::bad_value("privileges must be documents"));
        };
        let d = Document::try_from(d).map_err(internal)?;
        out.push(role_defs::parse_privilege_doc(&d, Some(req.db))?);
    }
    Ok(Some(out))
}

/// `roles`: role names (on this database) or `{role, db}`, each existing.
fn parse_role_list(
    view: &dyn ReadView,
    req: &Request<'_>,
    required: bool,
) -> CommandResult<Option<Vec<RoleRef>>> {
    let Some(list) = req.opt_array("roles")? else {
        if required {
            return Err(CommandError::new(
                code::MISSING_FIELD,
                format!(
                    "BSON field '{}.roles' is missing but a required field",
                    req.name
                ),
            ));
        }
        return Ok(None);
    };
    let mut out = Vec::new();
    for item in list {
        let role = match item.map_err(internal)? {
            RawBsonRef::String(name) => RoleRef {
                role: name.to_string(),
                db: req.db.to_string(),
            },
            RawBsonRef::Document(d) => RoleRef {
                role: d.get_str("role").map_err(|_| bad_role())?.to_string(),
                db: d.get_str("db").map_err(|_| bad_role())?.to_string(),
            },
            _ => return Err(bad_role()),
        };
        if !role_defs::exists(view, &role)? {
            return Err(role_not_found(&role.role, &role.db));
        }
        if !out.contains(&role) {
            out.push(role);
        }
    }
    Ok(Some(out))
}

fn bad_role() -> CommandError {
    CommandError::bad_value("a role must be a name or a document {role: <name>, db: <database>}")
}

fn put_role(txn: &mut Txn, def: &RoleDef) -> CommandResult<()> {
    crate::auth::users::put(txn, ROLES_NS, &def.to_document())
}

/// Inheriting `roles` must not make `me` inherit itself.
fn check_no_cycle(view: &dyn ReadView, me: &RoleRef, roles: &[RoleRef]) -> CommandResult<()> {
    for r in roles {
        if r == me || role_defs::inherits(view, r, me)? {
            return Err(CommandError::new(
                17166,
                format!(
                    "Granting {}@{} to {}@{} would introduce a cycle in the role graph",
                    r.role, r.db, me.role, me.db
                ),
            ));
        }
    }
    Ok(())
}

/// `createRole`.
pub(super) async fn create_role(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["privileges", "roles", "authenticationRestrictions"])?;
    let name = req.collection()?;
    let me = RoleRef {
        role: name.to_string(),
        db: req.db.to_string(),
    };
    if roles::BUILT_IN.contains(&name) {
        return Err(CommandError::bad_value(format!(
            "Cannot create roles with the same name as a built-in role: {name}"
        )));
    }
    let privileges = parse_privileges(req, true)?.unwrap_or_default();
    let inherited = parse_role_list(&shared.engine.snapshot(), req, true)?.unwrap_or_default();
    let opts = WriteOptions::from_request(req)?;
    retry_conflicts(shared, &opts, |txn: &mut Txn| {
        if role_defs::find(txn, req.db, name)?.is_some() {
            return Err(CommandError::new(
                ROLE_EXISTS,
                format!("Role \"{name}@{}\" already exists", req.db),
            ));
        }
        check_no_cycle(txn, &me, &inherited)?;
        put_role(
            txn,
            &RoleDef {
                role: me.role.clone(),
                db: me.db.clone(),
                privileges: privileges.clone(),
                roles: inherited.clone(),
            },
        )
    })
    .await?;
    shared.auth.changed();
    Ok(doc! { "ok": 1.0 }.into())
}

/// Changes one defined role in a transaction: `change` gets its definition.
async fn change_role(
    shared: &Shared,
    req: &Request<'_>,
    change: impl Fn(&dyn ReadView, &mut RoleDef) -> CommandResult<()>,
) -> CommandResult<Reply> {
    let name = req.collection()?;
    let opts = WriteOptions::from_request(req)?;
    retry_conflicts(shared, &opts, |txn: &mut Txn| {
        let mut def =
            role_defs::find(txn, req.db, name)?.ok_or_else(|| role_not_found(name, req.db))?;
        change(txn, &mut def)?;
        let me = RoleRef {
            role: def.role.clone(),
            db: def.db.clone(),
        };
        check_no_cycle(txn, &me, &def.roles)?;
        put_role(txn, &def)
    })
    .await?;
    shared.auth.changed();
    Ok(doc! { "ok": 1.0 }.into())
}

/// `updateRole`: replaces the privileges and/or inherited roles given.
pub(super) async fn update_role(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["privileges", "roles", "authenticationRestrictions"])?;
    let privileges = parse_privileges(req, false)?;
    let inherited = parse_role_list(&shared.engine.snapshot(), req, false)?;
    if privileges.is_none() && inherited.is_none() {
        return Err(CommandError::bad_value(
            "Must specify at least one field to update in updateRole",
        ));
    }
    change_role(shared, req, |_, def| {
        if let Some(p) = &privileges {
            def.privileges = p.clone();
        }
        if let Some(r) = &inherited {
            def.roles = r.clone();
        }
        Ok(())
    })
    .await
}

/// `grantPrivilegesToRole` / `revokePrivilegesFromRole`.
pub(super) async fn change_privileges(
    shared: &Shared,
    req: &Request<'_>,
    grant: bool,
) -> CommandResult<Reply> {
    req.check_fields(&["privileges"])?;
    let changed = parse_privileges(req, true)?.unwrap_or_default();
    change_role(shared, req, |_, def| {
        for p in &changed {
            match def.privileges.iter_mut().find(|q| q.resource == p.resource) {
                Some(q) if grant => {
                    for a in &p.actions {
                        if !q.actions.contains(a) {
                            q.actions.push(*a);
                        }
                    }
                }
                Some(q) => q.actions.retain(|a| !p.actions.contains(a)),
                None if grant => def.privileges.push(p.clone()),
                None => {}
            }
        }
        def.privileges.retain(|p| !p.actions.is_empty());
        Ok(())
    })
    .await
}

/// `grantRolesToRole` / `revokeRolesFromRole`.
pub(super) async fn change_inherited(
    shared: &Shared,
    req: &Request<'_>,
    grant: bool,
) -> CommandResult<Reply> {
    req.check_fields(&["roles"])?;
    let changed = parse_role_list(&shared.engine.snapshot(), req, true)?.unwrap_or_default();
    change_role(shared, req, |_, def| {
        if grant {
            let new: Vec<_> = changed
                .iter()
                .filter(|r| !def.roles.contains(r))
                .cloned()
                .collect();
            def.roles.extend(new);
        } else {
            def.roles.retain(|r| !changed.contains(r));
        }
        Ok(())
    })
    .await
}

/// `dropRole`.
pub(super) async fn drop_role(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[])?;
    let name = req.collection()?;
    let opts = WriteOptions::from_request(req)?;
    retry_conflicts(shared, &opts, |txn: &mut Txn| {
        let coll = txn
            .collection(ROLES_NS)
            .ok_or_else(|| role_not_found(name, req.db))?;
        let key = key_of(RawBsonRef::String(&RoleDef::id_of(req.db, name)));
        if txn.get(&coll, &key)?.is_none() {
            return Err(role_not_found(name, req.db));
        }
        txn.delete(&coll, key)?;
        Ok(())
    })
    .await?;
    shared.auth.changed();
    Ok(doc! { "ok": 1.0 }.into())
}

/// `dropAllRolesFromDatabase`: `n`, the roles dropped.
pub(super) async fn drop_all_roles(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[])?;
    let opts = WriteOptions::from_request(req)?;
    let n = retry_conflicts(shared, &opts, |txn: &mut Txn| {
        let Some(coll) = txn.collection(ROLES_NS) else {
            return Ok(0);
        };
        let gone = role_defs::all(txn, Some(req.db))?;
        for def in &gone {
            txn.delete(
                &coll,
                key_of(RawBsonRef::String(&RoleDef::id_of(&def.db, &def.role))),
            )?;
        }
        Ok(gone.len() as i32)
    })
    .await?;
    shared.auth.changed();
    Ok(doc! { "n": n, "ok": 1.0 }.into())
}

/// `rolesInfo`: the roles named (`1`: the database's defined roles, and the built-in ones with
/// `showBuiltinRoles`), with their privileges when `showPrivileges` is set.
pub(super) fn roles_info(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    let snapshot = shared.engine.snapshot();
    let show_privileges = matches!(req.get("showPrivileges"), Some(RawBsonRef::Boolean(true)));
    let one = |v: RawBsonRef<'_>| -> CommandResult<RoleRef> {
        match v {
            RawBsonRef::String(name) => Ok(RoleRef {
                role: name.to_string(),
                db: req.db.to_string(),
            }),
            RawBsonRef::Document(d) => Ok(RoleRef {
                role: d.get_str("role").map_err(|_| bad_role())?.to_string(),
                db: d.get_str("db").map_err(|_| bad_role())?.to_string(),
            }),
            _ => Err(bad_role()),
        }
    };
    let names: Vec<RoleRef> = match req.command_value() {
        Some(RawBsonRef::Array(items)) => items
            .into_iter()
            .map(|i| one(i.map_err(internal)?))
            .collect::<CommandResult<_>>()?,
        Some(v @ (RawBsonRef::String(_) | RawBsonRef::Document(_))) => vec![one(v)?],
        _ => {
            let mut all: Vec<RoleRef> = role_defs::all(&snapshot, Some(req.db))?
                .into_iter()
                .map(|d| RoleRef {
                    role: d.role,
                    db: d.db,
                })
                .collect();
            if req.opt_bool("showBuiltinRoles")?.unwrap_or(false) {
                all.extend(roles::BUILT_IN.iter().map(|r| RoleRef {
                    role: r.to_string(),
                    db: req.db.to_string(),
                }));
            }
            all.retain(|r| roles::exists(r) || r.db == req.db);
            all
        }
    };
    let mut found: Vec<Bson> = Vec::new();
    for r in &names {
        if roles::exists(r) {
            found.push(role_defs::info(r, None, show_privileges));
        } else if let Some(def) = role_defs::find(&snapshot, &r.db, &r.role)? {
            found.push(role_defs::info(r, Some(&def), show_privileges));
        }
    }
    Ok(doc! { "roles": found, "ok": 1.0 }.into())
}
