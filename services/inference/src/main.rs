fn main() {
    fleetwatch_common::service_main(
        "inference",
        "Fleetwatch inference: YOLOv8 object detection on video frames from Kafka, and gRPC Detect",
        |c: &fleetwatch_inference::Config| &c.log,
        fleetwatch_inference::run,
    )
}
