//! The MQTT bridge's topic matcher `match_filter`, which names the vehicle a
//! message is ingested for. Input: a filter up to the first NUL, then a
//! topic (no NUL: the whole input is a topic against the shipped filters).
//! Checked against a reference model for the shipped single-`+` filters.
#![no_main]

use fleetwatch_ingest::config::MqttConfig;
use fleetwatch_ingest::mqtt::match_filter;
use libfuzzer_sys::fuzz_target;

/// The vehicle a filter of one `+` segment and literal segments (as
/// shipped) should extract: the topic has the same segments with a
/// non-empty one at the `+`.
fn reference(filter: &str, topic: &str) -> Option<String> {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if f.len() != t.len() {
        return None;
    }
    let mut vehicle = None;
    for (fs, ts) in f.iter().zip(&t) {
        if *fs == "+" {
            if ts.is_empty() {
                return None;
            }
            vehicle = Some(ts.to_string());
        } else if fs != ts {
            return None;
        }
    }
    vehicle
}

fn check(filter: &str, topic: &str) {
    let got = match_filter(filter, topic);
    if let Some(v) = &got {
        assert!(!v.is_empty(), "empty vehicle from {filter:?} / {topic:?}");
        assert!(!v.contains('/'), "vehicle {v:?} spans segments");
        assert!(
            topic.split('/').any(|s| s == v),
            "vehicle {v:?} is no segment of {topic:?}"
        );
    }
    let shipped_shape = filter.split('/').filter(|s| *s == "+").count() == 1
        && !filter.split('/').any(|s| s == "#");
    if shipped_shape {
        assert_eq!(got, reference(filter, topic), "{filter:?} / {topic:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match s.split_once('\0') {
        Some((filter, topic)) => check(filter, topic),
        None => {
            let mqtt = MqttConfig::default();
            for f in mqtt.telemetry_filters.iter().chain(&mqtt.detection_filters) {
                check(f, s);
            }
        }
    }
});
