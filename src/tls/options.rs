//! TLS protocol settings shared by the serving side: minimum version and the
//! TLS 1.2 cipher suites, named as the kubelet and kube-apiserver name them.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::SupportedProtocolVersion;
use rustls::crypto::CryptoProvider;
use serde::{Deserialize, Serialize};

use super::TlsError;

/// The lowest TLS version the gateway accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "VersionTLS12")]
    Tls12,
    #[serde(rename = "VersionTLS13")]
    Tls13,
}

impl FromStr for TlsVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "VersionTLS12" => Ok(TlsVersion::Tls12),
            "VersionTLS13" => Ok(TlsVersion::Tls13),
            "VersionTLS10" | "VersionTLS11" => Err(format!(
                "{s} is not supported: TLS 1.0 and 1.1 are broken; use VersionTLS12 or VersionTLS13"
            )),
            _ => Err(format!("expected VersionTLS12 or VersionTLS13, got {s:?}")),
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "VersionTLS12",
            TlsVersion::Tls13 => "VersionTLS13",
        })
    }
}

/// Serving-side TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub min_version: TlsVersion,
    /// TLS 1.2 suites by their IANA/Go names; empty means rustls' defaults.
    /// As in Go, TLS 1.3 suites are not configurable and always on.
    pub cipher_suites: Vec<String>,
}

impl TlsOptions {
    pub fn protocol_versions(&self) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY_13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self.min_version {
            TlsVersion::Tls12 => &BOTH,
            TlsVersion::Tls13 => &ONLY_13,
        }
    }
}

/// The process-wide crypto provider (ring), narrowed to the configured
/// cipher suites.
pub fn crypto_provider(options: &TlsOptions) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !options.cipher_suites.is_empty() {
        let tls12_names = || {
            provider
                .cipher_suites
                .iter()
                .filter(|s| s.tls13().is_none())
                .filter_map(|s| s.suite().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for name in &options.cipher_suites {
            let known = provider
                .cipher_suites
                .iter()
                .any(|s| s.tls13().is_none() && suite_matches(s.suite(), name));
            if !known {
                return Err(TlsError::UnknownCipherSuite(name.clone(), tls12_names()));
            }
        }
        provider.cipher_suites.retain(|s| {
            s.tls13().is_some()
                || options
                    .cipher_suites
                    .iter()
                    .any(|name| suite_matches(s.suite(), name))
        });
    }
    Ok(Arc::new(provider))
}

/// Go spells the ChaCha20 suites both with and without the `_SHA256` suffix.
fn suite_matches(suite: rustls::CipherSuite, name: &str) -> bool {
    let Some(ours) = suite.as_str() else {
        return false;
    };
    ours == name || ours.strip_suffix("_SHA256") == Some(name) && name.ends_with("POLY1305")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_with_kubelet_names() {
        assert_eq!("VersionTLS12".parse(), Ok(TlsVersion::Tls12));
        assert_eq!("VersionTLS13".parse(), Ok(TlsVersion::Tls13));
        assert!(
            "VersionTLS10"
                .parse::<TlsVersion>()
                .unwrap_err()
                .contains("broken")
        );
        assert!("tls12".parse::<TlsVersion>().is_err());
    }

    #[test]
    fn cipher_suites_narrow_tls12_and_keep_tls13() {
        let options = TlsOptions {
            min_version: TlsVersion::Tls12,
            cipher_suites: vec![
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(),
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305".into(),
            ],
        };
        let provider = crypto_provider(&options).expect("known suites");
        let names: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_none())
            .filter_map(|s| s.suite().as_str())
            .collect();
        assert_eq!(
            names,
            [
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert_eq!(
            provider
                .cipher_suites
                .iter()
                .filter(|s| s.tls13().is_some())
                .count(),
            3
        );
    }

    #[test]
    fn weak_cipher_suites_are_refused_by_name() {
        let options = TlsOptions {
            cipher_suites: vec!["TLS_RSA_WITH_AES_128_CBC_SHA".into()],
            ..TlsOptions::default()
        };
        let err = crypto_provider(&options).unwrap_err().to_string();
        assert!(err.contains("TLS_RSA_WITH_AES_128_CBC_SHA"), "{err}");
        assert!(
            err.contains("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
            "{err}"
        );
    }
}
