//! Registration authenticators (RFC 5944 §3.5) and mobility security associations.
//!
//! An authentication extension (MN-HA 32, MN-FA 33, FA-HA 34) protects, in order: the message from its Type
//! byte through the fixed part, every extension before it in full, and its own Type, Length and SPI (RFC 5944
//! §3.5.1; RFC 2002 covered Type and Length only, spec §12 item 11). [`covered`] returns exactly those bytes.
//!
//! Algorithms: HMAC-MD5 (RFC 2104; the default since RFC 3220) and the legacy RFC 2002 keyed-MD5 "prefix +
//! suffix" `MD5(key ‖ data ‖ key)`, per SA and off by default. SPIs 0–255 are reserved (RFC 5944 §1.6) and can
//! never name an SA: [`Spi::new`] refuses them. Authenticators are compared in constant time.

use core::fmt;

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::replay::ReplayStyle;
use crate::wire::{Extension, ExtensionBody};

/// Length of an (HMAC-)MD5 authenticator.
pub const AUTHENTICATOR_LEN: usize = 16;

/// Bytes of an authentication extension before its Authenticator: Type, Length, SPI.
pub const AUTH_EXT_HEADER_LEN: usize = 6;

/// A Security Parameter Index that may name an SA (256 and above; RFC 5944 §1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Spi(u32);

/// The SPI is in the reserved range 0–255.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedSpi(pub u32);

impl fmt::Display for ReservedSpi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SPI {} is reserved (0-255 must not be used, RFC 5944 §1.6)", self.0)
    }
}

impl std::error::Error for ReservedSpi {}

impl Spi {
    /// Lowest usable SPI.
    pub const MIN: u32 = 256;

    /// Accepts 256 and above.
    pub const fn new(v: u32) -> Result<Spi, ReservedSpi> {
        if v < Self::MIN { Err(ReservedSpi(v)) } else { Ok(Spi(v)) }
    }

    /// The numeric value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// Authentication algorithm of an SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// HMAC-MD5 (RFC 2104), mandatory since RFC 3220.
    #[default]
    HmacMd5,
    /// RFC 2002 keyed MD5 in prefix+suffix mode, for old peers only.
    KeyedMd5PrefixSuffix,
}

impl Algorithm {
    /// Configuration name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::HmacMd5 => "hmac-md5",
            Algorithm::KeyedMd5PrefixSuffix => "keyed-md5",
        }
    }
}

impl core::str::FromStr for Algorithm {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hmac-md5" => Ok(Algorithm::HmacMd5),
            "keyed-md5" | "keyed-md5-prefix-suffix" => Ok(Algorithm::KeyedMd5PrefixSuffix),
            _ => Err("unknown algorithm (expected hmac-md5 or keyed-md5)"),
        }
    }
}

/// Secret key material: wiped from memory when the last copy is dropped, never printed. Copies share one
/// allocation, so cloning a key (or an SA) on the registration path costs no allocation.
#[derive(Clone)]
pub struct Key(Arc<Zeroizing<Box<[u8]>>>);

impl Key {
    /// Wraps key bytes.
    pub fn new(bytes: &[u8]) -> Key {
        Key(Arc::new(Zeroizing::new(bytes.into())))
    }

    /// Parses hexadecimal (whitespace ignored); `None` for odd length or non-hex digits.
    pub fn from_hex(s: &str) -> Option<Key> {
        let digits: Zeroizing<Vec<u8>> = Zeroizing::new(s.bytes().filter(|b| !b.is_ascii_whitespace()).collect());
        if !digits.len().is_multiple_of(2) {
            return None;
        }
        let mut out = Zeroizing::new(Vec::with_capacity(digits.len() / 2));
        for pair in digits.chunks_exact(2) {
            let hi = (*pair.first()? as char).to_digit(16)?;
            let lo = (*pair.get(1)? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        }
        Some(Key::new(&out))
    }

    /// The key bytes (for computing authenticators only).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Key length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the key is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<{} bytes redacted>)", self.0.len())
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.0.len() == other.0.len() && bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for Key {}

/// Computes the 16-byte authenticator of `data` (the bytes [`covered`] returns).
pub fn compute(algorithm: Algorithm, key: &[u8], data: &[u8]) -> [u8; AUTHENTICATOR_LEN] {
    match algorithm {
        Algorithm::HmacMd5 => match <Hmac<Md5> as KeyInit>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(data);
                mac.finalize().into_bytes().into()
            }
            // HMAC accepts keys of any length; this branch exists only to avoid a panic path.
            Err(_) => [0; AUTHENTICATOR_LEN],
        },
        Algorithm::KeyedMd5PrefixSuffix => {
            let mut h = Md5::new();
            h.update(key);
            h.update(data);
            h.update(key);
            h.finalize().into()
        }
    }
}

/// Constant-time equality of an expected authenticator and a received one (any length).
pub fn authenticator_eq(expected: &[u8; AUTHENTICATOR_LEN], received: &[u8]) -> bool {
    received.len() == AUTHENTICATOR_LEN && bool::from(expected.as_slice().ct_eq(received))
}

/// The bytes an authentication extension at `ext_offset` protects: `msg[..ext_offset + 6]`.
pub fn covered(msg: &[u8], ext_offset: usize) -> Option<&[u8]> {
    msg.get(..ext_offset.checked_add(AUTH_EXT_HEADER_LEN)?)
}

/// Why an authentication extension did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthError {
    /// The extension is not an authentication extension.
    NotAuthentication,
    /// SPI in the reserved range 0–255.
    ReservedSpi,
    /// The extension's SPI is not the SA's.
    SpiMismatch,
    /// The authenticator is not 16 bytes.
    WrongLength,
    /// The authenticator does not match.
    Mismatch,
}

impl AuthError {
    /// Stable label for counters.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthError::NotAuthentication => "not_authentication",
            AuthError::ReservedSpi => "reserved_spi",
            AuthError::SpiMismatch => "spi_mismatch",
            AuthError::WrongLength => "authenticator_length",
            AuthError::Mismatch => "bad_authenticator",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::NotAuthentication => "not an authentication extension",
            AuthError::ReservedSpi => "reserved SPI (0-255)",
            AuthError::SpiMismatch => "SPI does not match the security association",
            AuthError::WrongLength => "authenticator is not 16 bytes",
            AuthError::Mismatch => "authenticator does not match",
        })
    }
}

impl std::error::Error for AuthError {}

/// A mobility security association (RFC 5944 §1.6, §5.1): SPI, algorithm, key and replay style.
#[derive(Clone)]
pub struct SecurityAssociation {
    spi: Spi,
    algorithm: Algorithm,
    key: Key,
    /// Replay protection used with this SA (RFC 5944 §5.7).
    pub replay: ReplayStyle,
    /// HMAC state after absorbing the inner key block, so each message costs two MD5 blocks less.
    hmac: Option<Hmac<Md5>>,
}

impl SecurityAssociation {
    /// Builds an SA. HMAC key setup is done once here, not per message.
    pub fn new(spi: Spi, algorithm: Algorithm, key: Key, replay: ReplayStyle) -> Self {
        let hmac = match algorithm {
            Algorithm::HmacMd5 => <Hmac<Md5> as KeyInit>::new_from_slice(key.expose()).ok(),
            Algorithm::KeyedMd5PrefixSuffix => None,
        };
        SecurityAssociation {
            spi,
            algorithm,
            key,
            replay,
            hmac,
        }
    }

    /// SPI.
    pub fn spi(&self) -> Spi {
        self.spi
    }
    /// Algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    /// Key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Authenticator over `data`.
    pub fn compute(&self, data: &[u8]) -> [u8; AUTHENTICATOR_LEN] {
        match &self.hmac {
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(data);
                mac.finalize().into_bytes().into()
            }
            None => compute(self.algorithm, self.key.expose(), data),
        }
    }

    /// Verifies authentication extension `ext` of the message `msg` it was parsed from.
    pub fn verify(&self, msg: &[u8], ext: &Extension<'_>) -> Result<(), AuthError> {
        let ExtensionBody::Auth { spi, authenticator, .. } = ext.body else {
            return Err(AuthError::NotAuthentication);
        };
        if spi < Spi::MIN {
            return Err(AuthError::ReservedSpi);
        }
        if spi != self.spi.get() {
            return Err(AuthError::SpiMismatch);
        }
        if authenticator.len() != AUTHENTICATOR_LEN {
            return Err(AuthError::WrongLength);
        }
        let data = covered(msg, ext.offset).ok_or(AuthError::WrongLength)?;
        if authenticator_eq(&self.compute(data), authenticator) {
            Ok(())
        } else {
            Err(AuthError::Mismatch)
        }
    }
}

impl fmt::Debug for SecurityAssociation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityAssociation")
            .field("spi", &self.spi)
            .field("algorithm", &self.algorithm)
            .field("key", &self.key)
            .field("replay", &self.replay)
            .finish()
    }
}

impl PartialEq for SecurityAssociation {
    fn eq(&self, o: &Self) -> bool {
        self.spi == o.spi && self.algorithm == o.algorithm && self.key == o.key && self.replay == o.replay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 2202 §2, HMAC-MD5 test cases 1–7 (spec §11.1, conformance case 24).
    #[test]
    fn case_24_rfc2202_hmac_md5() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 7] = [
            (vec![0x0b; 16], b"Hi There".to_vec(), "9294727a3638bb1c13f48ef8158bfc9d"),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "750c783e6ab0b503eaa86e310a5db738",
            ),
            (vec![0xaa; 16], vec![0xdd; 50], "56be34521d144c88dbb8c733f0e8b3f6"),
            ((1..=25).collect(), vec![0xcd; 50], "697eaf0aca3a3aea3a75164746ffaa79"),
            (
                vec![0x0c; 16],
                b"Test With Truncation".to_vec(),
                "56461ef2342edc00f9bab995690efd4c",
            ),
            (
                vec![0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd",
            ),
            (
                vec![0xaa; 80],
                b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data".to_vec(),
                "6f630fad67cda0ee1fb1f562db3aa53e",
            ),
        ];
        for (i, (key, data, want)) in cases.iter().enumerate() {
            assert_eq!(
                hex::encode(compute(Algorithm::HmacMd5, key, data)),
                *want,
                "RFC 2202 case {}",
                i + 1
            );
            // The SA's precomputed key state gives the same result.
            let sa = SecurityAssociation::new(
                Spi::new(256).unwrap(),
                Algorithm::HmacMd5,
                Key::new(key),
                ReplayStyle::default(),
            );
            assert_eq!(hex::encode(sa.compute(data)), *want);
        }
    }

    /// Spec §11.2: V1's 30 covered bytes.
    const V1_COVERED: &str = "012202580a0a0132c633640ac000024dec4e5a0012345678201400000100";

    #[test]
    fn case_16_hmac_md5_over_v1() {
        let key = h("000102030405060708090a0b0c0d0e0f");
        assert_eq!(
            hex::encode(compute(Algorithm::HmacMd5, &key, &h(V1_COVERED))),
            "869d33adee786a3be9b795c8cafb1d71"
        );
    }

    #[test]
    fn case_17_keyed_md5_prefix_suffix_over_v1() {
        let key = h("000102030405060708090a0b0c0d0e0f");
        assert_eq!(
            hex::encode(compute(Algorithm::KeyedMd5PrefixSuffix, &key, &h(V1_COVERED))),
            "c70b7b4de64f1ce3d251055f41ed603c"
        );
    }

    #[test]
    fn reserved_spis_are_refused() {
        for v in [0, 1, 255] {
            assert_eq!(Spi::new(v), Err(ReservedSpi(v)));
        }
        assert_eq!(Spi::new(256).unwrap().get(), 256);
    }

    #[test]
    fn key_hex_and_redaction() {
        let k = Key::from_hex("00 01 0a ff").unwrap();
        assert_eq!(k.expose(), &[0, 1, 10, 255]);
        assert_eq!(format!("{k:?}"), "Key(<4 bytes redacted>)");
        assert!(Key::from_hex("abc").is_none());
        assert!(Key::from_hex("zz").is_none());
    }

    #[test]
    fn constant_time_compare_rejects_other_lengths() {
        let a = [7u8; 16];
        assert!(authenticator_eq(&a, &[7u8; 16]));
        assert!(!authenticator_eq(&a, &[7u8; 15]));
        assert!(!authenticator_eq(&a, &[7u8; 17]));
        let mut b = a;
        b[15] ^= 1;
        assert!(!authenticator_eq(&a, &b));
    }
}
