//! Generates Rust code for the etcd v3 API from `proto/`.
//!
//! Everything runs in-process: `protox` parses the .proto files into a
//! `FileDescriptorSet` (no system `protoc` needed), `tonic-prost-build` turns
//! it into prost messages plus tonic clients and servers, and `pbjson-build`
//! adds serde impls that follow the proto3 JSON mapping with the original
//! (snake_case / as-written) field names, like etcd's grpc-gateway. The
//! encoded descriptor set is also written out for gRPC reflection.

use std::env;
use std::path::PathBuf;

use prost::Message;

/// The .proto files to compile, relative to `proto/`.
const PROTOS: &[&str] = &[
    "mvccpb/kv.proto",
    "leasepb/lease.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "mastraftpb/peer.proto",
];

/// The Nacos 2.x protocol, compiled on its own: it has no package (its services are
/// `/Request/request` and `/BiRequestStream/requestBiStream`), so prost writes it to `_.rs`,
/// and it needs no serde impls.
const NACOS_PROTO: &str = "nacos/nacos_grpc_service.proto";

/// Proto packages to generate code for.
const PACKAGES: &[&str] = &[
    ".mvccpb",
    ".leasepb",
    ".authpb",
    ".etcdserverpb",
    ".v3lockpb",
    ".v3electionpb",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    println!("cargo:rerun-if-changed=build.rs");
    for proto in PROTOS {
        println!(
            "cargo:rerun-if-changed={}",
            proto_root.join(proto).display()
        );
    }

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| proto_root.join(p)).collect();
    let fds = protox::compile(&files, [&proto_root])?;

    let descriptor_bytes = fds.encode_to_vec();
    std::fs::write(out_dir.join("mast_descriptor.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Bytes fields as `bytes::Bytes`, so an event fanned out to many watchers shares its
        // key and value instead of copying them.
        .bytes(".")
        .emit_rerun_if_changed(false)
        .out_dir(&out_dir)
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .out_dir(&out_dir)
        .register_descriptors(&descriptor_bytes)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(PACKAGES)?;

    println!(
        "cargo:rerun-if-changed={}",
        proto_root.join(NACOS_PROTO).display()
    );
    let nacos = protox::compile([proto_root.join(NACOS_PROTO)], [&proto_root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .emit_rerun_if_changed(false)
        .out_dir(&out_dir)
        .compile_fds(nacos)?;

    Ok(())
}
