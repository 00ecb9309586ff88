//! Protobuf messages and gRPC stubs of replica replication (`mip.replication.v1`, `proto/replication.proto`),
//! generated at build time by tonic-prost-build from Debian's `protoc` (`scripts/setup.sh` installs
//! `protobuf-compiler`). No generated file is checked in.
//!
//! The protocol (one `Sync` stream per subscriber/publisher pair: hello, snapshot, deltas, digests, repairs,
//! goodbye) is described at the top of the `.proto` file and in `docs/architecture.md` ("Replication crates").

/// Generated code of package `mip.replication.v1`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    rust_2018_idioms
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/mip.replication.v1.rs"));
}

pub use v1::*;

/// Version of the protocol spoken by this build (sent in `Hello.protocol`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Number of digest buckets.
pub const DIGEST_BUCKETS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn messages_round_trip() {
        let rec = Record {
            kind: Some(record::Kind::Binding(BindingRecord {
                home_address: 0x0a0a_0132,
                nai: Some("mn@example.com".into()),
                version: Some(Version {
                    identification: 7,
                    hlc: 9 << 16,
                    replica: 2,
                }),
                tombstone: false,
                bindings: vec![CareOfBinding {
                    care_of_address: 0xc000_0201,
                    tunnel: Some(TunnelEndpoint {
                        addr: 0xcb00_7105,
                        port: 40003,
                        encapsulation: Encapsulation::UdpIpip as i32,
                    }),
                    home_agent: 0x0a0a_0101,
                    identification: 7,
                    lifetime: 600,
                    remaining_ms: 599_000,
                    keepalive_interval: 30,
                    reverse_tunnel: true,
                    half_bound: false,
                }],
                tombstone_remaining_ms: 0,
            })),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        };
        let msg = PeerMessage {
            body: Some(peer_message::Body::Deltas(Records { records: vec![rec] })),
        };
        let bytes = msg.encode_to_vec();
        assert_eq!(PeerMessage::decode(bytes.as_slice()).unwrap(), msg);
    }

    #[test]
    fn service_stubs_exist() {
        // The client and server modules are generated (compile-time check).
        let _ = replication_client::ReplicationClient::<tonic::transport::Channel>::new;
        let _ = core::any::type_name::<replication_server::ReplicationServer<()>>();
    }
}
