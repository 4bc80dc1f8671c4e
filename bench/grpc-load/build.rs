//! Generates the gRPC client from the repository's proto with protox (pure Rust; no system
//! `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../../proto/ai_api/v1/ai_api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
