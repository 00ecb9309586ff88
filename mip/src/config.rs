//! Configuration shared by the roles: YAML loading with errors that name the offending field, IPv4 prefixes,
//! and the security-association ("keys") file.
//!
//! Keys never live in a role's main configuration: they come from a separate keys file (a Kubernetes Secret in
//! production), so the main file can be shown, logged and diffed. [`KeysFile::to_keystore`] turns one into a
//! [`KeyStore`].

use core::fmt;
use core::net::Ipv4Addr;
use core::str::FromStr;
use core::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::auth::{Algorithm, Key, SecurityAssociation, Spi};
use crate::keystore::KeyStore;
use crate::replay::ReplayStyle;

/// A configuration problem: which field (a path like `home_agents[1].address`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the field, `.`-separated with `[i]` for list items; empty for the document itself.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error with `prefix` in front of its field path (for nested sections).
    #[must_use]
    pub fn within(self, prefix: &str) -> Self {
        let field = match (prefix.is_empty(), self.field.is_empty()) {
            (true, _) => self.field,
            (false, true) => prefix.to_string(),
            (false, false) if self.field.starts_with('[') => format!("{prefix}{}", self.field),
            (false, false) => format!("{prefix}.{}", self.field),
        };
        ConfigError { field, ..self }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "field `{}`: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A configuration that can check itself beyond what its types enforce.
pub trait Validate {
    /// Every problem found, each naming its field. Empty when valid.
    fn validate(&self) -> Vec<ConfigError>;
}

/// Parses YAML into `T` and validates it. Syntax and type errors name the field path (and line/column);
/// validation errors are all reported, not just the first.
pub fn from_yaml<T: DeserializeOwned + Validate>(text: &str) -> Result<T, Vec<ConfigError>> {
    let de = serde_norway::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        vec![ConfigError::new(field, e.into_inner().to_string())]
    })?;
    let errors = value.validate();
    if errors.is_empty() { Ok(value) } else { Err(errors) }
}

/// Renders a list of errors one per line, each prefixed with `source` (usually the file name).
pub fn render_errors(source: &str, errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("{source}: {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// An IPv4 prefix, written `a.b.c.d/len` (a bare address means `/32`). Host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    addr: Ipv4Addr,
    len: u8,
}

impl Prefix {
    /// A prefix; `None` if `len` > 32 or host bits are set.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Prefix> {
        if len > 32 {
            return None;
        }
        let p = Prefix { addr, len };
        (addr.to_bits() & !p.mask() == 0).then_some(p)
    }

    fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }

    /// Whether `a` is inside the prefix.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        a.to_bits() & self.mask() == self.addr.to_bits()
    }

    /// Network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is the zero-length prefix (matches everything).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IPv4 prefix (a.b.c.d/len)"))?;
        let len: u8 = l
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: prefix length must be 0-32"))?;
        Prefix::new(addr, len).ok_or_else(|| format!("`{s}`: length above 32 or host bits set"))
    }
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Replay protection of an SA, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReplayConfig {
    /// Timestamps (RFC 5944 §5.7.1), the default.
    #[default]
    Timestamp,
    /// Nonces (RFC 5944 §5.7.2).
    Nonce,
}

fn default_tolerance() -> u16 {
    7
}

fn is_default_tolerance(v: &u16) -> bool {
    *v == default_tolerance()
}

/// One mobility security association in a keys file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaEntry {
    /// The mobile node's home address (MN-HA SAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_address: Option<Ipv4Addr>,
    /// The mobile node's NAI (MN-HA SAs of nodes that may register with home address 0.0.0.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nai: Option<String>,
    /// An agent's address (FA-HA SAs; MN-FA SAs at a mobile node), found with [`KeyStore::agent`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Ipv4Addr>,
    /// Security Parameter Index, 256 or above.
    pub spi: u32,
    /// `hmac-md5` (default) or `keyed-md5` (RFC 2002 prefix+suffix, legacy peers only).
    #[serde(default, with = "algorithm_serde")]
    pub algorithm: Algorithm,
    /// The key, hexadecimal; at least 16 bytes (RFC 5944 §5.1: 128-bit keys).
    pub key: String,
    /// Replay protection: `timestamp` (default) or `nonce`.
    #[serde(default)]
    pub replay: ReplayConfig,
    /// Timestamp tolerance in seconds (default 7; RFC 5944 §5.7.1 says it SHOULD exceed 3).
    #[serde(default = "default_tolerance", skip_serializing_if = "is_default_tolerance")]
    pub timestamp_tolerance_secs: u16,
}

mod algorithm_serde {
    use super::Algorithm;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Algorithm, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Algorithm, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Shortest key accepted (RFC 5944 §5.1: HMAC-MD5 with 128-bit keys).
pub const MIN_KEY_LEN: usize = 16;

impl SaEntry {
    /// The SA this entry describes, or the problems with it (fields relative to the entry).
    pub fn security_association(&self) -> Result<SecurityAssociation, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let spi = Spi::new(self.spi)
            .map_err(|e| errors.push(ConfigError::new("spi", e.to_string())))
            .ok();
        let key = match Key::from_hex(&self.key) {
            None => {
                errors.push(ConfigError::new(
                    "key",
                    "not hexadecimal (an even number of 0-9a-f digits)",
                ));
                None
            }
            Some(k) if k.len() < MIN_KEY_LEN => {
                errors.push(ConfigError::new(
                    "key",
                    format!("{} bytes; at least {MIN_KEY_LEN} are required (RFC 5944 §5.1)", k.len()),
                ));
                None
            }
            Some(k) => Some(k),
        };
        if self.home_address.is_none() && self.nai.is_none() && self.peer.is_none() {
            errors.push(ConfigError::new("", "needs at least one of home_address, nai, peer"));
        }
        if self.nai.as_deref().is_some_and(|n| n.is_empty() || n.len() > 255) {
            errors.push(ConfigError::new("nai", "must be 1-255 bytes"));
        }
        if self.replay == ReplayConfig::Timestamp && self.timestamp_tolerance_secs == 0 {
            errors.push(ConfigError::new(
                "timestamp_tolerance_secs",
                "must be at least 1 (RFC 5944 suggests > 3)",
            ));
        }
        match (spi, key) {
            (Some(spi), Some(key)) if errors.is_empty() => {
                let replay = match self.replay {
                    ReplayConfig::Timestamp => ReplayStyle::Timestamp {
                        tolerance: Duration::from_secs(u64::from(self.timestamp_tolerance_secs)),
                    },
                    ReplayConfig::Nonce => ReplayStyle::Nonce,
                };
                Ok(SecurityAssociation::new(spi, self.algorithm, key, replay))
            }
            _ => Err(errors),
        }
    }
}

/// A keys file: the security associations a node holds.
///
/// ```yaml
/// security_associations:
///   - home_address: 10.10.1.50
///     nai: joe@example.com
///     spi: 256
///     key: 000102030405060708090a0b0c0d0e0f
///     replay: timestamp
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// The SAs.
    #[serde(default)]
    pub security_associations: Vec<SaEntry>,
}

impl Validate for KeysFile {
    fn validate(&self) -> Vec<ConfigError> {
        match self.to_keystore() {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }
}

impl KeysFile {
    /// Builds the key store: an entry with a home address is found by (home address, SPI), with an NAI by
    /// (NAI, SPI), with a peer (an agent) by [`KeyStore::agent`]. Duplicates are errors.
    pub fn to_keystore(&self) -> Result<KeyStore, Vec<ConfigError>> {
        let mut ks = KeyStore::new();
        let mut errors = Vec::new();
        for (i, entry) in self.security_associations.iter().enumerate() {
            let at = format!("security_associations[{i}]");
            let sa = match entry.security_association() {
                Ok(sa) => sa,
                Err(es) => {
                    errors.extend(es.into_iter().map(|e| e.within(&at)));
                    continue;
                }
            };
            if let Some(home) = entry.home_address
                && let Err(e) = ks.insert_peer(home, sa.clone())
            {
                errors.push(ConfigError::new(at.clone(), e.to_string()));
            }
            if let Some(agent) = entry.peer
                && let Err(e) = ks.insert_agent(agent, sa.clone())
            {
                errors.push(ConfigError::new(at.clone(), e.to_string()));
            }
            if let Some(nai) = &entry.nai
                && let Err(e) = ks.insert_nai(nai, sa.clone())
            {
                errors.push(ConfigError::new(at.clone(), e.to_string()));
            }
        }
        if errors.is_empty() { Ok(ks) } else { Err(errors) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let p: Prefix = "10.10.0.0/16".parse().unwrap();
        assert!(p.contains(Ipv4Addr::new(10, 10, 200, 1)));
        assert!(!p.contains(Ipv4Addr::new(10, 11, 0, 1)));
        assert_eq!("10.0.0.1".parse::<Prefix>().unwrap().len(), 32);
        assert!("0.0.0.0/0".parse::<Prefix>().unwrap().contains(Ipv4Addr::BROADCAST));
        assert!("10.10.0.1/16".parse::<Prefix>().is_err());
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("ten/8".parse::<Prefix>().is_err());
    }

    #[test]
    fn keys_file_loads_and_indexes() {
        let text = "security_associations:\n  - home_address: 10.10.1.50\n    nai: joe@example.com\n    spi: 256\n    key: 000102030405060708090a0b0c0d0e0f\n  - peer: 192.0.2.1\n    spi: 0x200\n    algorithm: keyed-md5\n    key: 0f0e0d0c0b0a09080706050403020100\n    replay: nonce\n";
        let k: KeysFile = from_yaml(text).unwrap();
        let ks = k.to_keystore().unwrap();
        assert!(ks.get(Ipv4Addr::new(10, 10, 1, 50), 256).is_some());
        assert!(ks.get_by_nai(b"joe@example.com", 256).is_some());
        let fa = ks.agent(Ipv4Addr::new(192, 0, 2, 1), 0x200).unwrap();
        assert_eq!(fa.algorithm(), Algorithm::KeyedMd5PrefixSuffix);
        assert_eq!(fa.replay, ReplayStyle::Nonce);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = "security_associations:\n  - home_address: 10.10.1.50\n    spi: 255\n    key: 0001\n";
        let errs = from_yaml::<KeysFile>(bad).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["security_associations[0].spi", "security_associations[0].key"]
        );
        let typo = "security_associations:\n  - home_adress: 10.10.1.50\n    spi: 256\n    key: 00\n";
        let errs = from_yaml::<KeysFile>(typo).unwrap_err();
        assert_eq!(errs[0].field, "security_associations[0].home_adress");
        assert!(errs[0].message.contains("unknown field"), "{}", errs[0].message);
        let wrong_type = "security_associations:\n  - home_address: 10.10.1.500\n    spi: 256\n    key: 00\n";
        let errs = from_yaml::<KeysFile>(wrong_type).unwrap_err();
        assert_eq!(errs[0].field, "security_associations[0].home_address");
        let dup = "security_associations:\n  - {home_address: 10.0.0.1, spi: 256, key: 000102030405060708090a0b0c0d0e0f}\n  - {home_address: 10.0.0.1, spi: 256, key: 000102030405060708090a0b0c0d0e0f}\n";
        let errs = from_yaml::<KeysFile>(dup).unwrap_err();
        assert_eq!(errs[0].field, "security_associations[1]");
    }

    #[test]
    fn within_prefixes_paths() {
        assert_eq!(ConfigError::new("spi", "x").within("a[0]").field, "a[0].spi");
        assert_eq!(ConfigError::new("", "x").within("a").field, "a");
        assert_eq!(ConfigError::new("[2]", "x").within("list").field, "list[2]");
    }
}
