//! The DDL guard: three event triggers that keep auditing on.
//!
//! - ddl_command_start reads the parse tree (`ddl_parse`): it refuses, for
//!   anyone but a superuser, what would change recorded values without DML
//!   (a rewriting column type change, SET UNLOGGED, turning a table into a
//!   view), makes ATTACH PARTITION of an audited table work, and notes the
//!   state of the relations the command targets.
//! - ddl_command_end judges the effect: a capture trigger that this very
//!   command changed must still be on (otherwise refused, or recorded for a
//!   superuser); renames and column changes are recorded; new partitions,
//!   inheritance children, detached partitions and tables created in (or
//!   moved into) an audited schema are audited.
//! - sql_drop (`ddl_drop`) records dropped audited tables and refuses
//!   dropping a capture trigger.
//!
//! What follows from a command's effects lives in `ddl_effects`.
//!
//! Catalog rows are judged by whether this command wrote them (their xmin
//! and cmin), so a concurrent session's committed change is never blamed on
//! this one. All reads go straight to the catalogs (`relstate`): the cost
//! is per relation the command touches, whatever the number of audited
//! tables, and no session planner setting takes part.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::capture;
use crate::ddl_effects::{
    attach_prepare, attached, column_type, detached, follow_renamed_columns, in_audited_schema,
    options_of, record_ddl, refuse_unlogged, schema_renamed, superuser, tables_using_type,
    typed_tables,
};
use crate::ddl_parse::{self, Action, Plan};
use crate::errors::{AuditError, OrRaise};
use crate::fmgr::c_function;
use crate::relstate::{self, RelState};
use crate::triggers;

/// What ddl_command_start saw, for its ddl_command_end.
struct Start {
    subid: pg_sys::SubTransactionId,
    /// The command's first command id: catalog rows it writes have cmin >= this.
    cid: pg_sys::CommandId,
    plan: Plan,
    /// Targets' state before the command.
    before: BTreeMap<u32, RelState>,
    /// A superuser's column type change that may rewrite values.
    rewrites: bool,
}

thread_local! {
    /// One entry per DDL command in progress (a command can run another).
    static STARTS: RefCell<Vec<Start>> = const { RefCell::new(Vec::new()) };
}

/// Transaction end: nothing is in progress any more.
#[pg_guard]
unsafe extern "C-unwind" fn at_xact_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PREPARE
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
    ) {
        STARTS.with_borrow_mut(Vec::clear);
    }
}

/// A subtransaction rolled back: the commands it started never end.
#[pg_guard]
unsafe extern "C-unwind" fn at_subxact_end(
    event: pg_sys::SubXactEvent::Type,
    subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        STARTS.with_borrow_mut(|s| s.retain(|st| st.subid < subid));
    }
}

/// How many DDL commands the guard holds as in progress (tests only).
#[cfg(any(test, feature = "pg_test"))]
pub fn commands_in_progress() -> usize {
    STARTS.with_borrow(Vec::len)
}

/// The guard's own transaction callbacks, to forget commands that ended.
pub fn register_callbacks() {
    // SAFETY: called once from _PG_init; the callbacks live as long as the library.
    unsafe {
        pg_sys::RegisterXactCallback(Some(at_xact_end), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(at_subxact_end), std::ptr::null_mut());
    }
}

/// The partitions the command in progress detaches: PostgreSQL drops their
/// cloned row trigger itself, which sql_drop must not take for switching
/// auditing off.
pub fn detaching_now() -> Vec<pg_sys::Oid> {
    STARTS.with_borrow(|s| {
        s.last()
            .map(|st| {
                st.plan
                    .actions
                    .iter()
                    .filter_map(|a| match a {
                        Action::Detach { child, .. } => Some(*child),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

fn on_start(tag: &str, parsetree: *mut pg_sys::Node) -> Result<(), AuditError> {
    // Every start pushes an entry, so that each end pops its own. The parse
    // tree's names are resolved under the session's search_path, as the
    // command itself resolves them; everything after runs pinned.
    let plan = if crate::catalog::schema_oid().is_some() {
        // SAFETY: the parse tree of the command this event trigger fired for.
        unsafe { ddl_parse::plan(parsetree) }
    } else {
        Plan::default()
    };
    crate::catalog::pinned(|| judge_start(tag, plan))
}

fn judge_start(tag: &str, mut plan: Plan) -> Result<(), AuditError> {
    // ALTER TYPE on a composite reaches its typed tables (CASCADE).
    for a in plan.actions.clone() {
        if let Action::CompositeType { typrel, .. } = a {
            plan.targets.extend(typed_tables(typrel)?);
        }
    }
    let before = relstate::states(plan.targets.iter().copied());
    let su = superuser();
    let mut rewrites = false;
    for a in &plan.actions {
        match a {
            Action::ColumnType {
                table,
                column,
                new_type,
                new_typmod,
                using,
            } => {
                let Some(st) = before.get(&table.to_u32()) else {
                    continue;
                };
                let audited = plan
                    .targets
                    .iter()
                    .any(|t| before.get(&t.to_u32()).is_some_and(RelState::audited));
                // No such column: PostgreSQL's own error follows.
                let Some(old) = column_type(*table, column) else {
                    continue;
                };
                let keeps = !using && ddl_parse::keeps_values(old, (*new_type, *new_typmod));
                if audited && !keeps {
                    if !su {
                        return Err(AuditError::RewritesValues {
                            action: format!("{tag} ... ALTER COLUMN {column} TYPE"),
                            table: format!("{}.{}", st.schema, st.name),
                        });
                    }
                    rewrites = true;
                }
            }
            Action::SetUnlogged(t) | Action::SetExpression(t) => {
                if let Some(st) = before.get(&t.to_u32()).filter(|s| s.audited()) {
                    if !su {
                        return Err(AuditError::RewritesValues {
                            action: format!(
                                "{tag} ... {}",
                                if matches!(a, Action::SetUnlogged(_)) {
                                    "SET UNLOGGED"
                                } else {
                                    "SET EXPRESSION"
                                }
                            ),
                            table: format!("{}.{}", st.schema, st.name),
                        });
                    }
                    // A superuser's: SET EXPRESSION recomputes every stored
                    // value of the column, so it is recorded as a rewrite.
                    if matches!(a, Action::SetExpression(_)) {
                        rewrites = true;
                    }
                }
            }
            Action::ToView(t) => {
                if let Some(st) = before.get(&t.to_u32()).filter(|s| s.row.is_some()) {
                    return Err(AuditError::AuditedToView(format!(
                        "{}.{}",
                        st.schema, st.name
                    )));
                }
            }
            Action::CompositeType {
                typrel,
                rewrites: true,
            } if !su => {
                let typed = relstate::states(typed_tables(*typrel)?);
                if let Some(t) = typed.values().find(|s| s.audited()) {
                    let t = format!("{}.{}", t.schema, t.name);
                    return Err(AuditError::RewritesValues {
                        action: format!("{tag} ... ALTER ATTRIBUTE ... TYPE"),
                        table: t,
                    });
                }
            }
            // A superuser's attribute type change rewrites the typed tables'
            // values, as ALTER COLUMN ... TYPE does a table's.
            Action::CompositeType { rewrites: true, .. } => rewrites = true,
            Action::Attach { parent, child } => attach_prepare(*parent, *child)?,
            Action::JsonCast if !su => return Err(AuditError::JsonCast(tag.to_string())),
            Action::IntoAuditSchema if !su => {
                return Err(AuditError::AuditSchemaDdl(format!(
                    "{tag} into schema audit_log"
                )))
            }
            Action::TriggerDependsOnExtension(rel) if !su => {
                if let Some(st) = relstate::rel_state(*rel).filter(|s| s.row.is_some()) {
                    return Err(AuditError::AuditTriggerChanged {
                        action: tag.to_string(),
                        table: format!("{}.{}", st.schema, st.name),
                    });
                }
            }
            Action::DetachConcurrently { parent } => {
                if let Some(p) = relstate::rel_state(*parent).filter(RelState::audited) {
                    return Err(AuditError::DetachConcurrently(format!(
                        "{}.{}",
                        p.schema, p.name
                    )));
                }
            }
            _ => {}
        }
    }
    let start = Start {
        // SAFETY: reads transaction state.
        subid: unsafe { pg_sys::GetCurrentSubTransactionId() },
        // SAFETY: as above; `false`: reading the counter does not use it up.
        cid: unsafe { pg_sys::GetCurrentCommandId(false) },
        plan,
        before,
        rewrites,
    };
    STARTS.with_borrow_mut(|s| s.push(start));
    Ok(())
}

/// What pg_event_trigger_ddl_commands() says the command did.
struct Touched {
    relations: BTreeSet<u32>,
    /// Every object the command created or altered, as (classid, objid).
    objects: Vec<(pg_sys::Oid, pg_sys::Oid)>,
    types: Vec<(pg_sys::Oid, String)>,
    audit_schema: Vec<String>,
}

const TOUCHED_QUERY: &str =
    "SELECT classid::pg_catalog.int8, objid, coalesce(object_identity, object_type),
            schema_name = 'audit_log' AND NOT in_extension
       FROM pg_catalog.pg_event_trigger_ddl_commands()";

thread_local! {
    /// TOUCHED_QUERY, planned once per session (under pinned settings): it
    /// runs at the end of every DDL command.
    static TOUCHED_PLAN: RefCell<Option<pgrx::spi::OwnedPreparedStatement>> =
        const { RefCell::new(None) };
}

fn touched() -> Result<Touched, AuditError> {
    Spi::connect(|c| {
        let mut out = Touched {
            relations: BTreeSet::new(),
            objects: Vec::new(),
            types: Vec::new(),
            audit_schema: Vec::new(),
        };
        if TOUCHED_PLAN.with_borrow(Option::is_none) {
            let plan = c.prepare(TOUCHED_QUERY, &[])?.keep();
            TOUCHED_PLAN.set(Some(plan));
        }
        let t = TOUCHED_PLAN.with_borrow(|p| match p {
            Some(plan) => c.select(plan, None, &[]),
            None => c.select(TOUCHED_QUERY, None, &[]),
        })?;
        for r in t {
            let class = r.get::<i64>(1)?.unwrap_or(0);
            let Some(objid) = r.get::<pg_sys::Oid>(2)? else {
                continue;
            };
            let identity: String = r.get(3)?.unwrap_or_default();
            if r.get::<bool>(4)? == Some(true) {
                out.audit_schema.push(identity.clone());
            }
            out.objects.push((pg_sys::Oid::from(class as u32), objid));
            match pg_sys::Oid::from(class as u32) {
                pg_sys::RelationRelationId => {
                    out.relations.insert(objid.to_u32());
                }
                pg_sys::TriggerRelationId => {
                    out.relations
                        .extend(relstate::trigger_relation(objid).map(|o| o.to_u32()));
                }
                pg_sys::TypeRelationId => out.types.push((objid, identity)),
                _ => {}
            }
        }
        Ok(out)
    })
}

fn on_end(tag: &str) -> Result<(), AuditError> {
    crate::catalog::pinned(|| judge_end(tag))
}

fn judge_end(tag: &str) -> Result<(), AuditError> {
    let Some(start) = STARTS.with_borrow_mut(Vec::pop) else {
        return Ok(());
    };
    if crate::catalog::schema_oid().is_none() {
        return Ok(());
    }
    let su = superuser();
    let done = touched()?;

    for obj in &done.audit_schema {
        if !su {
            return Err(AuditError::AuditSchemaDdl(obj.clone()));
        }
        capture::record_config(
            "audit_log",
            obj,
            "DDL",
            json!({"command": tag, "object": obj}),
        )?;
    }

    // What was judged must be what was done: the command resolves its
    // table's name again after waiting for its lock, and a table created
    // or renamed meanwhile (earlier in the search_path) can take the name.
    if let Some(judged) = start.plan.primary {
        let acted_elsewhere = match judged {
            Some(oid) => !done.relations.is_empty() && !done.relations.contains(&oid.to_u32()),
            None => !done.relations.is_empty(),
        };
        if acted_elsewhere {
            return Err(AuditError::TargetChanged(tag.to_string()));
        }
    }
    for a in &start.plan.actions {
        if let Action::Attach { child, .. } = a {
            if !relstate::rel_state(*child).is_some_and(|c| c.is_partition) {
                return Err(AuditError::TargetChanged(tag.to_string()));
            }
        }
    }

    // No permanent relation or trigger may depend on a temporary object:
    // PostgreSQL drops those at session end without event triggers.
    if !su {
        let temp_dep = done
            .objects
            .iter()
            .find(|&&(c, o)| relstate::depends_on_temp(c, o));
        if temp_dep.is_some() {
            return Err(AuditError::DependsOnTemp(tag.to_string()));
        }
    }

    let mut rels: BTreeSet<u32> = done.relations.clone();
    rels.extend(start.plan.targets.iter().map(|o| o.to_u32()));

    // A capture trigger this command wrote must still capture everything.
    for &rel in &rels {
        let oid = pg_sys::Oid::from(rel);
        let changed = relstate::changed_capture_triggers(oid, start.cid);
        if changed.iter().all(|t| t.is_on()) {
            continue;
        }
        let Some(now) = relstate::rel_state(oid) else {
            continue;
        };
        let table = format!("{}.{}", now.schema, now.name);
        if !su && start.before.get(&rel).is_some_and(|b| b.row.is_some()) {
            return Err(AuditError::AuditTriggerChanged {
                action: tag.to_string(),
                table,
            });
        }
        if !su {
            return Err(AuditError::HandMadeTrigger {
                action: tag.to_string(),
                table,
            });
        }
        // A superuser may; record it when auditing was on before.
        if start.before.get(&rel).is_some_and(RelState::fully_audited) && !now.fully_audited() {
            record_ddl(
                &now,
                json!({"command": tag, "table": now.quoted(), "capture_triggers_changed_by_superuser": true}),
            )?;
        }
    }

    // Renames, moves and column changes of audited tables, made by this command.
    for (&rel, was) in &start.before {
        if !was.audited() {
            continue;
        }
        let oid = pg_sys::Oid::from(rel);
        let Some(now) = relstate::rel_state(oid) else {
            continue;
        };
        // Attribute numbers too: DROP COLUMN a, ADD COLUMN a in one command
        // leaves the same names and types, and every value replaced.
        let same = (
            &now.schema,
            &now.name,
            &now.columns,
            now.persistence,
            &now.attnames,
        ) == (
            &was.schema,
            &was.name,
            &was.columns,
            was.persistence,
            &was.attnames,
        );
        // A primary key added, dropped, made of other columns or renamed:
        // the command holds the lock that such a change takes, so it made
        // the change. history() keys name the key's columns.
        let key_changed = was.primary_key != now.primary_key;
        if !key_changed
            && ((same && !start.rewrites) || !relstate::relation_changed(oid, start.cid))
        {
            continue;
        }
        let mut details = json!({
            "command": tag,
            "before": {"schema": was.schema, "table": was.name, "columns": was.columns},
            "after": {"schema": now.schema, "table": now.name, "columns": now.columns},
        });
        if key_changed {
            details["primary_key"] = json!({"before": was.primary_key.as_deref(),
                                            "after": now.primary_key.as_deref()});
        }
        if now.persistence != was.persistence {
            details["persistence"] = json!({"before": (was.persistence as char).to_string(),
                                            "after": (now.persistence as char).to_string()});
        }
        if start.rewrites {
            details["values_rewritten"] = json!(true);
        }
        // New columns get their values from a default or a generation
        // expression, not from recorded changes: the expression is recorded.
        let added: Vec<i16> = now
            .attnames
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !was.attnames.iter().any(|(w, _)| w == n))
            .collect();
        if !added.is_empty() {
            let filled = crate::ddl_effects::column_expressions(oid, &added)?;
            if !filled.is_empty() {
                details["added_column_values"] = json!(filled);
            }
        }
        let id = crate::ddl_effects::record_ddl_id(&now, details)?;
        // The history() index holds no change made before under another
        // key, or another name (a table renamed back to a name it had
        // finds that name's changes before index_history() ran under the
        // other): history() searches those by content.
        if key_changed || (&was.schema, &was.name) != (&now.schema, &now.name) {
            capture::mark_history_since(oid, id)?;
        }
        if !now.is_partition {
            follow_renamed_columns(oid, was, &now)?;
        }
    }

    for a in &start.plan.actions {
        match a {
            Action::SchemaRename { old, new } => schema_renamed(tag, old, new)?,
            Action::Attach { parent, child } => attached(tag, *parent, *child)?,
            Action::Detach { parent, child } => detached(tag, *parent, *child)?,
            Action::Move(rel) if in_audited_schema(*rel)? => triggers::enable_default(*rel)?,
            _ => {}
        }
    }

    // New partitions: PostgreSQL cloned the row trigger; the statement
    // trigger and ENABLE ALWAYS are ours to add. Only for a partition this
    // command created or attached: when pg_restore creates a parent's row
    // trigger, PostgreSQL clones it onto existing partitions, and the dump
    // brings their own statement triggers next.
    let mut new_partitions: Vec<u32> = start
        .plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Attach { child, .. } => Some(child.to_u32()),
            _ => None,
        })
        .collect();
    if matches!(tag, "CREATE TABLE" | "CREATE FOREIGN TABLE") {
        new_partitions.extend(done.relations.iter().copied());
    }
    // A partitioned table attached or created as a partition brings its
    // own partitions, at every level.
    let new_partitions: BTreeSet<u32> = new_partitions
        .into_iter()
        .flat_map(|r| relstate::with_inheritors(pg_sys::Oid::from(r)))
        .map(|o| o.to_u32())
        .collect();
    for &rel in &new_partitions {
        let oid = pg_sys::Oid::from(rel);
        if let Some(st) = relstate::rel_state(oid) {
            if st.is_partition && st.row.is_some_and(|t| t.clone && t.ours) && !st.fully_audited() {
                refuse_unlogged(&st, "a partition of an audited table")?;
                triggers::complete_partition(&st)?;
            }
        }
    }

    // Inheritance children of audited tables are audited like their parent
    // (their rows show in it and change through it). Judged by the parents
    // the new or altered table has now, not by the names the command gave.
    let inherits = start
        .plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::Inherit));
    if inherits
        || matches!(
            tag,
            "CREATE TABLE" | "CREATE FOREIGN TABLE" | "CREATE SCHEMA"
        )
    {
        for &rel in &done.relations {
            let oid = pg_sys::Oid::from(rel);
            let Some(st) = relstate::rel_state(oid) else {
                continue;
            };
            if !matches!(st.kind, b'r' | b'p' | b'f') || st.is_partition || st.audited() {
                continue;
            }
            let parent = relstate::inheritance_parents(oid)
                .into_iter()
                .filter_map(relstate::rel_state)
                .find(RelState::audited);
            if let Some(parent) = parent {
                refuse_unlogged(
                    &st,
                    &format!("a child of audited table {}", parent.quoted()),
                )?;
                let opts = options_of(&parent)?;
                if st.kind == b'f' {
                    triggers::enable_detached(oid, &st, &opts)?;
                    record_ddl(
                        &st,
                        json!({"command": tag, "table": st.quoted(), "inherits": parent.quoted(),
                               "audited": true, "options": opts.to_value()}),
                    )?;
                } else {
                    triggers::enable_inherited(oid, &opts, &parent.quoted())?;
                }
            }
        }
    }

    // Tables created in a schema given to audit_log.enable_schema() are
    // audited from their creation. (During pg_restore the list of schemas is
    // still empty when tables are created: the dump's own triggers come later.)
    if matches!(tag, "CREATE TABLE" | "CREATE TABLE AS" | "SELECT INTO") {
        for &rel in &done.relations {
            let oid = pg_sys::Oid::from(rel);
            if in_audited_schema(oid)? {
                triggers::enable_default(oid)?;
            }
        }
    }

    // Types whose change alters how recorded values of audited tables read:
    // an enum's labels, a composite's attributes (a composite type is
    // reported by its relation; its type is what columns use).
    let mut relabeled: Vec<(pg_sys::Oid, String)> = Vec::new();
    for a in &start.plan.actions {
        match a {
            Action::EnumRename | Action::JsonCast => relabeled.extend(done.types.iter().cloned()),
            Action::CompositeType { typrel, .. } => {
                // SAFETY: a syscache lookup; InvalidOid if the relation is gone.
                let typ = unsafe { pg_sys::get_rel_type_id(*typrel) };
                if typ != pg_sys::InvalidOid {
                    let name = relstate::rel_state(*typrel)
                        .map(|s| s.quoted())
                        .unwrap_or_default();
                    relabeled.push((typ, name));
                }
            }
            _ => {}
        }
    }
    // A table's own row type, used as a column type elsewhere: renaming,
    // adding or dropping its columns changes how those values read.
    if let Some(Some(rel)) = start.plan.primary {
        // SAFETY: a syscache lookup; InvalidOid if the relation is gone.
        let rowtype = unsafe { pg_sys::get_rel_type_id(rel) };
        if rowtype != pg_sys::InvalidOid && relstate::type_used_by_tables(rowtype) {
            let name = relstate::rel_state(rel)
                .map(|s| s.quoted())
                .unwrap_or_default();
            relabeled.push((rowtype, name));
        }
    }
    for (typ, identity) in &relabeled {
        for st in tables_using_type(*typ)? {
            record_ddl(
                &st,
                json!({"command": tag, "table": st.quoted(), "type": identity,
                       "note": "values of this type may read differently in this table's later events"}),
            )?;
        }
    }
    Ok(())
}

unsafe fn event_trigger_data(
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<&'static pg_sys::EventTriggerData> {
    // SAFETY: by the caller's contract, fcinfo comes from the function manager.
    unsafe {
        let ctx = (*fcinfo).context;
        if ctx.is_null() || (*ctx).type_ != pg_sys::NodeTag::T_EventTriggerData {
            return None;
        }
        Some(&*(ctx as *const pg_sys::EventTriggerData))
    }
}

fn command_tag(data: &pg_sys::EventTriggerData) -> String {
    // SAFETY: GetCommandTagName returns a static string.
    unsafe { CStr::from_ptr(pg_sys::GetCommandTagName(data.tag)) }
        .to_string_lossy()
        .into_owned()
}

/// An event trigger's entry point: `judge` runs unless audit_log itself is
/// running the DDL.
fn run_event_trigger(
    fcinfo: pg_sys::FunctionCallInfo,
    judge: fn(&pg_sys::EventTriggerData) -> Result<(), AuditError>,
) -> pg_sys::Datum {
    // SAFETY: fcinfo is valid for this call.
    let Some(data) = (unsafe { event_trigger_data(fcinfo) }) else {
        AuditError::Internal("this function can only be called as an event trigger".into()).raise();
    };
    if !triggers::internal_ddl_active() {
        judge(data).or_raise();
    }
    pg_sys::Datum::from(0)
}

c_function!(
    pg_finfo_audit_log_ddl_command_start,
    audit_log_ddl_command_start,
    |f| run_event_trigger(f, |d| on_start(&command_tag(d), d.parsetree))
);
c_function!(
    pg_finfo_audit_log_ddl_command_end,
    audit_log_ddl_command_end,
    |f| run_event_trigger(f, |d| on_end(&command_tag(d)))
);
c_function!(pg_finfo_audit_log_sql_drop, audit_log_sql_drop, |f| {
    run_event_trigger(f, |d| {
        crate::ddl_drop::on_drop(&command_tag(d), &detaching_now())
    })
});
