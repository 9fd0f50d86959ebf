//! Compiles the gRPC contract with protox (pure Rust) so the build needs no system `protoc`, and
//! links the NULL guard in front of librdkafka's metadata cache lookup
//! (`src/ingest/rdkafka_guard.c` says why).

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

    link_rdkafka_guard();

    tonic_prost_build::configure()
        // `bytes::Bytes` lets keys and values move between request, map and response without copies.
        .bytes(".cdc_cache.v1")
        .compile_fds(descriptors)?;
    Ok(())
}

/// GNU ld, lld and mold route every call to the wrapped symbol from another object file through
/// `__wrap_…`; librdkafka calls the lookup across object files, so the guard sees those calls.
fn link_rdkafka_guard() {
    let guard = "src/ingest/rdkafka_guard.c";
    println!("cargo:rerun-if-changed={guard}");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return; // no --wrap in Apple's linker: development builds there go without the guard
    }
    cc::Build::new().file(guard).compile("cdc_cache_rdkafka_guard");
    // Only the binary and the integration tests link this library (with the guard's archive)
    // for sure; a bench that drives rdkafka alone has no `__wrap_` symbol to give.
    for target in ["bins", "tests"] {
        println!("cargo:rustc-link-arg-{target}=-Wl,--wrap=rd_kafka_metadata_cache_find");
        // The guard's archive comes before librdkafka's on the link line: force its member in.
        println!("cargo:rustc-link-arg-{target}=-Wl,--undefined=__wrap_rd_kafka_metadata_cache_find");
    }
}
