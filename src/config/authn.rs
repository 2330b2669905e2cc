//! The `authentication` section: who a caller is when it brings no client
//! certificate — a bearer token checked by TokenReview, or anonymous —
//! validated into [`Authentication`].

use clap::{ArgAction, Args};
use serde::Deserialize;

use super::{ConfigError, GoDuration, declared_defaults};

/// Flags and file keys of the authentication section.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthnSettings {
    /// Treat requests without credentials as system:anonymous (still
    /// authorized like any other).
    #[arg(long, value_name = "BOOL", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true")]
    pub anonymous_auth: bool,

    /// Authenticate bearer tokens with a TokenReview.
    #[arg(long, value_name = "BOOL", action = ArgAction::Set, num_args = 0..=1,
          default_value = "true", default_missing_value = "true")]
    pub authentication_token_webhook: bool,

    /// How long a TokenReview result (success or failure) is cached.
    #[arg(long, value_name = "DURATION", default_value = "2m")]
    pub authentication_token_webhook_cache_ttl: GoDuration,

    /// Comma-separated audiences a bearer token must be meant for
    /// [default: the apiserver's own].
    #[arg(long, value_name = "AUDIENCES", value_delimiter = ',')]
    pub auth_token_audiences: Vec<String>,
}

impl Default for AuthnSettings {
    fn default() -> Self {
        declared_defaults()
    }
}

/// Authentication, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication {
    pub anonymous: bool,
    /// TokenReview for bearer tokens (`--authentication-token-webhook`).
    pub token_webhook: Option<WebhookAuthentication>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAuthentication {
    pub cache_ttl: std::time::Duration,
    pub audiences: Vec<String>,
}

impl AuthnSettings {
    /// Nothing here can be invalid on its own; the `Result` keeps every
    /// section's shape the same.
    pub fn validate(&self) -> Result<Authentication, ConfigError> {
        Ok(Authentication {
            anonymous: self.anonymous_auth,
            token_webhook: self
                .authentication_token_webhook
                .then(|| WebhookAuthentication {
                    cache_ttl: self.authentication_token_webhook_cache_ttl.0,
                    audiences: self.auth_token_audiences.clone(),
                }),
        })
    }
}
