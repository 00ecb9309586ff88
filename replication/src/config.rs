//! Replication configuration (a section of the proxy's YAML config, `replication:`): serde with
//! `deny_unknown_fields`, errors naming the field path through `mip::config::{from_yaml, Validate}`.
//!
//! The types are defined in [`mip::daemon::replication`] (so that `mip::daemon::ProxyFile` can hold them) and
//! re-exported here.

pub use mip::daemon::replication::{DnsPeers, PeerSource, PeersConfig, ReplicationConfig, TlsFiles};
