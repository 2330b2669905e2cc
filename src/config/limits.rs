//! The `limits` section: protection against slow, greedy or hostile
//! clients (timers for every connection state, sizes and counts), validated
//! into [`Limits`], which `server/` reads.

use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::{ConfigError, GoDuration, declared_defaults, positive};

/// Flags and file keys of the limits section.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LimitsSettings {
    /// A TLS handshake that takes longer is dropped.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub tls_handshake_timeout: GoDuration,

    /// Once a request head has started arriving, it must be complete
    /// within this (slow-header protection); a new connection's first head
    /// (HTTP/1.1) or preface (HTTP/2) within this of the handshake, like
    /// Go's ReadHeaderTimeout and HTTP/2 preface timeout.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub request_header_timeout: GoDuration,

    /// A kept-alive HTTP/1.1 connection with no request, or an HTTP/2
    /// connection with no open stream (PINGs do not count), for this long
    /// is closed; at least the kubelet's 90s.
    #[arg(long, value_name = "DURATION", default_value = "90s")]
    pub idle_timeout: GoDuration,

    /// Largest request head accepted, like the kubelet's.
    #[arg(long, value_name = "BYTES", default_value = "1048576")]
    pub max_request_header_bytes: usize,

    /// Connections served at once; beyond it accepting pauses.
    #[arg(long, value_name = "N", default_value = "20000")]
    pub max_connections: usize,

    /// HTTP/2 streams per connection.
    #[arg(long, value_name = "N", default_value = "250")]
    pub http2_max_concurrent_streams: u32,

    /// HTTP/2 streams a client may reset before they are accepted, per
    /// connection; more closes the connection (CVE-2023-44487 "rapid
    /// reset").
    #[arg(long, value_name = "N", default_value = "20")]
    pub http2_max_reset_streams: usize,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        declared_defaults()
    }
}

/// Protection against slow, greedy or hostile clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub tls_handshake_timeout: Duration,
    pub request_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_request_header_bytes: usize,
    pub max_connections: usize,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_reset_streams: usize,
}

impl LimitsSettings {
    /// Errors: a zero timer, a head limit under 8 KiB, zero connections or
    /// zero HTTP/2 streams, each naming its flag.
    pub fn validate(&self) -> Result<Limits, ConfigError> {
        let tls_handshake_timeout = positive(self.tls_handshake_timeout, "tls-handshake-timeout")?;
        let request_header_timeout =
            positive(self.request_header_timeout, "request-header-timeout")?;
        let idle_timeout = positive(self.idle_timeout, "idle-timeout")?;
        if self.max_request_header_bytes < 8192 {
            return Err(ConfigError::invalid(
                "max-request-header-bytes",
                "must be at least 8192: smaller would refuse ordinary requests",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "max-connections",
                "must be at least 1",
            ));
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err(ConfigError::invalid(
                "http2-max-concurrent-streams",
                "must be at least 1",
            ));
        }
        Ok(Limits {
            tls_handshake_timeout,
            request_header_timeout,
            idle_timeout,
            max_request_header_bytes: self.max_request_header_bytes,
            max_connections: self.max_connections,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            http2_max_reset_streams: self.http2_max_reset_streams,
        })
    }
}
