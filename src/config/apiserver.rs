//! The `apiserver` section: how the gateway reaches the apiserver for
//! SubjectAccessReviews and TokenReviews, and how long it waits, validated
//! into [`ApiserverConfig`] — only when authentication or authorization
//! needs the apiserver at all.

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use super::authn::WebhookAuthentication;
use super::authz::WebhookAuthorization;
use super::{ConfigError, GoDuration, declared_defaults, positive};

/// Flags and file keys of the apiserver section.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiserverSettings {
    /// kubeconfig for the apiserver (SubjectAccessReview, TokenReview);
    /// without it the in-cluster ServiceAccount is used.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Deadline for each SubjectAccessReview and TokenReview; past it the
    /// request is refused.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub review_timeout: GoDuration,
}

impl Default for ApiserverSettings {
    fn default() -> Self {
        declared_defaults()
    }
}

/// How the gateway uses the apiserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiserverConfig {
    /// `None`: the in-cluster ServiceAccount.
    pub kubeconfig: Option<PathBuf>,
    pub review_timeout: std::time::Duration,
    /// SubjectAccessReview after static rules (`--authorization-mode=Webhook`).
    pub authorization: Option<WebhookAuthorization>,
    /// TokenReview for bearer tokens (`--authentication-token-webhook`).
    pub token_authentication: Option<WebhookAuthentication>,
}

impl ApiserverSettings {
    /// `None` when neither review is on. Errors: a zero review timeout.
    pub fn validate(
        &self,
        authorization: Option<WebhookAuthorization>,
        token_authentication: Option<WebhookAuthentication>,
    ) -> Result<Option<ApiserverConfig>, ConfigError> {
        let review_timeout = positive(self.review_timeout, "review-timeout")?;
        Ok(
            (authorization.is_some() || token_authentication.is_some()).then(|| ApiserverConfig {
                kubeconfig: self.kubeconfig.clone(),
                review_timeout,
                authorization,
                token_authentication,
            }),
        )
    }
}
