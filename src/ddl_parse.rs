//! What a DDL command is about to do, read from its parse tree at
//! ddl_command_start: the relations it targets, and the few subcommands the
//! guard must judge before they run (a column type change that rewrites
//! values, SET UNLOGGED, ATTACH and DETACH PARTITION, INHERIT, a table
//! turned into a view). Anything not listed here is judged by its effect at
//! ddl_command_end and sql_drop, so an unusual spelling cannot slip by.

use std::ffi::CStr;

use pgrx::pg_sys;

/// One subcommand of interest.
#[derive(Debug, Clone)]
pub enum Action {
    /// ALTER [COLUMN] ... [SET DATA] TYPE on `table` (and, by recursion, its inheritors).
    ColumnType {
        table: pg_sys::Oid,
        column: String,
        new_type: pg_sys::Oid,
        new_typmod: i32,
        /// A USING expression other than the column itself (or the column
        /// cast to the new type, which is what ORMs write).
        using: bool,
    },
    /// DETACH PARTITION ... CONCURRENTLY or FINALIZE: runs across two
    /// transactions, so its end cannot be judged with its start.
    DetachConcurrently {
        parent: pg_sys::Oid,
    },
    SetUnlogged(pg_sys::Oid),
    /// ALTER COLUMN ... SET EXPRESSION (PostgreSQL 17 and later).
    #[allow(dead_code)]
    SetExpression(pg_sys::Oid),
    Attach {
        parent: pg_sys::Oid,
        child: pg_sys::Oid,
    },
    Detach {
        parent: pg_sys::Oid,
        child: pg_sys::Oid,
    },
    /// A table becomes an inheritance child (CREATE ... INHERITS, ALTER
    /// TABLE ... INHERIT); its parents are read from the catalog at the end.
    Inherit,
    /// ALTER TABLE ... SET SCHEMA.
    Move(pg_sys::Oid),
    /// CREATE RULE "_RETURN": turns a table into a view.
    ToView(pg_sys::Oid),
    /// ALTER TYPE on a composite type (its relation), which may rewrite the
    /// typed tables of that type.
    CompositeType {
        typrel: pg_sys::Oid,
        rewrites: bool,
    },
    /// ALTER TYPE ... RENAME VALUE: every stored value of the enum reads anew.
    EnumRename,
    /// CREATE or DROP CAST to json or jsonb: to_jsonb renders the source type
    /// through that cast, a function of the type owner's choosing.
    JsonCast,
    /// ALTER TRIGGER ... [NO] DEPENDS ON EXTENSION of a capture trigger.
    TriggerDependsOnExtension(pg_sys::Oid),
    /// CREATE EXTENSION ... SCHEMA audit_log, or ALTER ... SET SCHEMA
    /// audit_log: objects put into the audit schema.
    IntoAuditSchema,
    /// ALTER SCHEMA ... RENAME TO: audited tables move with it.
    SchemaRename {
        old: String,
        new: String,
    },
}

#[derive(Debug, Default)]
pub struct Plan {
    /// The relation the statement names, as resolved at its start (None
    /// inside: it did not exist then), for statements that name one. The
    /// command resolves the name again after waiting for its lock; if that
    /// gives another relation, what was judged is not what was done.
    pub primary: Option<Option<pg_sys::Oid>>,
    /// Relations whose state the command may change (with inheritors where
    /// the command recurses).
    pub targets: Vec<pg_sys::Oid>,
    pub actions: Vec<Action>,
}

fn node_is(node: *mut pg_sys::Node, tag: pg_sys::NodeTag) -> bool {
    // SAFETY: by the caller's contract, node is null or a valid Node.
    !node.is_null() && unsafe { (*node).type_ } == tag
}

fn cstr(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated string of the parse tree.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The elements of a pointer List.
unsafe fn list<T>(l: *mut pg_sys::List) -> Vec<*mut T> {
    // SAFETY: by the caller's contract, l is NIL or a pointer list.
    unsafe {
        if l.is_null() {
            return Vec::new();
        }
        (0..(*l).length as usize)
            .map(|i| (*(*l).elements.add(i)).ptr_value as *mut T)
            .collect()
    }
}

/// The relation a RangeVar names now, resolved as the command will (same
/// search_path), or None if there is none.
unsafe fn relation(rv: *mut pg_sys::RangeVar) -> Option<pg_sys::Oid> {
    // SAFETY: by the caller's contract, rv is a RangeVar; NoLock and missing_ok: a lookup only.
    unsafe { relation_locked(rv, pg_sys::NoLock as pg_sys::LOCKMODE, Check::None) }
}

/// What PostgreSQL checks before it locks a command's relation.
#[derive(Clone, Copy, PartialEq)]
enum Check {
    /// Nothing (it checks after locking, or the caller takes no lock).
    None,
    /// The relation's owner (or a superuser): ALTER TABLE, renames, rules.
    Owner,
    /// The owner or a holder of the TRIGGER privilege: CREATE TRIGGER.
    Trigger,
}

/// The relation a RangeVar names, locked as the command itself will lock
/// it, so that its state read now is its state when the command runs: a
/// concurrent rename or column change commits before, or waits until after.
/// The privilege PostgreSQL checks before its own lock is checked before
/// this one: nobody can block a table they may not alter by naming it in
/// DDL that would fail. Only the named relation is locked here; children
/// are read without a lock (PostgreSQL locks only those it recurses to,
/// and taking more, or earlier, would add deadlocks).
unsafe fn relation_locked(
    rv: *mut pg_sys::RangeVar,
    lockmode: pg_sys::LOCKMODE,
    check: Check,
) -> Option<pg_sys::Oid> {
    if rv.is_null() {
        return None;
    }
    let callback: pg_sys::RangeVarGetRelidCallback = match check {
        Check::None => None,
        Check::Owner | Check::Trigger => Some(privilege_first),
    };
    // Any non-null pointer says "TRIGGER suffices"; it is never read.
    let arg = match check {
        Check::Trigger => std::ptr::NonNull::<u8>::dangling().as_ptr().cast(),
        _ => std::ptr::null_mut(),
    };
    // SAFETY: by the caller's contract, rv is a RangeVar; missing_ok.
    let oid = unsafe {
        pg_sys::RangeVarGetRelidExtended(
            rv,
            lockmode,
            pg_sys::RVROption::RVR_MISSING_OK,
            callback,
            arg,
        )
    };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// Whether the current user owns a relation (or is a superuser).
unsafe fn owns(relid: pg_sys::Oid) -> bool {
    // SAFETY: by the caller's contract, relid exists.
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
        return pg_sys::pg_class_ownercheck(relid, pg_sys::GetUserId());
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
        return pg_sys::object_ownercheck(pg_sys::RelationRelationId, relid, pg_sys::GetUserId());
    }
}

/// RangeVarGetRelidExtended's callback: refuse, before any lock, a relation
/// the current user may not alter, with PostgreSQL's own error. `arg` is
/// null for "must be owner", non-null when the TRIGGER privilege suffices
/// (CREATE TRIGGER).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn privilege_first(
    _rv: *const pg_sys::RangeVar,
    relid: pg_sys::Oid,
    _old: pg_sys::Oid,
    arg: *mut std::ffi::c_void,
) {
    if relid == pg_sys::InvalidOid {
        return;
    }
    // SAFETY: catalog checks on an existing relation and the current user.
    unsafe {
        let result = if arg.is_null() {
            if owns(relid) {
                pg_sys::AclResult::ACLCHECK_OK
            } else {
                pg_sys::AclResult::ACLCHECK_NOT_OWNER
            }
        } else {
            pg_sys::pg_class_aclcheck(
                relid,
                pg_sys::GetUserId(),
                pg_sys::ACL_TRIGGER as pg_sys::AclMode,
            )
        };
        if result != pg_sys::AclResult::ACLCHECK_OK {
            let kind = pg_sys::get_relkind_objtype(pg_sys::get_rel_relkind(relid));
            pg_sys::aclcheck_error(result, kind, pg_sys::get_rel_name(relid));
        }
    }
}

/// The type a TypeName names, or None if it does not exist (the command
/// itself then fails with PostgreSQL's own message).
unsafe fn type_of(tn: *mut pg_sys::TypeName) -> Option<(pg_sys::Oid, i32)> {
    if tn.is_null() {
        return None;
    }
    // SAFETY: by the caller's contract, tn is a TypeName. LookupTypeName returns NULL for a
    // missing type; typenameTypeIdAndMod then cannot fail on it.
    unsafe {
        let tup = pg_sys::LookupTypeName(std::ptr::null_mut(), tn, std::ptr::null_mut(), true);
        if tup.is_null() {
            return None;
        }
        pg_sys::ReleaseSysCache(tup);
        let mut oid = pg_sys::InvalidOid;
        let mut typmod = -1;
        pg_sys::typenameTypeIdAndMod(std::ptr::null_mut(), tn, &mut oid, &mut typmod);
        Some((oid, typmod))
    }
}

fn is_json(t: Option<(pg_sys::Oid, i32)>) -> bool {
    t.is_some_and(|(o, _)| o == pg_sys::JSONOID || o == pg_sys::JSONBOID)
}

/// Whether a USING expression is the column itself, or the column cast to
/// the column's new type: then the change is judged like one without USING.
unsafe fn is_column_itself(expr: *mut pg_sys::Node, column: &str, new: (pg_sys::Oid, i32)) -> bool {
    use pg_sys::NodeTag::*;
    // SAFETY: by the caller's contract, expr is a raw expression tree.
    unsafe {
        // A single-field reference only: `a.b` is column b of table a, not
        // the column named "a.b", though both print as a.b.
        let col_ref = |n: *mut pg_sys::Node| {
            if !node_is(n, T_ColumnRef) {
                return false;
            }
            let fields = (*(n as *mut pg_sys::ColumnRef)).fields;
            !fields.is_null()
                && (*fields).length == 1
                && node_is((*(*fields).elements).ptr_value.cast(), T_String)
                && cstr(pg_sys::NameListToString(fields)) == column
        };
        if col_ref(expr) {
            return true;
        }
        if node_is(expr, T_TypeCast) {
            let tc = &*(expr as *mut pg_sys::TypeCast);
            return col_ref(tc.arg) && type_of(tc.typeName) == Some(new);
        }
        false
    }
}

/// Read a parse tree.
///
/// # Safety
/// `node` must be the parse tree of the command an event trigger fired for.
pub unsafe fn plan(node: *mut pg_sys::Node) -> Plan {
    use pg_sys::NodeTag::*;
    let mut p = Plan::default();
    if node.is_null() {
        return p;
    }
    // SAFETY: by the caller's contract, each cast follows the node's tag.
    unsafe {
        if node_is(node, T_AlterTableStmt) {
            let s = &*(node as *mut pg_sys::AlterTableStmt);
            let objtype = crate::pgcompat::alter_table_objtype(s);
            let lockmode = if objtype == pg_sys::ObjectType::OBJECT_TYPE {
                pg_sys::NoLock as pg_sys::LOCKMODE
            } else {
                pg_sys::AlterTableGetLockLevel(s.cmds)
            };
            let resolved = relation_locked(s.relation, lockmode, Check::Owner);
            if objtype != pg_sys::ObjectType::OBJECT_TYPE {
                p.primary = Some(resolved);
            }
            let Some(rel) = resolved else {
                return p;
            };
            if objtype == pg_sys::ObjectType::OBJECT_TYPE {
                let rewrites = list::<pg_sys::AlterTableCmd>(s.cmds)
                    .iter()
                    .any(|c| (**c).subtype == pg_sys::AlterTableType::AT_AlterColumnType);
                p.actions.push(Action::CompositeType {
                    typrel: rel,
                    rewrites,
                });
                return p;
            }
            p.targets = crate::relstate::with_inheritors(rel);
            for c in list::<pg_sys::AlterTableCmd>(s.cmds) {
                let c = &*c;
                use pg_sys::AlterTableType as At;
                match c.subtype {
                    At::AT_AlterColumnType => {
                        let def = c.def as *mut pg_sys::ColumnDef;
                        if node_is(c.def, T_ColumnDef) {
                            if let Some((new_type, new_typmod)) = type_of((*def).typeName) {
                                let column = cstr(c.name);
                                let using = !(*def).raw_default.is_null()
                                    && !is_column_itself(
                                        (*def).raw_default,
                                        &column,
                                        (new_type, new_typmod),
                                    );
                                p.actions.push(Action::ColumnType {
                                    table: rel,
                                    column,
                                    new_type,
                                    new_typmod,
                                    using,
                                });
                            }
                        }
                    }
                    At::AT_SetUnLogged => p.actions.push(Action::SetUnlogged(rel)),
                    // PostgreSQL 17: a generated column's new expression
                    // recomputes every stored value.
                    #[cfg(any(feature = "pg17", feature = "pg18"))]
                    At::AT_SetExpression => p.actions.push(Action::SetExpression(rel)),
                    At::AT_AttachPartition | At::AT_DetachPartition
                        if node_is(c.def, T_PartitionCmd) =>
                    {
                        let pc = &*(c.def as *mut pg_sys::PartitionCmd);
                        if crate::pgcompat::detach_concurrently(pc) {
                            p.actions.push(Action::DetachConcurrently { parent: rel });
                        }
                        let exclusive = pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE;
                        if let Some(child) = relation_locked(pc.name, exclusive, Check::None) {
                            p.targets.push(child);
                            p.actions.push(if c.subtype == At::AT_AttachPartition {
                                Action::Attach { parent: rel, child }
                            } else {
                                Action::Detach { parent: rel, child }
                            });
                        }
                    }
                    // DETACH CONCURRENTLY came with PostgreSQL 14.
                    #[cfg(not(feature = "pg13"))]
                    At::AT_DetachPartitionFinalize => {
                        p.actions.push(Action::DetachConcurrently { parent: rel });
                    }
                    At::AT_AddInherit => p.actions.push(Action::Inherit),
                    _ => {}
                }
            }
        } else if node_is(node, T_RenameStmt) {
            let s = &*(node as *mut pg_sys::RenameStmt);
            use pg_sys::ObjectType::*;
            match s.renameType {
                OBJECT_SCHEMA => p.actions.push(Action::SchemaRename {
                    old: cstr(s.subname),
                    new: cstr(s.newname),
                }),
                OBJECT_ATTRIBUTE => {
                    if let Some(rel) = relation(s.relation) {
                        p.actions.push(Action::CompositeType {
                            typrel: rel,
                            rewrites: false,
                        });
                    }
                }
                OBJECT_TABLE | OBJECT_FOREIGN_TABLE | OBJECT_COLUMN | OBJECT_TRIGGER
                | OBJECT_TABCONSTRAINT
                    if !s.relation.is_null() =>
                {
                    // Renames of these take AccessExclusiveLock on the table.
                    let exclusive = pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE;
                    let resolved = relation_locked(s.relation, exclusive, Check::Owner);
                    p.primary = Some(resolved);
                    if let Some(rel) = resolved {
                        p.targets = crate::relstate::with_inheritors(rel);
                    }
                }
                _ if !s.relation.is_null() => {
                    let resolved = relation(s.relation);
                    p.primary = Some(resolved);
                    if let Some(rel) = resolved {
                        p.targets = crate::relstate::with_inheritors(rel);
                    }
                }
                _ => {}
            }
        } else if node_is(node, T_AlterObjectSchemaStmt) {
            let s = &*(node as *mut pg_sys::AlterObjectSchemaStmt);
            use pg_sys::ObjectType::*;
            if cstr(s.newschema) == "audit_log" {
                p.actions.push(Action::IntoAuditSchema);
            }
            if matches!(s.objectType, OBJECT_TABLE | OBJECT_FOREIGN_TABLE) {
                let resolved = relation_locked(
                    s.relation,
                    pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE,
                    Check::Owner,
                );
                p.primary = Some(resolved);
                if let Some(rel) = resolved {
                    p.targets.push(rel);
                    p.actions.push(Action::Move(rel));
                }
            }
        } else if node_is(node, T_RuleStmt) {
            let s = &*(node as *mut pg_sys::RuleStmt);
            if let Some(rel) = relation_locked(
                s.relation,
                pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE,
                Check::Owner,
            ) {
                p.targets.push(rel);
                if cstr(s.rulename) == "_RETURN" {
                    p.actions.push(Action::ToView(rel));
                }
            }
        } else if node_is(node, T_CreateTrigStmt) {
            let s = &*(node as *mut pg_sys::CreateTrigStmt);
            let lockmode = pg_sys::ShareRowExclusiveLock as pg_sys::LOCKMODE;
            let resolved = relation_locked(s.relation, lockmode, Check::Trigger);
            p.primary = Some(resolved);
            if let Some(rel) = resolved {
                p.targets = crate::relstate::with_inheritors(rel);
            }
        } else if node_is(node, T_CreateExtensionStmt) {
            let s = &*(node as *mut pg_sys::CreateExtensionStmt);
            let into_audit = list::<pg_sys::DefElem>(s.options).into_iter().any(|d| {
                cstr((*d).defname) == "schema" && cstr(pg_sys::defGetString(d)) == "audit_log"
            });
            if into_audit {
                p.actions.push(Action::IntoAuditSchema);
            }
        } else if node_is(node, T_CreateCastStmt) {
            let s = &*(node as *mut pg_sys::CreateCastStmt);
            if is_json(type_of(s.targettype)) {
                p.actions.push(Action::JsonCast);
            }
        } else if node_is(node, T_DropStmt) {
            let s = &*(node as *mut pg_sys::DropStmt);
            if s.removeType == pg_sys::ObjectType::OBJECT_CAST {
                // Each object is (source, target) as a list of two TypeNames.
                let json = list::<pg_sys::List>(s.objects).into_iter().any(|pair| {
                    let names = list::<pg_sys::TypeName>(pair);
                    names.len() == 2 && is_json(type_of(names[1]))
                });
                if json {
                    p.actions.push(Action::JsonCast);
                }
            }
        } else if node_is(node, T_AlterObjectDependsStmt) {
            let s = &*(node as *mut pg_sys::AlterObjectDependsStmt);
            if s.objectType == pg_sys::ObjectType::OBJECT_TRIGGER {
                // The object is the trigger's name list; its table is the relation.
                let name = cstr(pg_sys::NameListToString(s.object as *mut pg_sys::List));
                let ours = name.ends_with(crate::catalog::ROW_TRIGGER)
                    || name.ends_with(crate::catalog::STMT_TRIGGER);
                if let (true, Some(rel)) = (ours, relation(s.relation)) {
                    p.actions.push(Action::TriggerDependsOnExtension(rel));
                }
            }
        } else if node_is(node, T_AlterEnumStmt) {
            if !(*(node as *mut pg_sys::AlterEnumStmt)).oldVal.is_null() {
                p.actions.push(Action::EnumRename);
            }
        } else if node_is(node, T_CreateStmt) || node_is(node, T_CreateForeignTableStmt) {
            // CreateForeignTableStmt begins with a CreateStmt.
            let s = &*(node as *mut pg_sys::CreateStmt);
            if s.partbound.is_null() && !s.inhRelations.is_null() {
                p.actions.push(Action::Inherit);
            }
        }
    }
    p
}

/// Whether changing a column from (old type, typmod) to (new type, typmod)
/// without USING keeps every stored value as to_jsonb renders it: the same
/// type with its modifier dropped or widened where widening cannot change a
/// value (varchar and varbit length, numeric precision at the same scale),
/// a wider integer, or text and unbounded varchar into each other. Anything
/// else (a cast that rounds, pads, reinterprets or changes the rendering,
/// such as float4 to float8) may change recorded values.
pub fn keeps_values(old: (pg_sys::Oid, i32), new: (pg_sys::Oid, i32)) -> bool {
    let (ot, om) = old;
    let (nt, nm) = new;
    if ot == nt {
        if nm == om || nm == -1 {
            return true;
        }
        return match ot {
            pg_sys::VARCHAROID | pg_sys::VARBITOID => om >= 0 && nm >= om,
            // numeric typmod: ((precision << 16) | scale) + 4
            pg_sys::NUMERICOID => {
                om >= 4 && nm >= 4 && (om - 4) & 0xFFFF == (nm - 4) & 0xFFFF && nm >= om
            }
            _ => false,
        };
    }
    let rank = |t| match t {
        pg_sys::INT2OID => Some(2),
        pg_sys::INT4OID => Some(4),
        pg_sys::INT8OID => Some(8),
        _ => None,
    };
    if let (Some(a), Some(b)) = (rank(ot), rank(nt)) {
        return b > a;
    }
    let text_like = |t| t == pg_sys::TEXTOID || t == pg_sys::VARCHAROID;
    text_like(ot) && text_like(nt) && nm == -1
}
