//! Compiles `filament/v1/*.proto` with protox, so no system `protoc` is needed.

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
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
