//! Header names carried on every Fleetwatch record.

pub const CONTENT_TYPE: &str = "content-type";
pub const MESSAGE_TYPE: &str = "fleetwatch-type";
pub const TRACEPARENT: &str = "traceparent";
pub const PROTOBUF: &str = "application/x-protobuf";

/// Headers added to a dead-lettered record, naming where it came from and why.
pub const DLQ_SOURCE_TOPIC: &str = "dlq-source-topic";
pub const DLQ_SOURCE_PARTITION: &str = "dlq-source-partition";
pub const DLQ_SOURCE_OFFSET: &str = "dlq-source-offset";
pub const DLQ_CONSUMER_GROUP: &str = "dlq-consumer-group";
pub const DLQ_ERROR: &str = "dlq-error";
pub const DLQ_TIME_UNIX_US: &str = "dlq-time-unix-us";
/// Dead letters that never were Kafka records (an MQTT payload ingest could
/// not accept): the protocol it came in on and the topic it was meant for.
pub const DLQ_SOURCE_PROTOCOL: &str = "dlq-source-protocol";
pub const DLQ_TARGET_TOPIC: &str = "dlq-target-topic";
