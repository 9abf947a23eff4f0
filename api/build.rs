//! Compiles `proto/zael/limiter/v1/limiter.proto` with `protox` (a pure-Rust protobuf
//! compiler: no system `protoc`) and generates the messages, client and server with
//! `tonic-prost-build`; also writes the encoded descriptor set that reflection serves.

use std::path::PathBuf;

const PROTO: &str = "zael/limiter/v1/limiter.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!("cargo:rerun-if-changed={}", root.join(PROTO).display());
    let fds = protox::Compiler::new([&root])?.include_source_info(true).open_file(PROTO)?.file_descriptor_set();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("limiter_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
