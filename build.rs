//! Compiles the gRPC contract with protox (pure Rust) so the build needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/cdc_cache/v1/cache.proto";
    println!("cargo:rerun-if-changed={proto}");

    let descriptors = protox::compile([proto], ["proto"])?;
    // Server reflection serves this set so grpcurl works without the .proto file.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("cdc_cache_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        // `bytes::Bytes` lets keys and values move between request, map and response without copies.
        .bytes(".cdc_cache.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
