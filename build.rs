//! Compiles stsgate's own ext_authz v3 protos with protox (pure Rust, so no
//! system `protoc`), generates the tonic server/client code, and writes the
//! encoded descriptor set that gRPC server reflection serves.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &["envoy/service/auth/v3/external_auth.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("stsgate_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::api::codec::CheckCodec")
        .compile_fds(fds)?;
    Ok(())
}
