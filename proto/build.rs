//! Compiles `filament/v1/*.proto` with protox, so no system `protoc` is needed,
//! and writes the encoded file descriptor set that reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "filament/v1/events.proto",
        "filament/v1/stream.proto",
        "filament/v1/access.proto",
        "filament/v1/presence.proto",
        "filament/v1/voice.proto",
        "filament/v1/search.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    // The encoded set is served by gRPC server reflection, so grpcurl and
    // grpcui can list and call every service without the .proto files.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("filament_descriptor_set.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
