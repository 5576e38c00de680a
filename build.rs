//! Compiles proto/mayfly/v1/*.proto with protox (pure Rust, no system protoc) and
//! generates the tonic services plus a descriptor set for gRPC server reflection.
use protox::prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/mayfly/v1/common.proto",
    "proto/mayfly/v1/task.proto",
    "proto/mayfly/v1/token.proto",
    "proto/mayfly/v1/admin.proto",
    "proto/mayfly/v1/verifier.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("mayfly_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The services exist only in the broker (feature `server`); the verifier
        // library needs the messages and the clients.
        .server_mod_attribute(".", "#[cfg(feature = \"server\")]")
        // Messages that carry a bearer token get no derived Debug, so a token can
        // never reach a log line through `{:?}`.
        .skip_debug([
            "mayfly.v1.IntrospectRequest",
            "mayfly.v1.MintTokenResponse",
            "mayfly.v1.ReportMisuseRequest",
            "mayfly.v1.DelegateRequest",
        ])
        .compile_fds(fds)?;
    Ok(())
}
