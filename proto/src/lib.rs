//! Fleetwatch v1 contracts: the protobuf values of every Kafka topic and the
//! gRPC services, generated from `proto/fleetwatch/v1`.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fleetwatch.v1");

    /// Encoded descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("fleetwatch_descriptor");
}

/// Kafka topic names (v1). Every topic's dead-letter topic is `<topic>.dlq`.
pub mod topics {
    pub const TELEMETRY: &str = "fleet.telemetry.v1";
    pub const FRAMES: &str = "fleet.frames.v1";
    pub const DETECTIONS: &str = "fleet.detections.v1";
    pub const INCIDENTS: &str = "fleet.incidents.v1";
    pub const COMMANDS: &str = "fleet.commands.v1";
    pub const COMMAND_STATUS: &str = "fleet.command-status.v1";

    /// Every v1 topic, in the order `fleetctl topics create` makes them.
    pub const ALL: &[&str] = &[
        TELEMETRY,
        FRAMES,
        DETECTIONS,
        INCIDENTS,
        COMMANDS,
        COMMAND_STATUS,
    ];

    pub fn dlq(topic: &str) -> String {
        format!("{topic}.dlq")
    }
}

/// A vehicle id as every contract uses it (record key, MQTT topic segment,
/// object key prefix, registry row): 1 to 64 of `[A-Za-z0-9_.:-]`, starting
/// with a letter or digit.
pub fn valid_vehicle_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn vehicle_ids() {
        use super::valid_vehicle_id;
        assert!(valid_vehicle_id("drone-01"));
        assert!(valid_vehicle_id("vessel.7:a_b"));
        assert!(!valid_vehicle_id(""));
        assert!(!valid_vehicle_id("-x"));
        assert!(!valid_vehicle_id("a/b"));
        assert!(!valid_vehicle_id(&"a".repeat(65)));
        assert!(valid_vehicle_id(&"a".repeat(64)));
    }
}

/// Message type names carried in the `fleetwatch-type` header.
pub mod message_types {
    pub const TELEMETRY_BATCH: &str = "fleetwatch.v1.TelemetryBatch";
    pub const FRAME: &str = "fleetwatch.v1.Frame";
    pub const DETECTION_BATCH: &str = "fleetwatch.v1.DetectionBatch";
    pub const INCIDENT_EVENT: &str = "fleetwatch.v1.IncidentEvent";
    pub const COMMAND: &str = "fleetwatch.v1.Command";
    pub const COMMAND_STATUS: &str = "fleetwatch.v1.CommandStatus";
}
