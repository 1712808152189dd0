//! Mast's etcd v3 API types.
//!
//! This crate holds the protocol buffer definitions of the etcd v3 client API
//! (under `proto/`, wire-compatible with etcd v3.5) and the Rust code
//! generated from them at build time:
//!
//! - [prost] message types for every request, response and record;
//! - [tonic] clients (`*_client`) and servers (`*_server`) for the services
//!   `etcdserverpb.KV`, `Watch`, `Lease`, `Cluster`, `Maintenance`, `Auth`,
//!   `v3lockpb.Lock` and `v3electionpb.Election`;
//! - [serde] impls (via pbjson) following the proto3 JSON mapping with the
//!   field names as written in the .proto files (`create_revision`, `TTL`,
//!   `peerURLs`), the way etcd's grpc-gateway renders them: bytes as base64,
//!   64-bit integers as strings, enums by name, default values omitted;
//! - [`FILE_DESCRIPTOR_SET`], the encoded descriptors, for gRPC reflection.
//!
//! The modules mirror the proto packages, so cross-package references in the
//! generated code (`super::mvccpb::KeyValue`) resolve.

/// Keys, values and watch events (`mvccpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// A lease as etcd's backend stores it (`leasepb`), read when restoring an etcd snapshot.
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod leasepb {
    include!(concat!(env!("OUT_DIR"), "/leasepb.rs"));
    include!(concat!(env!("OUT_DIR"), "/leasepb.serde.rs"));
}

/// Stored users, roles and permissions (`authpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// The etcd v3 client API: KV, Watch, Lease, Cluster, Maintenance and Auth
/// (`etcdserverpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// The server-side lock service (`v3lockpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// The server-side leader election service (`v3electionpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// Traffic between the members of a Mast cluster on the peer port (`mastraftpb`): Raft's
/// messages, snapshots, and client requests a follower hands to the leader.
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod mastraftpb {
    include!(concat!(env!("OUT_DIR"), "/mastraftpb.rs"));
}

/// The Nacos 2.x client protocol: `Payload` (metadata + a JSON body) over the `Request` and
/// `BiRequestStream` services (no proto package, as Nacos's).
#[allow(missing_docs, non_camel_case_types)]
pub mod nacospb {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// The encoded `google.protobuf.FileDescriptorSet` of all Mast's .proto files
/// (with source info), for serving gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mast_descriptor.bin"));
