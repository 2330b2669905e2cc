//! The `upstream` section: the kubelet behind the gateway, how its serving
//! certificate is verified and how the gateway proves itself to it,
//! validated into [`Upstream`].

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{ArgAction, Args};
use http::uri::{Authority, Scheme};
use serde::Deserialize;

use super::{ConfigError, declared_defaults};
use crate::tls::UpstreamTls;

/// Flags and file keys of the upstream section.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpstreamSettings {
    /// The kubelet: https://127.0.0.1:10250, or http:// for a loopback
    /// kubelet.
    #[arg(long, value_name = "URL", default_value = "https://127.0.0.1:10250")]
    pub upstream: String,

    /// CA bundle that signed the kubelet's serving certificate.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca_file: Option<PathBuf>,

    /// Client certificate the gateway presents to the kubelet.
    #[arg(long, value_name = "FILE")]
    pub upstream_client_cert_file: Option<PathBuf>,

    /// Key of --upstream-client-cert-file.
    #[arg(long, value_name = "FILE")]
    pub upstream_client_key_file: Option<PathBuf>,

    /// The name to verify the kubelet's serving certificate against, when it
    /// is not the upstream host (kubelet certificates name the node, not
    /// 127.0.0.1).
    #[arg(long, value_name = "NAME")]
    pub upstream_tls_server_name: Option<String>,

    /// File holding a bearer token the gateway presents to the kubelet.
    #[arg(long, value_name = "FILE")]
    pub upstream_token_file: Option<PathBuf>,

    /// Accept any kubelet serving certificate. Logged as a warning.
    #[arg(long, value_name = "BOOL", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true")]
    pub upstream_insecure_skip_tls_verify: bool,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        declared_defaults()
    }
}

/// The kubelet, validated.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    pub tls: UpstreamTls,
    pub token_file: Option<PathBuf>,
}

impl UpstreamSettings {
    /// Errors: a URL that is not `https://host:port` (or `http://` to
    /// loopback), an https kubelet with no way to verify it, conflicting
    /// verification settings, half a client certificate.
    pub fn validate(&self) -> Result<Upstream, ConfigError> {
        let (scheme, authority) =
            parse_upstream(&self.upstream).map_err(|p| ConfigError::invalid("upstream", p))?;

        let insecure = self.upstream_insecure_skip_tls_verify;
        if scheme == Scheme::HTTPS && !insecure && self.upstream_ca_file.is_none() {
            return Err(ConfigError::invalid(
                "upstream-ca-file",
                "required for an https upstream: the CA that signed the kubelet's serving certificate \
                 (or set --upstream-insecure-skip-tls-verify to accept any certificate)",
            ));
        }
        if insecure && self.upstream_ca_file.is_some() {
            return Err(ConfigError::invalid(
                "upstream-insecure-skip-tls-verify",
                "conflicts with --upstream-ca-file: give a CA to verify the kubelet, or skip verification, not both",
            ));
        }
        let server_name = self
            .upstream_tls_server_name
            .as_ref()
            .map(|name| {
                rustls_pki_types::ServerName::try_from(name.clone())
                    .map(|n| n.to_owned())
                    .map_err(|_| {
                        ConfigError::invalid(
                            "upstream-tls-server-name",
                            format!("{name:?} is not a DNS name or IP address"),
                        )
                    })
            })
            .transpose()?;
        if server_name.is_some() && insecure {
            return Err(ConfigError::invalid(
                "upstream-tls-server-name",
                "has no effect with --upstream-insecure-skip-tls-verify",
            ));
        }
        let client_cert = match (
            &self.upstream_client_cert_file,
            &self.upstream_client_key_file,
        ) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "upstream-client-key-file",
                    "required with --upstream-client-cert-file",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "upstream-client-cert-file",
                    "required with --upstream-client-key-file",
                ));
            }
        };
        Ok(Upstream {
            scheme,
            authority,
            tls: UpstreamTls {
                ca_file: self.upstream_ca_file.clone(),
                client_cert,
                insecure_skip_verify: insecure,
                server_name,
            },
            token_file: self.upstream_token_file.clone(),
        })
    }
}

/// `https://host:port` or, for a kubelet on this host only, `http://…`.
fn parse_upstream(url: &str) -> Result<(Scheme, Authority), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("{url:?} needs a scheme: https://HOST:PORT"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{url:?} needs a host: https://HOST:PORT"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{url:?} must not have a path or query: request paths are forwarded as they are"
        ));
    }
    if scheme == Scheme::HTTP {
        if !is_loopback_host(authority.host()) {
            return Err(format!(
                "{url:?}: plain http is only allowed to a kubelet on loopback (127.0.0.1, ::1, localhost)"
            ));
        }
    } else if scheme != Scheme::HTTPS {
        return Err(format!("{url:?}: the scheme must be https or http"));
    }
    Ok((scheme, authority))
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
