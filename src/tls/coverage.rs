//! Does the serving certificate cover what the apiserver dials? The
//! apiserver verifies the gateway against `--kubelet-certificate-authority`
//! for the node address it picked (`--kubelet-preferred-address-types`):
//! an IP is checked against the IP SANs (no SNI, no CN fallback), a name
//! against the DNS SANs (Go `crypto/x509` `VerifyHostname`). A certificate
//! that misses one of `--node-ip` / `--node-hostname`, or is outside its
//! validity window, serves happily and fails every apiserver dial, so it is
//! checked at start and at every reload (file or CSR): a gap is a warn line
//! naming what is missing, a `/readyz` reason and the
//! `kubelet_guard_serving_certificate_gaps` metric — or, with
//! `--serving-cert-coverage=refuse`, a certificate that is not used.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use thiserror::Error;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::metrics::{Metrics, ServingGapLabels};

/// What to do about a gap.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CoveragePolicy {
    /// Serve anyway; warn, report on /readyz and in the metric.
    #[default]
    Warn,
    /// Do not use the certificate: the gateway does not start, and a
    /// reloaded file is refused (the previous certificate stays).
    Refuse,
}

/// A serving certificate that does not cover the node.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the serving certificate {}", describe(.missing_ips, .missing_dns_names, .window))]
pub struct CoverageGap {
    pub missing_ips: Vec<IpAddr>,
    pub missing_dns_names: Vec<String>,
    /// Outside its validity window when checked.
    pub window: Option<Window>,
}

/// Where `now` falls outside a certificate's validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Valid only from this time (seconds since the epoch).
    NotYetValid(i64),
    /// Expired at this time (seconds since the epoch).
    Expired(i64),
}

fn describe(ips: &[IpAddr], names: &[String], window: &Option<Window>) -> String {
    let mut parts = Vec::new();
    if !ips.is_empty() || !names.is_empty() {
        let missing: Vec<String> = ips
            .iter()
            .map(|ip| format!("IP:{ip}"))
            .chain(names.iter().map(|n| format!("DNS:{n}")))
            .collect();
        parts.push(format!(
            "does not cover {} (apiserver dials to it fail verification; add the SANs or fix --node-ip/--node-hostname)",
            missing.join(", ")
        ));
    }
    match window {
        Some(Window::NotYetValid(from)) => parts.push(format!(
            "is not valid before {from} (seconds since the epoch)"
        )),
        Some(Window::Expired(at)) => {
            parts.push(format!("expired at {at} (seconds since the epoch)"))
        }
        None => {}
    }
    parts.join(" and ")
}

/// The certificate could not be read to check it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the serving certificate cannot be parsed to check its SANs")]
pub struct Unreadable;

/// What `leaf_der` misses of `ips` and `dns_names` at `now` (seconds since
/// the epoch); `Ok(None)` when it covers them all and is valid. DNS names
/// match case-insensitively, a `*.` SAN matching exactly one leftmost label,
/// as Go's `VerifyHostname` matches them; IPs match IP SANs only.
pub fn check(
    leaf_der: &[u8],
    ips: &[IpAddr],
    dns_names: &[String],
    now: i64,
) -> Result<Option<CoverageGap>, Unreadable> {
    let (_, cert) = X509Certificate::from_der(leaf_der).map_err(|_| Unreadable)?;
    let mut san_ips = Vec::new();
    let mut san_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        san_ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        san_ips.push(IpAddr::from(v6));
                    }
                }
                GeneralName::DNSName(name) => san_names.push(name.to_ascii_lowercase()),
                _ => {}
            }
        }
    }
    let missing_ips: Vec<IpAddr> = ips
        .iter()
        .filter(|ip| !san_ips.iter().any(|san| same_ip(san, ip)))
        .copied()
        .collect();
    let missing_dns_names: Vec<String> = dns_names
        .iter()
        .filter(|name| !san_names.iter().any(|san| dns_matches(san, name)))
        .cloned()
        .collect();
    let validity = cert.validity();
    let (from, until) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let window = if now < from {
        Some(Window::NotYetValid(from))
    } else if now >= until {
        Some(Window::Expired(until))
    } else {
        None
    };
    let gap = CoverageGap {
        missing_ips,
        missing_dns_names,
        window,
    };
    let covered = gap.missing_ips.is_empty() && gap.missing_dns_names.is_empty();
    Ok((!covered || gap.window.is_some()).then_some(gap))
}

/// Go compares IPs in their 16-byte form: `10.0.0.5` and `::ffff:10.0.0.5`
/// are the same address.
fn same_ip(a: &IpAddr, b: &IpAddr) -> bool {
    let sixteen = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => *v6,
    };
    sixteen(a) == sixteen(b)
}

/// `san` (lowercase) covers `host`: equal ignoring case and a trailing dot,
/// or a `*.rest` wildcard standing for exactly one label.
fn dns_matches(san: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let san = san.trim_end_matches('.');
    if san == host {
        return true;
    }
    match (san.strip_prefix("*."), host.split_once('.')) {
        (Some(rest), Some((label, host_rest))) => !label.is_empty() && rest == host_rest,
        _ => false,
    }
}

/// Checks every serving certificate the gateway is about to use, and keeps
/// the last result for `/readyz`.
pub struct ServingCoverage {
    ips: Vec<IpAddr>,
    dns_names: Vec<String>,
    policy: CoveragePolicy,
    metrics: Arc<Metrics>,
    /// The last certificate's missing SANs and validity window, so that
    /// readiness sees the window move without a reload.
    last: Mutex<Option<Checked>>,
}

#[derive(Debug, Clone)]
struct Checked {
    missing: CoverageGap,
    not_before: i64,
}

impl ServingCoverage {
    /// `ips` and `dns_names`: the addresses the apiserver may dial
    /// (`--node-ip`, `--node-hostname`); empty means only the validity
    /// window is checked.
    pub fn new(
        ips: Vec<IpAddr>,
        dns_names: Vec<String>,
        policy: CoveragePolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        ServingCoverage {
            ips,
            dns_names,
            policy,
            metrics,
            last: Mutex::new(None),
        }
    }

    /// Checks the leaf about to be served. Warns and records any gap; an
    /// error only with `--serving-cert-coverage=refuse` (or an unparsable
    /// certificate), and then the certificate must not be used.
    pub fn admit(&self, leaf_der: &[u8]) -> Result<(), String> {
        let now = now();
        let gap = check(leaf_der, &self.ips, &self.dns_names, now).map_err(|e| e.to_string())?;
        let (_, cert) = X509Certificate::from_der(leaf_der).map_err(|_| Unreadable.to_string())?;
        let not_before = cert.validity().not_before.timestamp();
        let gap = gap.unwrap_or(CoverageGap {
            missing_ips: Vec::new(),
            missing_dns_names: Vec::new(),
            window: None,
        });
        let has_gap = !gap.missing_ips.is_empty()
            || !gap.missing_dns_names.is_empty()
            || gap.window.is_some();
        if has_gap && self.policy == CoveragePolicy::Refuse {
            // Nothing recorded: the certificate in use is still the old one.
            tracing::error!(problem = %gap, "serving certificate refused (--serving-cert-coverage=refuse)");
            return Err(format!("{gap} (--serving-cert-coverage=refuse)"));
        }
        let gauge = |name: &'static str, value: usize| {
            self.metrics
                .serving_certificate_gaps
                .get_or_create(&ServingGapLabels { gap: name })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        gauge("missing_ip_san", gap.missing_ips.len());
        gauge("missing_dns_san", gap.missing_dns_names.len());
        gauge(
            "not_yet_valid",
            usize::from(matches!(gap.window, Some(Window::NotYetValid(_)))),
        );
        gauge(
            "expired",
            usize::from(matches!(gap.window, Some(Window::Expired(_)))),
        );
        if has_gap {
            let missing: Vec<String> = gap
                .missing_ips
                .iter()
                .map(|ip| format!("IP:{ip}"))
                .chain(gap.missing_dns_names.iter().map(|n| format!("DNS:{n}")))
                .collect();
            tracing::warn!(
                missing_sans = %missing.join(","),
                problem = %gap,
                "serving certificate does not cover this node"
            );
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Checked {
            missing: CoverageGap {
                window: None,
                ..gap
            },
            not_before,
        });
        Ok(())
    }

    /// The gap of the certificate in use now, for `/readyz`; `None` when
    /// it covers the node (or none was checked yet). Expiry is left out:
    /// readiness reports it from the certificate in use already.
    pub fn problem(&self) -> Option<String> {
        let last = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let window = (now() < last.not_before).then_some(Window::NotYetValid(last.not_before));
        let gap = CoverageGap {
            window,
            ..last.missing
        };
        (!gap.missing_ips.is_empty() || !gap.missing_dns_names.is_empty() || gap.window.is_some())
            .then(|| gap.to_string())
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{Authority, LeafSpec, Usage};

    fn leaf(ips: &[&str], names: &[&str]) -> Vec<u8> {
        let ca = Authority::new("test-ca").unwrap();
        let mut spec = LeafSpec::new("system:node:n", &["system:nodes"], Usage::Server);
        spec.ips = ips.iter().map(|i| i.parse().unwrap()).collect();
        spec.dns_names = names.iter().map(|n| n.to_string()).collect();
        let issued = ca.issue(&spec).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes());
        der.unwrap().to_vec()
    }

    use rustls_pki_types::pem::PemObject as _;

    #[test]
    fn the_issue_14_certificate_misses_the_node_ip() {
        let der = leaf(&[], &["node-a"]);
        let gap = check(&der, &["10.0.0.5".parse().unwrap()], &[], now())
            .unwrap()
            .expect("a gap");
        assert_eq!(gap.missing_ips, ["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert!(gap.to_string().contains("IP:10.0.0.5"), "{gap}");
    }

    #[test]
    fn sans_match_as_go_matches_them() {
        let der = leaf(
            &["10.0.0.5", "fd00::5"],
            &["Node-A.example", "*.nodes.example"],
        );
        let ok = |ips: &[&str], names: &[&str]| {
            let ips: Vec<IpAddr> = ips.iter().map(|i| i.parse().unwrap()).collect();
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            check(&der, &ips, &names, now()).unwrap().is_none()
        };
        assert!(ok(&["10.0.0.5", "::ffff:10.0.0.5", "fd00::5"], &[]));
        assert!(ok(
            &[],
            &["node-a.example", "NODE-A.EXAMPLE.", "b.nodes.example"]
        ));
        assert!(!ok(&["10.0.0.6"], &[]));
        assert!(!ok(&[], &["node-a"]), "no suffix matching");
        assert!(!ok(&[], &["a.b.nodes.example"]), "a wildcard is one label");
        assert!(!ok(&[], &["nodes.example"]), "a wildcard is not empty");
    }

    #[test]
    fn the_validity_window_is_checked() {
        let der = leaf(&["10.0.0.5"], &[]);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let from = cert.validity().not_before.timestamp();
        let until = cert.validity().not_after.timestamp();
        let ips = ["10.0.0.5".parse().unwrap()];
        assert_eq!(
            check(&der, &ips, &[], from - 1).unwrap().unwrap().window,
            Some(Window::NotYetValid(from))
        );
        assert_eq!(
            check(&der, &ips, &[], until).unwrap().unwrap().window,
            Some(Window::Expired(until))
        );
        assert_eq!(check(&der, &ips, &[], from).unwrap(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(check(b"not a certificate", &[], &[], 0), Err(Unreadable));
    }
}
