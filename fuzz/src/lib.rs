//! Shared fixtures of the fuzz targets: a fixed clock and limits, Kafka
//! records as consumers see them, and a set of incident rules, so each
//! target drives the services' real public functions the way they run.

use fleetwatch_incident::rules::{Params, Rule};
use fleetwatch_ingest::config::LimitsConfig;
use fleetwatch_ingest::parse::Clock;
use fleetwatch_kafka::Record;

/// The authenticated vehicle every target parses for (the seed's).
pub const VEHICLE: &str = "drone-01";

/// Receive time: 2025-09-24T09:10:15Z, the seed messages' timestamp, so
/// their examples fall inside the accepted window.
pub const NOW_US: i64 = 1_758_705_015_000_000;

/// Ingest's default limits.
pub fn limits() -> LimitsConfig {
    LimitsConfig::default()
}

pub fn clock() -> Clock {
    Clock::new(&limits(), NOW_US)
}

/// A consumed record with `payload` as its value.
pub fn record(topic: &str, key: Option<&str>, payload: &[u8]) -> Record {
    Record {
        topic: topic.to_string(),
        partition: 0,
        offset: 0,
        key: key.map(|k| k.as_bytes().to_vec()),
        payload: Some(payload.to_vec()),
        headers: Vec::new(),
        timestamp_ms: None,
    }
}

/// Splits a fuzz input into a flag byte and the rest. Flag bit 0 set: the
/// record key is the decoded `vehicle_id` (what producers write), so the
/// validators get past the key check; clear: the key is [`VEHICLE`].
pub fn split_flags(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((f, rest)) => (*f, rest),
        None => (0, data),
    }
}

/// Incident rules of every kind, as the rules API would store them.
pub fn rules() -> Vec<Rule> {
    let defs = [
        (
            "threshold",
            r#"{"field":"battery","op":"below","trigger":20,"clear":25,"for_secs":0}"#,
        ),
        (
            "threshold",
            r#"{"field":"temp","op":"above","trigger":60,"clear":55,"for_secs":5}"#,
        ),
        (
            "geofence",
            r#"{"polygon":[[28.0,77.0],[29.0,77.0],[29.0,78.0],[28.0,78.0]],"mode":"keep_in"}"#,
        ),
        ("link_loss", r#"{"timeout_secs":30}"#),
        (
            "detection",
            r#"{"classes":["person","car"],"min_confidence":0.5,"min_consecutive_frames":2,"zone":[[0,0],[1,0],[1,1],[0,1]]}"#,
        ),
        ("detection", r#"{"classes":["boat"]}"#),
    ];
    defs.iter()
        .enumerate()
        .map(|(i, (kind, json))| {
            let v: serde_json::Value = serde_json::from_str(json).expect("rule fixture is JSON");
            Rule {
                id: i as i64 + 1,
                name: format!("{kind}-{i}"),
                vehicle_id: None,
                severity: 2,
                enabled: true,
                description: String::new(),
                params: Params::from_json(kind, &v).expect("rule fixture is valid"),
                created_us: 0,
                updated_us: 0,
            }
        })
        .collect()
}

/// Latest sample time consumers accept (9999-12-31T23:59:59Z): persistence's
/// and incident's `check_time` bound, below which incident evaluates rules.
pub const MAX_TIME_UNIX_US: i64 = 253_402_300_799_000_000;

/// Whether incident's consumers would pass this time to the rules.
pub fn incident_time(us: i64) -> bool {
    (0..=MAX_TIME_UNIX_US).contains(&us)
}

/// `fleetctl tail` / `fleetctl dlq` rendering of a record value, which must
/// cope with any bytes (DLQ records are, by definition, often broken).
pub fn render(message_type: &str, payload: &[u8]) {
    let _ = fleetctl::tail::decode(message_type, payload, false);
}
