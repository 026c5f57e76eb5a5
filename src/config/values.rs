//! Value types several sections share: algorithms, durations and address ranges.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Algorithms stsgate accepts on subject tokens (asymmetric only, RFC 8725 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum VerifyAlg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl VerifyAlg {
    pub(crate) const ALL: [VerifyAlg; 9] = [
        VerifyAlg::RS256,
        VerifyAlg::RS384,
        VerifyAlg::RS512,
        VerifyAlg::PS256,
        VerifyAlg::PS384,
        VerifyAlg::PS512,
        VerifyAlg::ES256,
        VerifyAlg::ES384,
        VerifyAlg::EdDSA,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            VerifyAlg::RS256 => "RS256",
            VerifyAlg::RS384 => "RS384",
            VerifyAlg::RS512 => "RS512",
            VerifyAlg::PS256 => "PS256",
            VerifyAlg::PS384 => "PS384",
            VerifyAlg::PS512 => "PS512",
            VerifyAlg::ES256 => "ES256",
            VerifyAlg::ES384 => "ES384",
            VerifyAlg::EdDSA => "EdDSA",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => VerifyAlg::RS256,
            "RS384" => VerifyAlg::RS384,
            "RS512" => VerifyAlg::RS512,
            "PS256" => VerifyAlg::PS256,
            "PS384" => VerifyAlg::PS384,
            "PS512" => VerifyAlg::PS512,
            "ES256" => VerifyAlg::ES256,
            "ES384" => VerifyAlg::ES384,
            "EdDSA" => VerifyAlg::EdDSA,
            _ => return None,
        })
    }
}

/// Algorithms stsgate signs its own tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum SignAlg {
    #[default]
    ES256,
    RS256,
    EdDSA,
}

impl SignAlg {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SignAlg::ES256 => "ES256",
            SignAlg::RS256 => "RS256",
            SignAlg::EdDSA => "EdDSA",
        }
    }
}

/// A duration written the human way in YAML: `30s`, `5m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// `n` seconds.
    pub(crate) const fn secs(n: u64) -> Dur {
        Dur(Duration::from_secs(n))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration like 30s or 5m: {e}")))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// An address range, `127.0.0.6/32` or `::1/128`; a bare address is itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNet(ipnet::IpNet);

impl PeerNet {
    /// Whether `ip` (an IPv4-mapped IPv6 address as its IPv4) is in the range.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl std::str::FromStr for PeerNet {
    type Err = String;

    fn from_str(s: &str) -> Result<PeerNet, String> {
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map(PeerNet)
            .map_err(|_| format!("{s:?} is not an address or a CIDR range like 127.0.0.6/32"))
    }
}

impl<'de> Deserialize<'de> for PeerNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for PeerNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
