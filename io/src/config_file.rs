//! Loading a daemon's YAML configuration file: read, parse with [`mip::config::from_yaml`], validate; every
//! problem is reported on its own line as ``PATH: field `peers[1].address`: what is wrong``.

use std::path::Path;

use mip::config::{self, Validate};
use serde::de::DeserializeOwned;

/// Reads and validates the configuration at `path`. The error names the path on every line.
pub fn load_config<T: DeserializeOwned + Validate>(path: impl AsRef<Path>) -> Result<T, String> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    config::from_yaml::<T>(&text).map_err(|errs| config::render_errors(&shown, &errs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mip::config::ConfigError;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        port: u16,
        peers: Vec<Peer>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Peer {
        address: std::net::Ipv4Addr,
        weight: u8,
    }

    impl Validate for Sample {
        fn validate(&self) -> Vec<ConfigError> {
            let mut e = Vec::new();
            if self.port == 0 {
                e.push(ConfigError::new("port", "must not be 0"));
            }
            for (i, p) in self.peers.iter().enumerate() {
                if p.weight == 0 {
                    e.push(ConfigError::new(format!("peers[{i}].weight"), "must be at least 1"));
                }
            }
            e
        }
    }

    fn load(text: &str) -> (String, Result<Sample, String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, text).unwrap();
        (path.display().to_string(), load_config::<Sample>(&path))
    }

    #[test]
    fn valid_file_loads() {
        let (_, r) = load("port: 434\npeers:\n  - {address: 10.0.0.1, weight: 1}\n");
        let s = r.unwrap();
        assert_eq!((s.port, s.peers.len(), s.peers[0].address.octets()[3]), (434, 1, 1));
    }

    #[test]
    fn every_validation_error_on_its_own_line() {
        let (p, r) = load("port: 0\npeers:\n  - {address: 10.0.0.1, weight: 0}\n  - {address: 10.0.0.2, weight: 0}\n");
        let e = r.unwrap_err();
        assert_eq!(
            e.lines().collect::<Vec<_>>(),
            vec![
                format!("{p}: field `port`: must not be 0"),
                format!("{p}: field `peers[0].weight`: must be at least 1"),
                format!("{p}: field `peers[1].weight`: must be at least 1"),
            ]
        );
    }

    #[test]
    fn parse_errors_name_the_field() {
        let (p, r) = load("port: 434\npeers:\n  - {address: 10.0.0.300, weight: 1}\n");
        let e = r.unwrap_err();
        assert!(e.starts_with(&format!("{p}: field `peers[0].address`: ")), "{e}");
        let (p, r) = load("port: 434\npeers: []\nextra: 1\n");
        let e = r.unwrap_err();
        assert!(e.starts_with(&format!("{p}: field `extra`: unknown field")), "{e}");
        let (p, r) = load("port: [\n");
        assert!(r.unwrap_err().starts_with(&format!("{p}: ")));
    }

    #[test]
    fn unreadable_file() {
        let e = load_config::<Sample>("/nonexistent/proxy.yaml").unwrap_err();
        assert!(e.starts_with("/nonexistent/proxy.yaml: cannot read: "), "{e}");
    }
}
