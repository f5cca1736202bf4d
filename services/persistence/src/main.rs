fn main() {
    fleetwatch_common::service_main(
        "persistence",
        "Fleetwatch persistence: Kafka into PostgreSQL and the object store, and gRPC queries",
        |c: &fleetwatch_persistence::Config| &c.log,
        fleetwatch_persistence::run,
    )
}
