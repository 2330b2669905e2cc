//! The request's method, as the verb it asks for: the kubelet's mapping
//! (`pkg/kubelet/server/auth.go`, `GetRequestAttributes`). A method with no
//! verb is refused (405) at admission.

use std::fmt;

use http::Method;
use serde::Serialize;

/// The API verb a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Get,
    Create,
    Update,
    Patch,
    Delete,
}

impl Verb {
    pub const ALL: [Verb; 5] = [
        Verb::Get,
        Verb::Create,
        Verb::Update,
        Verb::Patch,
        Verb::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }

    /// The kubelet's method → verb mapping. HEAD, which the kubelet leaves
    /// with an empty verb, is a read, so it is `get` here. Every other method
    /// has no verb and is refused before authorization.
    pub fn for_method(method: &Method) -> Option<Verb> {
        match *method {
            Method::GET | Method::HEAD => Some(Verb::Get),
            Method::POST => Some(Verb::Create),
            Method::PUT => Some(Verb::Update),
            Method::PATCH => Some(Verb::Patch),
            Method::DELETE => Some(Verb::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A method the kubelet has no verb for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("method {0} is not allowed")]
pub struct MethodNotAllowed(pub Method);
