//! Replication configuration: the optional `replication:` section of the proxy's YAML config ([`super::ProxyFile`]),
//! used by `mip-replication` (which re-exports it as `mip_replication::config`). serde with
//! `deny_unknown_fields`, errors naming the field path through [`crate::config::from_yaml`] and [`Validate`].
//! It lives here, not in `mip-replication`, because `mip-replication` depends on `mip`.
//!
//! ```yaml
//! replica_id: 1                              # optional in mip-proxy: derived from the node address
//! listen: 0.0.0.0:7443
//! peers:
//!   static: [10.0.0.2:7443, 10.0.0.3:7443]   # or: dns: { name: mip-peers.mip.svc, port: 7443 }
//! tls: { cert: /etc/mip/tls/tls.crt, key: /etc/mip/tls/tls.key, ca: /etc/mip/tls/ca.crt }
//! # insecure_plaintext: true                 # instead of tls, explicitly
//! queue_limit: 65536
//! digest_interval_ms: 5000
//! ```

use core::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use crate::config::{ConfigError, Validate};
use serde::{Deserialize, Serialize};

/// Where the peers are (the runtime form of [`PeersConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSource {
    /// A fixed list of `address:port` (the lab, standalone). The replica's own address may be in it: a replica
    /// that answers with our own id is skipped.
    Static(Vec<SocketAddr>),
    /// Every A record of `name` (a Kubernetes headless Service), re-resolved every `refresh_ms`.
    Dns(DnsPeers),
}

/// `peers:` in YAML: exactly one of `static: [addr:port, ...]` and `dns: {name, port, refresh_ms}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersConfig {
    /// A fixed list of peers.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_peers: Option<Vec<SocketAddr>>,
    /// Peers from DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsPeers>,
}

impl PeersConfig {
    /// A static list.
    pub fn fixed(peers: Vec<SocketAddr>) -> Self {
        PeersConfig {
            static_peers: Some(peers),
            dns: None,
        }
    }

    /// The configured source (a static list wins if both are set, which validation refuses).
    pub fn source(&self) -> PeerSource {
        match (&self.static_peers, &self.dns) {
            (Some(list), _) => PeerSource::Static(list.clone()),
            (None, Some(d)) => PeerSource::Dns(d.clone()),
            (None, None) => PeerSource::Static(Vec::new()),
        }
    }
}

/// Peers from the A records of a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsPeers {
    /// DNS name (a headless Service).
    pub name: String,
    /// Port of every peer.
    pub port: u16,
    /// Re-resolution period in milliseconds (default 10000).
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: u64,
}

fn default_refresh_ms() -> u64 {
    10_000
}

/// Certificate files for mTLS (PEM), re-read when they change. Every replica presents `cert` as server and as
/// client and accepts only peers whose certificate chains to `ca`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain of this replica.
    pub cert: PathBuf,
    /// Private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificate(s) that sign the peers' certificates.
    pub ca: PathBuf,
    /// Name to verify in the peers' server certificates; default: the peer's IP address (an IP SAN).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Replication settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// This replica's id, unique among the peers, nonzero (the last tie-break of conflicting writes). Optional:
    /// absent, `mip-proxy` derives it from its node address ([`ReplicationConfig::effective_replica_id`]), which
    /// is unique per replica by construction (one replica per node, its own address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<u32>,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Peers.
    pub peers: PeersConfig,
    /// mTLS certificate files; required unless `insecure_plaintext`.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Plaintext gRPC, only when set explicitly (tests, a lab without certificates).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Deltas queued per subscriber before it gets a fresh snapshot instead (default 65536).
    #[serde(default = "default_queue_limit")]
    pub queue_limit: usize,
    /// Period of the digest exchange (anti-entropy) in milliseconds (default 5000).
    #[serde(default = "default_digest_interval_ms")]
    pub digest_interval_ms: u64,
    /// A replica is caught up when every peer's snapshot arrived, or once this many milliseconds passed since
    /// start for the peers still unreachable (default 10000).
    #[serde(default = "default_catchup_timeout_ms")]
    pub catchup_timeout_ms: u64,
    /// Delay before reconnecting to a peer in milliseconds (default 500; doubled per failure up to 8×).
    #[serde(default = "default_reconnect_ms")]
    pub reconnect_ms: u64,
    /// Longest wait for subscribers to acknowledge the last deltas at shutdown, in milliseconds (default 3000).
    #[serde(default = "default_flush_timeout_ms")]
    pub flush_timeout_ms: u64,
    /// Records per snapshot or delta message (default 1024).
    #[serde(default = "default_chunk")]
    pub chunk_records: usize,
}

fn default_queue_limit() -> usize {
    65_536
}
fn default_digest_interval_ms() -> u64 {
    5_000
}
fn default_catchup_timeout_ms() -> u64 {
    10_000
}
fn default_reconnect_ms() -> u64 {
    500
}
fn default_flush_timeout_ms() -> u64 {
    3_000
}
fn default_chunk() -> usize {
    1024
}

impl ReplicationConfig {
    /// A plaintext configuration with defaults (tests, examples).
    pub fn plaintext(replica_id: u32, listen: SocketAddr, peers: Vec<SocketAddr>) -> Self {
        ReplicationConfig {
            replica_id: Some(replica_id),
            listen,
            peers: PeersConfig::fixed(peers),
            tls: None,
            insecure_plaintext: true,
            queue_limit: default_queue_limit(),
            digest_interval_ms: default_digest_interval_ms(),
            catchup_timeout_ms: default_catchup_timeout_ms(),
            reconnect_ms: default_reconnect_ms(),
            flush_timeout_ms: default_flush_timeout_ms(),
            chunk_records: default_chunk(),
        }
    }

    /// The replica id in use: `replica_id` if set, else the node address as a `u32` (nonzero for any unicast
    /// address; `10.10.0.11` → 168427531). `None` when neither is known (a configuration error, reported by
    /// [`super::ProxyFile`]'s validation under `replication.replica_id`).
    pub fn effective_replica_id(&self, node_address: Option<Ipv4Addr>) -> Option<u32> {
        self.replica_id.or(node_address.map(u32::from))
    }
}

impl Validate for ReplicationConfig {
    /// Checks the section on its own: an absent `replica_id` is accepted here (the proxy's file decides whether
    /// it can be derived).
    fn validate(&self) -> Vec<ConfigError> {
        let mut e = Vec::new();
        if self.replica_id == Some(0) {
            e.push(ConfigError::new("replica_id", "must be nonzero"));
        }
        match (&self.tls, self.insecure_plaintext) {
            (None, false) => e.push(ConfigError::new(
                "tls",
                "required (cert, key, ca) unless `insecure_plaintext: true` is set",
            )),
            (Some(_), true) => e.push(ConfigError::new("insecure_plaintext", "cannot be combined with `tls`")),
            _ => {}
        }
        if let Some(tls) = &self.tls {
            for (name, p) in [("cert", &tls.cert), ("key", &tls.key), ("ca", &tls.ca)] {
                if p.as_os_str().is_empty() {
                    e.push(ConfigError::new(format!("tls.{name}"), "empty path"));
                }
            }
            if tls.server_name.as_deref().is_some_and(str::is_empty) {
                e.push(ConfigError::new("tls.server_name", "empty name"));
            }
        }
        match (&self.peers.static_peers, &self.peers.dns) {
            (Some(_), Some(_)) => e.push(ConfigError::new("peers", "either `static` or `dns`, not both")),
            (None, None) => e.push(ConfigError::new("peers", "needs `static` or `dns`")),
            _ => {}
        }
        for (i, a) in self.peers.static_peers.iter().flatten().enumerate() {
            if a.port() == 0 || a.ip().is_unspecified() {
                e.push(ConfigError::new(
                    format!("peers.static[{i}]"),
                    "needs a specific address and a nonzero port",
                ));
            }
        }
        if let Some(d) = &self.peers.dns {
            if d.name.is_empty() {
                e.push(ConfigError::new("peers.dns.name", "empty name"));
            }
            if d.port == 0 {
                e.push(ConfigError::new("peers.dns.port", "must be nonzero"));
            }
            if d.refresh_ms < 100 {
                e.push(ConfigError::new("peers.dns.refresh_ms", "at least 100"));
            }
        }
        if self.queue_limit == 0 {
            e.push(ConfigError::new("queue_limit", "at least 1"));
        }
        if self.digest_interval_ms < 10 {
            e.push(ConfigError::new("digest_interval_ms", "at least 10"));
        }
        if self.reconnect_ms == 0 {
            e.push(ConfigError::new("reconnect_ms", "at least 1"));
        }
        if self.chunk_records == 0 || self.chunk_records > 65_536 {
            e.push(ConfigError::new("chunk_records", "between 1 and 65536"));
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml;

    #[test]
    fn parses_static_and_dns_peers() {
        let c: ReplicationConfig = from_yaml(
            "replica_id: 2\nlisten: 0.0.0.0:7443\npeers:\n  static: [10.0.0.1:7443, 10.0.0.3:7443]\n\
             tls: { cert: /c, key: /k, ca: /a }\n",
        )
        .unwrap();
        assert_eq!(
            c.peers.source(),
            PeerSource::Static(vec!["10.0.0.1:7443".parse().unwrap(), "10.0.0.3:7443".parse().unwrap()])
        );
        assert_eq!((c.queue_limit, c.digest_interval_ms), (65_536, 5_000));
        let c: ReplicationConfig = from_yaml(
            "replica_id: 2\nlisten: 0.0.0.0:7443\npeers: { dns: { name: peers.mip.svc, port: 7443 } }\n\
             insecure_plaintext: true\nqueue_limit: 10\n",
        )
        .unwrap();
        assert_eq!(
            c.peers.source(),
            PeerSource::Dns(DnsPeers {
                name: "peers.mip.svc".into(),
                port: 7443,
                refresh_ms: 10_000
            })
        );
        let err = from_yaml::<ReplicationConfig>(
            "replica_id: 1\nlisten: 0.0.0.0:1\npeers: { static: [], dns: { name: a, port: 1 } }\n\
             insecure_plaintext: true\n",
        )
        .unwrap_err();
        assert_eq!(err[0].field, "peers");
        assert!(c.insecure_plaintext && c.tls.is_none());
    }

    #[test]
    fn replica_id_is_optional_and_derived_from_the_node_address() {
        let c: ReplicationConfig =
            from_yaml("listen: 0.0.0.0:7443\npeers: { static: [] }\ninsecure_plaintext: true\n").unwrap();
        assert_eq!(c.replica_id, None);
        assert_eq!(c.effective_replica_id(None), None);
        let node = Ipv4Addr::new(10, 10, 0, 11);
        assert_eq!(c.effective_replica_id(Some(node)), Some(168_427_531));
        let explicit = ReplicationConfig {
            replica_id: Some(7),
            ..c.clone()
        };
        assert_eq!(
            explicit.effective_replica_id(Some(node)),
            Some(7),
            "an explicit id wins"
        );
        assert_eq!(ReplicationConfig::plaintext(3, c.listen, vec![]).replica_id, Some(3));
        // Absent, it is not written back either (the operator renders the file from these types).
        let yaml = serde_norway::to_string(&c).unwrap();
        assert!(!yaml.contains("replica_id"), "{yaml}");
    }

    #[test]
    fn errors_name_the_field() {
        let err = from_yaml::<ReplicationConfig>(
            "replica_id: 1\nlisten: 0.0.0.0:1\npeers: { static: [] }\ntls: { cert: /c, key: /k, ca: /a, x: 1 }\n",
        )
        .unwrap_err();
        assert_eq!(err[0].field, "tls.x");
        assert!(err[0].message.contains("unknown field `x`"), "{err:?}");
        let err = from_yaml::<ReplicationConfig>(
            "replica_id: 1\nlisten: 0.0.0.0:1\npeers: { static: [nope] }\ninsecure_plaintext: true\n",
        )
        .unwrap_err();
        assert_eq!(err[0].field, "peers.static[0]");
        let err = from_yaml::<ReplicationConfig>(
            "replica_id: 0\nlisten: 0.0.0.0:1\npeers: { dns: { name: '', port: 0 } }\nqueue_limit: 0\n",
        )
        .unwrap_err();
        let fields: Vec<&str> = err.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["replica_id", "tls", "peers.dns.name", "peers.dns.port", "queue_limit"]
        );
        let err = from_yaml::<ReplicationConfig>(
            "replica_id: 1\nlisten: 0.0.0.0:1\npeers: { static: [] }\ninsecure_plaintext: true\n\
             tls: { cert: /c, key: /k, ca: /a }\n",
        )
        .unwrap_err();
        assert_eq!(err[0].field, "insecure_plaintext");
    }
}
