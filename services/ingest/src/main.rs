fn main() {
    fleetwatch_common::service_main(
        "ingest",
        "Fleetwatch ingest: vehicle telemetry, detections and frames over HTTP, gRPC and MQTT into Kafka",
        |c: &fleetwatch_ingest::Config| &c.log,
        fleetwatch_ingest::run,
    )
}
