//! Command-line flags and the optional YAML config file → one validated
//! [`Config`]. Flag names follow the kubelet's and kube-apiserver's; every
//! flag can also be set in the file under its camelCase name (`--tls-cert-file`
//! → `tlsCertFile`, all keys at the top level), and a flag wins over the
//! file. Anything invalid fails at start with the flag's name and what it
//! expects.
//!
//! One section per component (`node`, `serving`, `upstream`, `authn`,
//! `authz`, `apiserver`, `operations`, `limits`), each a struct whose
//! fields are the settings and whose `validate` returns that component's
//! own typed config. A setting is declared once, as a field:
//!
//! ```text
//! /// Help text (`--help`).                                   ← help
//! #[arg(long, value_name = "DURATION", default_value = "90s")] ← flag, default
//! pub idle_timeout: GoDuration,                               ← type; file key idleTimeout
//! ```
//!
//! The same declaration gives the flag (clap), the file key (serde, with
//! missing keys taking the declared default) and the default shown in
//! `--help`; the section's `validate` reads the field. A setting with no
//! default is an `Option`. Tests hold the README's flag table and
//! `config/kubelet-guard.yaml` to the declarations.
//!
//! Precedence, lowest first: the declared default, the file, the flag (or
//! its environment variable). The file is read over the defaults by serde;
//! the flags are laid over it by clap's own `update_from_arg_matches`, with
//! only the values the command line or environment gave.

mod apiserver;
mod authn;
mod authz;
mod limits;
mod node;
mod operations;
mod serving;
#[cfg(test)]
mod tests;
mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use http::uri::{Authority, Scheme};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use apiserver::{ApiserverConfig, ApiserverSettings};
pub use authn::{Authentication, AuthnSettings, WebhookAuthentication};
pub use authz::{
    Authorization, AuthorizationMode, AuthorizationSettings, AuthzSettings, WebhookAuthorization,
};
pub use limits::{Limits, LimitsSettings};
pub use node::{Node, NodeSettings};
pub use operations::{ListenSetting, LogFormat, Operations, OperationsSettings};
pub use serving::{
    CsrSettings, Listener, Serving, ServingCertSource, ServingCoverageConfig, ServingSettings,
};
pub use upstream::{Upstream, UpstreamSettings};

use crate::authz::attributes::StreamingAuthz;
use crate::authz::static_rules::StaticRules;
use crate::tls::{TlsOptions, UpstreamTls};

/// A duration written the kubelet's way (`2m`, `30s`, `1h30m`, `500ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl std::str::FromStr for GoDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(GoDuration)
            .map_err(|e| format!("{s:?} is not a duration like 30s, 2m or 1h30m: {e}"))
    }
}

impl Serialize for GoDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A setting that cannot be used, and how to fix it.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--{flag} ({key} in the config file): {problem}")]
    Invalid {
        flag: &'static str,
        /// The file key: the flag in camelCase, or a path such as
        /// `authorization.static`.
        key: String,
        problem: String,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("command line: {0}")]
    Flags(#[from] clap::Error),
}

impl ConfigError {
    /// The setting `--flag` (file key: its camelCase name) is unusable.
    pub fn invalid(flag: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            flag,
            key: file_key(flag),
            problem: problem.into(),
        }
    }
}

/// Every setting of `kubelet-guard serve`, as flags and as config-file
/// keys, section by section. [`Settings::default`] holds the declared
/// defaults; [`Settings::validate`] checks everything into a [`Config`].
#[derive(Debug, Clone, Default, Args)]
pub struct Settings {
    /// YAML file with any of these settings (camelCase keys) plus
    /// `authorization.static` rules. Flags override the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten, next_help_heading = "Node")]
    pub node: NodeSettings,

    #[command(flatten, next_help_heading = "Serving (listener, TLS, certificate)")]
    pub serving: ServingSettings,

    #[command(flatten, next_help_heading = "Upstream (the kubelet)")]
    pub upstream: UpstreamSettings,

    #[command(flatten, next_help_heading = "Authentication")]
    pub authn: AuthnSettings,

    #[command(flatten, next_help_heading = "Authorization")]
    pub authz: AuthzSettings,

    #[command(flatten, next_help_heading = "Apiserver")]
    pub apiserver: ApiserverSettings,

    #[command(flatten, next_help_heading = "Operations")]
    pub operations: OperationsSettings,

    #[command(flatten, next_help_heading = "Limits")]
    pub limits: LimitsSettings,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub listen: SocketAddr,
    pub serving: Serving,
    /// What the serving certificate is checked against (`tls::coverage`):
    /// --node-ip and --node-hostname, and what to do about a gap.
    pub serving_coverage: ServingCoverageConfig,
    pub client_ca_file: Option<PathBuf>,
    pub tls: TlsOptions,
    pub upstream_scheme: Scheme,
    pub upstream_authority: Authority,
    pub upstream_tls: UpstreamTls,
    pub upstream_token_file: Option<PathBuf>,
    pub streaming_authz: StreamingAuthz,
    pub anonymous_auth: bool,
    pub static_rules: StaticRules,
    /// The apiserver, when anything needs it.
    pub apiserver: Option<ApiserverConfig>,
    pub admin_listen: SocketAddr,
    /// The secure metrics listener, if on (see [`Operations`]).
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub shutdown_grace_period: Duration,
    pub limits: Limits,
}

impl Settings {
    /// The settings of a parsed `serve` command line: `--config` (if given)
    /// over the defaults, then every flag the command line or environment
    /// gave over that.
    pub fn load(flags: &ArgMatches) -> Result<Settings, ConfigError> {
        let base = match flags.get_one::<PathBuf>("config") {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        base.overlaid_by(flags)
    }

    /// The file's settings over the declared defaults.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let error = |message: String| ConfigError::File {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Settings::from_yaml(&text).map_err(error)
    }

    /// YAML text over the declared defaults. Errors: YAML that does not
    /// parse, a value of the wrong type, a key no setting has.
    ///
    /// Every section reads the whole document and takes its own keys, so
    /// each value is typed by the YAML parser straight into its field
    /// (serde's `flatten` would buffer values first and lose both the YAML
    /// scalar's string form and the error's line and column).
    pub fn from_yaml(text: &str) -> Result<Settings, String> {
        let keys: Option<BTreeMap<String, IgnoredAny>> =
            serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let known = Settings::file_keys();
        if let Some(key) = keys
            .iter()
            .flat_map(|keys| keys.keys())
            .find(|key| !known.contains(key))
        {
            return Err(format!(
                "unknown field `{key}`: keys are the flags' camelCase names (see config/kubelet-guard.yaml)"
            ));
        }
        fn section<T: serde::de::DeserializeOwned + Default>(text: &str) -> Result<T, String> {
            let section: Option<T> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
            Ok(section.unwrap_or_default())
        }
        Ok(Settings {
            config: None,
            node: section(text)?,
            serving: section(text)?,
            upstream: section(text)?,
            authn: section(text)?,
            authz: section(text)?,
            apiserver: section(text)?,
            operations: section(text)?,
            limits: section(text)?,
        })
    }

    /// Every key the file may have: each flag's camelCase name (but
    /// `config`), and `authorization` for the static rules.
    pub fn file_keys() -> Vec<String> {
        Settings::command()
            .get_arguments()
            .filter_map(|arg| arg.get_long())
            .filter(|flag| *flag != "config")
            .map(file_key)
            .chain(["authorization".to_owned()])
            .collect()
    }

    /// `flags` wins wherever the command line or the environment gave a
    /// value; a flag's declared default does not override the file.
    pub fn overlaid_by(mut self, flags: &ArgMatches) -> Result<Settings, ConfigError> {
        let mut given = flags.clone();
        for id in flags.ids() {
            if flags.value_source(id.as_str()) == Some(ValueSource::DefaultValue) {
                given.try_clear_id(id.as_str()).map_err(|e| {
                    ConfigError::Flags(clap::Error::raw(
                        clap::error::ErrorKind::InvalidValue,
                        e.to_string(),
                    ))
                })?;
            }
        }
        self.update_from_arg_matches(&given)?;
        Ok(self)
    }

    /// Checks every section, in the order a reader of the flags meets them.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let limits = self.limits.validate()?;
        let node = self.node.validate()?;
        let listener = self
            .serving
            .validate(&node, self.apiserver.kubeconfig.as_ref())?;
        let upstream = self.upstream.validate()?;
        let authorization = self.authz.validate()?;
        let authentication = self.authn.validate()?;
        let apiserver = self
            .apiserver
            .validate(authorization.webhook, authentication.token_webhook)?;
        let operations = self.operations.validate(
            apiserver
                .as_ref()
                .is_some_and(|a| a.authorization.is_some()),
        )?;
        Ok(Config {
            node_name: node.name,
            listen: listener.listen,
            serving: listener.serving,
            serving_coverage: listener.coverage,
            client_ca_file: listener.client_ca_file,
            tls: listener.tls,
            upstream_scheme: upstream.scheme,
            upstream_authority: upstream.authority,
            upstream_tls: upstream.tls,
            upstream_token_file: upstream.token_file,
            streaming_authz: authorization.streaming,
            anonymous_auth: authentication.anonymous,
            static_rules: authorization.static_rules,
            apiserver,
            admin_listen: operations.admin_listen,
            metrics_listen: operations.metrics_listen,
            log_format: operations.log_format,
            shutdown_grace_period: operations.shutdown_grace_period,
            limits,
        })
    }

    /// The `serve` command's flags on their own, e.g. for
    /// [`Settings::overlaid_by`] in a test.
    pub fn command() -> clap::Command {
        Settings::augment_args(clap::Command::new("serve"))
    }
}

/// A section with every setting at its declared default: the section's
/// flags parsed from an empty command line with environment variables
/// ignored (`NODE_NAME` is a flag's source, not a default).
fn declared_defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None));
    command
        .try_get_matches_from(["defaults"])
        .and_then(|matches| T::from_arg_matches(&matches))
        .expect("every declared default parses (tested)")
}

/// A duration that must not be zero.
fn positive(value: GoDuration, flag: &'static str) -> Result<Duration, ConfigError> {
    if value.0.is_zero() {
        Err(ConfigError::invalid(flag, "must be more than 0s"))
    } else {
        Ok(value.0)
    }
}

/// `tls-cert-file` → `tlsCertFile`: a flag's key in the config file (serde's
/// camelCase of the field name).
pub fn file_key(flag: &str) -> String {
    let mut key = String::with_capacity(flag.len());
    let mut upper = false;
    for c in flag.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            key.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            key.push(c);
        }
    }
    key
}
