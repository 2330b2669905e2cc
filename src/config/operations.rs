//! The `operations` section: the admin listener (health, readiness,
//! metrics), the log format and how long a shutdown waits for open
//! requests and streams.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{ConfigError, GoDuration, declared_defaults};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable.
    Text,
}

/// Flags and file keys of the operations section.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OperationsSettings {
    /// Plain-HTTP listener for /healthz, /livez, /readyz and /metrics.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:10251")]
    pub admin_listen_address: SocketAddr,

    /// json or text.
    #[arg(long, value_name = "FORMAT", default_value = "json")]
    pub log_format: LogFormat,

    /// On SIGTERM, how long in-flight requests and upgraded streams may run
    /// before they are closed.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub shutdown_grace_period: GoDuration,
}

impl Default for OperationsSettings {
    fn default() -> Self {
        declared_defaults()
    }
}

/// Operations, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operations {
    pub admin_listen: SocketAddr,
    pub log_format: LogFormat,
    pub shutdown_grace_period: Duration,
}

impl OperationsSettings {
    /// Nothing here can be invalid on its own (a zero grace period means
    /// "close at once"); the `Result` keeps every section's shape the same.
    pub fn validate(&self) -> Result<Operations, ConfigError> {
        Ok(Operations {
            admin_listen: self.admin_listen_address,
            log_format: self.log_format,
            shutdown_grace_period: self.shutdown_grace_period.0,
        })
    }
}
