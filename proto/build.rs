//! Compiles `fleetwatch/v1/*.proto` with a vendored `protoc`, so a fresh
//! machine needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "fleetwatch/v1/telemetry.proto",
        "fleetwatch/v1/frames.proto",
        "fleetwatch/v1/detections.proto",
        "fleetwatch/v1/incidents.proto",
        "fleetwatch/v1/commands.proto",
        "fleetwatch/v1/ingest.proto",
        "fleetwatch/v1/persistence.proto",
        "fleetwatch/v1/incident_api.proto",
        "fleetwatch/v1/inference.proto",
    ];
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_build::configure()
        .file_descriptor_set_path(out_dir.join("fleetwatch_descriptor.bin"))
        .compile_protos_with_config(config, &protos, &["."])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
