fn main() {
    fleetwatch_common::service_main(
        "incident",
        "Fleetwatch incident service: rules on telemetry and detections, incident lifecycle, evidence, events",
        |c: &fleetwatch_incident::Config| &c.log,
        fleetwatch_incident::run,
    )
}
