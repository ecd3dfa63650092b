//! The lines `audit-log tail` writes for SIEMs: the Elastic Common Schema
//! (8.x) and OCSF (1.1). The README's "A live feed for SIEMs" gives the
//! mapping field by field. Row values stay raw JSON text, so a value of any
//! depth passes through without being parsed.

use audit_log_core::record::Record;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::format::EventLine;

pub const ECS_VERSION: &str = "8.11.0";
pub const OCSF_VERSION: &str = "1.1.0";

/// Which log a line came from.
pub struct Source {
    pub database: String,
    pub system_identifier: String,
}

/// A row change (as opposed to a configuration change of the log).
fn is_row_change(op: &str) -> bool {
    matches!(op, "INSERT" | "UPDATE" | "DELETE" | "TRUNCATE")
}

/// What audit_log adds to both schemas, under a key of its own: the
/// event's place in the log, its hashes, and the rows.
#[derive(Serialize)]
pub struct Details<'a> {
    database: &'a str,
    system_identifier: &'a str,
    chain_id: i32,
    seq: i64,
    tx_id: u64,
    tx_seq: i64,
    tx_first: i64,
    id: i64,
    op: &'a str,
    table_schema: &'a str,
    table_name: &'a str,
    session_user: &'a str,
    current_user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    application_name: Option<&'a str>,
    statement_at: &'a str,
    recorded_at: &'a str,
    committed_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_row: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_row: Option<&'a RawValue>,
    prev_hash: &'a str,
    hash: &'a str,
}

fn details<'a>(e: &'a EventLine, r: &Record, s: &'a Source, committed_at: &'a str) -> Details<'a> {
    Details {
        database: &s.database,
        system_identifier: &s.system_identifier,
        chain_id: r.chain_id,
        seq: r.seq,
        tx_id: e.tx_id,
        tx_seq: e.tx_seq,
        tx_first: e.tx_first,
        id: e.id,
        op: &e.op,
        table_schema: &e.table_schema,
        table_name: &e.table_name,
        session_user: &e.session_user,
        current_user: &e.current_user,
        application_name: e.application_name.as_deref(),
        statement_at: &e.statement_at,
        recorded_at: &e.recorded_at,
        committed_at,
        context: e.context.as_deref(),
        old_row: e.old_row.as_deref(),
        new_row: e.new_row.as_deref(),
        prev_hash: &e.prev_hash,
        hash: &e.hash,
    }
}

#[derive(Serialize)]
pub struct Name<'a> {
    name: &'a str,
}

#[derive(Serialize)]
pub struct Ip<'a> {
    ip: &'a str,
}

#[derive(Serialize)]
pub struct EcsLine<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: &'a str,
    ecs: EcsVersion,
    event: EcsEvent<'a>,
    user: EcsUser<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<Ip<'a>>,
    related: Related<'a>,
    service: EcsService<'a>,
    audit_log: Details<'a>,
}

#[derive(Serialize)]
pub struct EcsVersion {
    version: &'static str,
}

#[derive(Serialize)]
pub struct EcsEvent<'a> {
    kind: &'static str,
    category: [&'static str; 1],
    #[serde(rename = "type")]
    kind_of_change: [&'static str; 1],
    action: String,
    outcome: &'static str,
    /// The event's hash: unique, and the same on every delivery.
    id: &'a str,
    sequence: i64,
    dataset: &'static str,
    module: &'static str,
    provider: &'static str,
}

#[derive(Serialize)]
pub struct EcsUser<'a> {
    name: &'a str,
    effective: Name<'a>,
}

#[derive(Serialize)]
pub struct Related<'a> {
    user: Vec<&'a str>,
}

#[derive(Serialize)]
pub struct EcsService<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
}

/// One event as an ECS document.
pub fn ecs<'a>(e: &'a EventLine, r: &Record, s: &'a Source, committed_at: &'a str) -> EcsLine<'a> {
    let mut users = vec![e.session_user.as_str()];
    if e.current_user != e.session_user {
        users.push(&e.current_user);
    }
    EcsLine {
        timestamp: &e.recorded_at,
        ecs: EcsVersion {
            version: ECS_VERSION,
        },
        event: EcsEvent {
            kind: "event",
            category: [if is_row_change(&e.op) {
                "database"
            } else {
                "configuration"
            }],
            kind_of_change: ["change"],
            action: e.op.to_ascii_lowercase(),
            outcome: "success",
            id: &e.hash,
            sequence: e.id,
            dataset: "audit_log.events",
            module: "audit_log",
            provider: "audit_log",
        },
        user: EcsUser {
            name: &e.session_user,
            effective: Name {
                name: &e.current_user,
            },
        },
        client: e.client_addr.as_deref().map(|ip| Ip { ip }),
        related: Related { user: users },
        service: EcsService {
            kind: "postgresql",
            name: &s.database,
        },
        audit_log: details(e, r, s, committed_at),
    }
}

#[derive(Serialize)]
pub struct OcsfLine<'a> {
    class_uid: u32,
    class_name: &'static str,
    category_uid: u32,
    category_name: &'static str,
    activity_id: u32,
    activity_name: &'static str,
    type_uid: u32,
    type_name: String,
    severity_id: u32,
    severity: &'static str,
    status_id: u32,
    status: &'static str,
    /// Milliseconds since the Unix epoch.
    time: i64,
    time_dt: &'a str,
    metadata: OcsfMetadata<'a>,
    actor: OcsfActor<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_endpoint: Option<Ip<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<OcsfDatabase<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<OcsfResource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    type_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api: Option<OcsfApi<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<[OcsfResource; 1]>,
    unmapped: Details<'a>,
}

#[derive(Serialize)]
pub struct OcsfMetadata<'a> {
    version: &'static str,
    product: OcsfProduct,
    /// The event's hash: unique, and the same on every delivery.
    uid: &'a str,
    sequence: i64,
    /// The transaction: its first event's id.
    correlation_uid: String,
    log_name: &'static str,
    original_time: &'a str,
}

#[derive(Serialize)]
pub struct OcsfProduct {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
pub struct OcsfActor<'a> {
    user: Name<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_name: Option<&'a str>,
}

#[derive(Serialize)]
pub struct OcsfDatabase<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    type_id: u32,
    uid: &'a str,
}

#[derive(Serialize)]
pub struct OcsfApi<'a> {
    operation: &'a str,
    service: Name<'static>,
}

#[derive(Serialize)]
pub struct OcsfResource {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// OCSF's activity for an operation: Datastore Activity (6005) for a row
/// change, API Activity (6003) for a change of the log's configuration.
fn ocsf_activity(op: &str) -> (u32, &'static str, u32, &'static str) {
    match op {
        "INSERT" => (6005, "Datastore Activity", 6, "Create"),
        "UPDATE" => (6005, "Datastore Activity", 2, "Update"),
        "DELETE" | "TRUNCATE" => (6005, "Datastore Activity", 7, "Delete"),
        "ENABLE" | "ENABLE_SCHEMA" => (6003, "API Activity", 1, "Create"),
        "DISABLE" | "DISABLE_SCHEMA" | "DROP" | "PURGE" => (6003, "API Activity", 4, "Delete"),
        "OPTIONS" | "RETENTION" | "DDL" | "REPAIR" | "INDEX_HISTORY" => {
            (6003, "API Activity", 3, "Update")
        }
        _ => (6003, "API Activity", 99, "Other"),
    }
}

/// Milliseconds since the epoch of an RFC 3339 time the log wrote.
fn millis(rfc3339: &str) -> i64 {
    audit_log_core::time::parse_rfc3339(rfc3339).map_or(0, |us| us.div_euclid(1000))
}

/// One event as an OCSF event.
pub fn ocsf<'a>(
    e: &'a EventLine,
    r: &Record,
    s: &'a Source,
    committed_at: &'a str,
) -> OcsfLine<'a> {
    let (class_uid, class_name, activity_id, activity_name) = ocsf_activity(&e.op);
    let row = class_uid == 6005;
    let qualified = || format!("{}.{}", e.table_schema, e.table_name);
    OcsfLine {
        class_uid,
        class_name,
        category_uid: 6,
        category_name: "Application Activity",
        activity_id,
        activity_name,
        type_uid: class_uid * 100 + activity_id,
        type_name: format!("{class_name}: {activity_name}"),
        severity_id: 1,
        severity: "Informational",
        status_id: 1,
        status: "Success",
        time: millis(&e.recorded_at),
        time_dt: &e.recorded_at,
        metadata: OcsfMetadata {
            version: OCSF_VERSION,
            product: OcsfProduct {
                name: "audit_log",
                vendor_name: "audit_log",
                version: env!("CARGO_PKG_VERSION"),
            },
            uid: &e.hash,
            sequence: e.id,
            correlation_uid: e.tx_first.to_string(),
            log_name: "audit_log.events",
            original_time: &e.recorded_at,
        },
        actor: OcsfActor {
            user: Name {
                name: &e.session_user,
            },
            app_name: e.application_name.as_deref(),
        },
        src_endpoint: e.client_addr.as_deref().map(|ip| Ip { ip }),
        database: row.then_some(OcsfDatabase {
            name: &s.database,
            kind: "PostgreSQL",
            type_id: 1,
            uid: &s.system_identifier,
        }),
        table: row.then(|| OcsfResource {
            name: qualified(),
            kind: "table",
        }),
        type_id: row.then_some(3),
        api: (!row).then_some(OcsfApi {
            operation: &e.op,
            service: Name { name: "audit_log" },
        }),
        resources: (!row).then(|| {
            [OcsfResource {
                name: qualified(),
                kind: "table",
            }]
        }),
        unmapped: details(e, r, s, committed_at),
    }
}
