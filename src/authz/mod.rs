//! May this caller do this? Attributes come from the request (see
//! [`attributes`]); the answer comes from static rules first.

pub mod attributes;
pub mod path;
pub mod static_rules;

use serde::Serialize;

use crate::authn::Identity;
use attributes::{Attributes, Subresource};
use static_rules::StaticRules;

/// Where a decision came from (logged and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A static rule from the config file.
    Static,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
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

pub struct Authorizer {
    static_rules: StaticRules,
}

impl Authorizer {
    pub fn new(static_rules: StaticRules) -> Self {
        Authorizer { static_rules }
    }

    /// Tries each subresource in order; the first allowed one wins.
    pub async fn authorize(&self, identity: &Identity, attributes: &Attributes) -> Decision {
        for &subresource in attributes.subresources {
            if self
                .static_rules
                .allows(identity, attributes.verb, subresource)
            {
                return Decision::Allowed {
                    subresource,
                    source: Source::Static,
                };
            }
        }
        Decision::Denied {
            source: Source::Static,
        }
    }
}
