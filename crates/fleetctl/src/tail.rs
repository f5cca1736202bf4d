//! `fleetctl tail`: print a topic's records as JSON lines, decoding the
//! protobuf value by the `fleetwatch-type` header (or the topic name).
//!
//! Partitions are assigned by hand, so there is no consumer group to join and
//! nothing is committed: tailing never disturbs the services' offsets.

use std::io::Write;
use std::sync::LazyLock;

use anyhow::{Context, anyhow};
use fleetwatch_kafka::headers;
use fleetwatch_proto::{message_types, topics};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value, json};

use crate::cli::{Global, TailArgs};
use crate::connect;

static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(fleetwatch_proto::v1::FILE_DESCRIPTOR_SET).ok());

pub async fn run(g: &Global, args: TailArgs) -> anyhow::Result<()> {
    let md = connect::metadata(g, Some(&args.topic)).await?;
    let t = md
        .topics()
        .first()
        .ok_or_else(|| anyhow!("broker returned no metadata for {}", args.topic))?;
    if t.error().is_some() || t.partitions().is_empty() {
        anyhow::bail!(
            "topic {} does not exist on {}: see `fleetctl topics list`",
            args.topic,
            g.bootstrap_servers
        );
    }
    let consumer: StreamConsumer = connect::rdkafka_config(g)
        // Required by librdkafka even though no group is joined (manual assignment).
        .set("group.id", "fleetctl-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("cannot create a Kafka consumer")?;
    let mut tpl = TopicPartitionList::new();
    let start = if args.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    for p in t.partitions() {
        tpl.add_partition_offset(&args.topic, p.id(), start)?;
    }
    consumer
        .assign(&tpl)
        .context("cannot assign the topic's partitions")?;
    eprintln!(
        "tailing {} ({} partitions) from {}; Ctrl-C to stop",
        args.topic,
        t.partitions().len(),
        if args.from_beginning {
            "the beginning"
        } else {
            "now"
        }
    );

    let mut printed = 0u64;
    let stdout = std::io::stdout();
    while args.limit.is_none_or(|l| printed < l) {
        let msg = tokio::select! {
            m = consumer.recv() => m.context("reading from Kafka failed")?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let line = render(&msg, args.with_frame_data);
        let mut out = stdout.lock();
        if let Err(e) = writeln!(out, "{line}").and_then(|_| out.flush()) {
            // `fleetctl tail ... | head` closing the pipe is a normal way to stop.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e.into());
        }
        printed += 1;
    }
    Ok(())
}

/// The message type a topic carries, for records without a type header.
pub fn type_for_topic(topic: &str) -> Option<&'static str> {
    let base = topic.strip_suffix(".dlq").unwrap_or(topic);
    // Test topics carry a suffix (`fleet.telemetry.v1.t1234`), so match the prefix.
    let table = [
        (topics::TELEMETRY, message_types::TELEMETRY_BATCH),
        (topics::FRAMES, message_types::FRAME),
        (topics::DETECTIONS, message_types::DETECTION_BATCH),
        (topics::INCIDENTS, message_types::INCIDENT_EVENT),
        (topics::COMMAND_STATUS, message_types::COMMAND_STATUS),
        (topics::COMMANDS, message_types::COMMAND),
    ];
    table
        .iter()
        .find(|(t, _)| {
            base == *t
                || base
                    .strip_prefix(*t)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
        .map(|(_, m)| *m)
}

fn render(msg: &BorrowedMessage<'_>, with_frame_data: bool) -> Value {
    let mut hdrs = Map::new();
    if let Some(h) = msg.headers() {
        for h in h.iter() {
            let v = h.value.unwrap_or_default();
            let v = match std::str::from_utf8(v) {
                Ok(s) => Value::String(s.to_string()),
                Err(_) => json!({ "hex": hex::encode(v) }),
            };
            hdrs.insert(h.key.to_string(), v);
        }
    }
    let type_header = hdrs
        .get(headers::MESSAGE_TYPE)
        .and_then(Value::as_str)
        .map(str::to_string);
    let message_type = type_header
        .as_deref()
        .or_else(|| type_for_topic(msg.topic()));
    let payload = msg.payload().unwrap_or_default();
    let is_dlq = msg.topic().ends_with(".dlq") || hdrs.keys().any(|k| k.starts_with("dlq-"));

    let mut out = Map::new();
    out.insert("topic".into(), msg.topic().into());
    out.insert("partition".into(), msg.partition().into());
    out.insert("offset".into(), msg.offset().into());
    if let Some(ms) = msg.timestamp().to_millis() {
        out.insert("timestamp_ms".into(), ms.into());
    }
    out.insert(
        "key".into(),
        msg.key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .into(),
    );
    out.insert("headers".into(), Value::Object(hdrs));
    out.insert("type".into(), message_type.into());
    match message_type.map(|t| decode(t, payload, with_frame_data)) {
        Some(Ok(v)) => {
            out.insert("value".into(), v);
        }
        Some(Err(e)) => {
            out.insert("decode_error".into(), e.into());
        }
        None => {
            out.insert("decode_error".into(), "unknown message type".into());
        }
    }
    if is_dlq || !out.contains_key("value") {
        out.insert("payload_hex".into(), hex::encode(payload).into());
    }
    Value::Object(out)
}

/// Decodes a protobuf value of a v1 message type into proto-JSON (field
/// names as in the .proto files, 64-bit integers as numbers).
pub fn decode(message_type: &str, payload: &[u8], with_frame_data: bool) -> Result<Value, String> {
    let pool = POOL
        .as_ref()
        .ok_or("the embedded protobuf descriptors are unreadable")?;
    let desc = pool
        .get_message_by_name(message_type)
        .ok_or_else(|| format!("unknown message type {message_type}"))?;
    let mut msg = DynamicMessage::decode(desc, payload)
        .map_err(|e| format!("not a valid {message_type}: {e}"))?;
    let mut frame_bytes = None;
    if message_type == message_types::FRAME && !with_frame_data {
        frame_bytes = msg
            .get_field_by_name("data")
            .and_then(|v| v.as_bytes().map(|b| b.len()));
        msg.clear_field_by_name("data");
    }
    let opts = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true);
    let mut v = msg
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| e.to_string())?;
    if let (Some(n), Some(obj)) = (frame_bytes, v.as_object_mut()) {
        obj.insert("data_bytes".into(), n.into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwatch_proto::v1::{Frame, TelemetryBatch, TelemetryPoint};
    use prost::Message as _;

    #[test]
    fn topic_names_map_to_types() {
        assert_eq!(
            type_for_topic("fleet.telemetry.v1"),
            Some(message_types::TELEMETRY_BATCH)
        );
        assert_eq!(
            type_for_topic("fleet.telemetry.v1.dlq"),
            Some(message_types::TELEMETRY_BATCH)
        );
        assert_eq!(
            type_for_topic("fleet.telemetry.v1.t00ab.dlq"),
            Some(message_types::TELEMETRY_BATCH)
        );
        assert_eq!(
            type_for_topic("fleet.commands.v1"),
            Some(message_types::COMMAND)
        );
        assert_eq!(
            type_for_topic("fleet.command-status.v1"),
            Some(message_types::COMMAND_STATUS)
        );
        assert_eq!(type_for_topic("fleet.telemetry.v10"), None);
        assert_eq!(type_for_topic("other"), None);
    }

    #[test]
    fn decodes_telemetry_to_json() {
        let b = TelemetryBatch {
            vehicle_id: "d1".into(),
            points: vec![TelemetryPoint {
                vehicle_id: "d1".into(),
                time_unix_us: 1_700_000_000_000_001,
                lat: Some(59.1),
                ..Default::default()
            }],
            source: "http".into(),
            received_unix_us: 5,
        };
        let v = decode(message_types::TELEMETRY_BATCH, &b.encode_to_vec(), false).unwrap();
        assert_eq!(v["vehicle_id"], "d1");
        assert_eq!(v["points"][0]["time_unix_us"], 1_700_000_000_000_001i64);
        assert_eq!(v["points"][0]["lat"], 59.1);
        assert!(decode(message_types::TELEMETRY_BATCH, b"\xff\xff\xff", false).is_err());
        assert!(decode("fleetwatch.v1.Nope", b"", false).is_err());
    }

    #[test]
    fn frame_data_is_summarised() {
        let f = Frame {
            vehicle_id: "d1".into(),
            data: vec![7; 1000],
            ..Default::default()
        };
        let v = decode(message_types::FRAME, &f.encode_to_vec(), false).unwrap();
        assert_eq!(v["data_bytes"], 1000);
        assert!(v.get("data").is_none());
        let v = decode(message_types::FRAME, &f.encode_to_vec(), true).unwrap();
        assert!(v["data"].is_string());
    }
}
