//! The `operations` section: the admin listener (health, readiness,
//! metrics), the secure metrics listener, the log format and how long a
//! shutdown waits for open requests and streams.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Deserializer, Serialize};

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

/// A listener that can be switched off: `IP:PORT`, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenSetting {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for ListenSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(ListenSetting::Off);
        }
        s.parse()
            .map(ListenSetting::At)
            .map_err(|_| format!("{s:?} is neither IP:PORT nor off"))
    }
}

impl<'de> Deserialize<'de> for ListenSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Flags and file keys of the operations section.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OperationsSettings {
    /// Plain-HTTP listener for /healthz, /livez, /readyz and /metrics.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:10251")]
    pub admin_listen_address: SocketAddr,

    /// TLS listener for `/metrics` with the gateway's serving certificate,
    /// authentication and a SubjectAccessReview for the non-resource
    /// `get /metrics` (needs --authorization-mode=Webhook); `off` to
    /// disable. The manifests use `$(NODE_IP):10262`.
    #[arg(long, value_name = "IP:PORT|off", default_value = "off")]
    pub metrics_listen_address: ListenSetting,

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
    /// `None`: no secure metrics listener. Authorized with the webhook's
    /// SubjectAccessReviews and decision TTLs (validation ensures there is one).
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub shutdown_grace_period: Duration,
}

impl OperationsSettings {
    /// `webhook_authorization`: whether SubjectAccessReviews are on, which
    /// the secure metrics listener needs. Errors: a metrics listener
    /// without them. (A zero grace period means "close at once".)
    pub fn validate(&self, webhook_authorization: bool) -> Result<Operations, ConfigError> {
        let metrics_listen = match self.metrics_listen_address {
            ListenSetting::At(addr) if !webhook_authorization => {
                return Err(ConfigError::invalid(
                    "metrics-listen-address",
                    format!(
                        "{addr} needs --authorization-mode=Webhook: /metrics is authorized \
                         with a SubjectAccessReview (or set it to off)"
                    ),
                ));
            }
            ListenSetting::At(addr) => Some(addr),
            ListenSetting::Off => None,
        };
        Ok(Operations {
            admin_listen: self.admin_listen_address,
            metrics_listen,
            log_format: self.log_format,
            shutdown_grace_period: self.shutdown_grace_period.0,
        })
    }
}
