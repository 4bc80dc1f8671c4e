//! Compiles `proto/` into Rust with a pure-Rust protobuf compiler (protox), so the build needs no
//! system `protoc`. The descriptor set is written beside the generated code for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/ai_api/v1/ai_api.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    // The SQL migrations are embedded by `sqlx::migrate!`.
    println!("cargo:rerun-if-changed=migrations");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(protos, ["proto"])?;
    std::fs::write(
        out_dir.join("ai_api_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
