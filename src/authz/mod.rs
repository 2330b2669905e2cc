//! May this caller do this? Attributes come from the request (see
//! [`attributes`]). Static rules answer first, with no round trip; what they
//! do not allow goes to a SubjectAccessReview (cached), one subresource at a
//! time in the mapper's order. The first allow wins; an unanswered review
//! ends the request — nothing is ever allowed by default.

pub mod attributes;
pub mod cache;
pub mod explain;
pub mod sar;
pub mod static_rules;

use std::sync::Arc;

use serde::Serialize;

use crate::authn::Identity;
use attributes::{Attributes, Subresource};
use cache::{DecisionCache, ReviewKey};
use sar::{ReviewError, Reviewer};
use static_rules::StaticRules;

/// Where a decision came from (logged and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A static rule from the config file, or no webhook to ask.
    Static,
    /// A cached SubjectAccessReview decision.
    Cache,
    /// A SubjectAccessReview sent for this request.
    Review,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Cache => "cache",
            Source::Review => "review",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        subresource: Subresource,
        source: Source,
    },
    Denied {
        source: Source,
    },
}

/// A review that could not be answered, for the subresource being checked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("authorization of nodes/{subresource} could not be checked: {error}")]
pub struct AuthzError {
    pub subresource: Subresource,
    pub error: Arc<ReviewError>,
}

/// SubjectAccessReviews behind their decision cache.
pub struct Webhook {
    pub reviewer: Reviewer,
    pub cache: DecisionCache,
}

pub struct Authorizer {
    static_rules: StaticRules,
    webhook: Option<Webhook>,
}

impl Authorizer {
    pub fn new(static_rules: StaticRules, webhook: Option<Webhook>) -> Self {
        Authorizer {
            static_rules,
            webhook,
        }
    }

    pub async fn authorize(
        &self,
        identity: &Arc<Identity>,
        attributes: &Attributes,
    ) -> Result<Decision, AuthzError> {
        for &subresource in attributes.subresources {
            if self
                .static_rules
                .allows(identity, attributes.verb, subresource)
            {
                return Ok(Decision::Allowed {
                    subresource,
                    source: Source::Static,
                });
            }
        }
        let Some(webhook) = &self.webhook else {
            return Ok(Decision::Denied {
                source: Source::Static,
            });
        };

        let mut denied_by = Source::Cache;
        for &subresource in attributes.subresources {
            let key = ReviewKey {
                identity: identity.clone(),
                verb: attributes.verb,
                subresource,
            };
            let review = || {
                webhook
                    .reviewer
                    .review(identity, attributes.verb, subresource)
            };
            let (allowed, source) = webhook
                .cache
                .decide(key, review)
                .await
                .map_err(|error| AuthzError { subresource, error })?;
            if allowed {
                return Ok(Decision::Allowed {
                    subresource,
                    source,
                });
            }
            if source == Source::Review {
                denied_by = Source::Review;
            }
        }
        Ok(Decision::Denied { source: denied_by })
    }
}
