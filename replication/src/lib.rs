//! Replication of the mip-proxy binding cache between N active replicas (issue 5; `docs/architecture.md`,
//! "Replication crates").
//!
//! Two layers:
//! * a **sans-IO core** (no tokio, no clock): [`Version`] and the [`Hlc`], [`Delta`] records and their conversion
//!   from/to the `mip` binding types, and the [`ReplicaStore`] (latest version per key, tombstones, digests,
//!   snapshot scans, the queue of remote changes for the daemon);
//! * the **transport** ([`transport`]): a [`Replicator`](transport::Replicator) running tonic/rustls on its own
//!   tokio runtime thread, with a non-blocking API for the daemon's synchronous event loop.
//!
//! Conflict rule: the larger [`Version`] wins (Identification, then HLC, then replica id), so any delivery order
//! and any duplication of deltas leads every replica to the same store.

pub mod config;
mod record;
mod store;
pub mod transport;
mod version;
pub mod wire;

pub use config::{DnsPeers, PeerSource, PeersConfig, ReplicationConfig, TlsFiles};
pub use record::{
    Applied, BindingRecord, BindingState, CareOf, Delta, INFINITE_REMAINING_MS, MnId, RemoteChange, ReplayRecord,
    ReplayValue,
};
pub use store::{BucketSet, Cursor, DEFAULT_TOMBSTONE_TTL, DIGEST_BUCKETS, Digest, RecordKey, ReplicaStore};
pub use version::{HLC_LOGICAL_BITS, Hlc, IdentOrder, Version, unix_ms};
