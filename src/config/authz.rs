//! The `authorization` section: how a request's attributes are derived
//! (`--streaming-authz`), the static rules from the config file, and
//! whether and how long SubjectAccessReview decisions are cached,
//! validated into [`Authorization`].

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{ConfigError, GoDuration, declared_defaults};
use crate::authz::attributes::StreamingAuthz;
use crate::authz::static_rules::{StaticRuleSpec, StaticRules};

/// Who decides what static rules do not allow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum AuthorizationMode {
    /// Static rules, then a SubjectAccessReview to the apiserver (the
    /// kubelet's `Webhook` mode).
    #[default]
    #[value(name = "Webhook")]
    Webhook,
    /// Static rules only; no apiserver is contacted.
    #[value(name = "Static")]
    Static,
}

/// Flags and file keys of the authorization section.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthzSettings {
    /// strict: /exec, /attach, /run and /portForward need verb `create`
    /// whatever the method; kubelet: the kubelet's own mapping.
    #[arg(long, value_name = "MODE", default_value = "strict")]
    pub streaming_authz: StreamingAuthz,

    /// Webhook: static rules, then a SubjectAccessReview; Static: static
    /// rules only, no apiserver.
    #[arg(long, value_name = "MODE", default_value = "Webhook")]
    pub authorization_mode: AuthorizationMode,

    /// How long an allowed SubjectAccessReview decision is cached.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub authorization_webhook_cache_authorized_ttl: GoDuration,

    /// How long a denied SubjectAccessReview decision is cached.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub authorization_webhook_cache_unauthorized_ttl: GoDuration,

    /// Config file only: `static` rules checked before any review.
    #[arg(skip)]
    pub authorization: Option<AuthorizationSettings>,
}

impl Default for AuthzSettings {
    fn default() -> Self {
        declared_defaults()
    }
}

/// The file's `authorization:` block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationSettings {
    #[serde(default, rename = "static")]
    pub static_rules: Vec<StaticRuleSpec>,
}

/// Authorization, validated.
#[derive(Debug, Clone)]
pub struct Authorization {
    pub streaming: StreamingAuthz,
    pub static_rules: StaticRules,
    /// SubjectAccessReview after static rules (`--authorization-mode=Webhook`).
    pub webhook: Option<WebhookAuthorization>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAuthorization {
    pub authorized_ttl: std::time::Duration,
    pub unauthorized_ttl: std::time::Duration,
}

impl AuthzSettings {
    /// Errors: a static rule that does not parse, named by its index.
    pub fn validate(&self) -> Result<Authorization, ConfigError> {
        let specs = self
            .authorization
            .as_ref()
            .map(|a| a.static_rules.as_slice())
            .unwrap_or_default();
        let static_rules =
            StaticRules::from_specs(specs).map_err(|(index, e)| ConfigError::Invalid {
                flag: "config",
                key: "authorization.static".into(),
                problem: format!("rule {index}: {e}"),
            })?;
        Ok(Authorization {
            streaming: self.streaming_authz,
            static_rules,
            webhook: match self.authorization_mode {
                AuthorizationMode::Webhook => Some(WebhookAuthorization {
                    authorized_ttl: self.authorization_webhook_cache_authorized_ttl.0,
                    unauthorized_ttl: self.authorization_webhook_cache_unauthorized_ttl.0,
                }),
                AuthorizationMode::Static => None,
            },
        })
    }
}
