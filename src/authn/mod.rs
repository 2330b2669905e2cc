//! Who is calling. A request is authenticated by exactly one method, tried in
//! this order: the client certificate (if one was presented, it decides — a
//! bad certificate is a 401, never a fall-through to a token), then a bearer
//! token (the `Authorization` header, else a WebSocket subprotocol) checked
//! with a TokenReview, then anonymous access if enabled.
//! Anything else is `401 Unauthorized`.

mod token;
mod x509;

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderMap;
use rustls_pki_types::UnixTime;
use serde::Serialize;
use thiserror::Error;
use tokio::sync::watch;

use crate::tls::TlsState;

pub use token::{TokenAuthenticator, TokenError, bearer_token, websocket_token};
pub use x509::{CREDENTIAL_ID_KEY, CertificateError, ClientCertificate, identity_from_certificate};

/// An authenticated caller, in the shape of the apiserver's `user.Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Identity {
    pub user: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// `system:authenticated`, which the kubelet adds to every authenticated user.
pub const ALL_AUTHENTICATED: &str = "system:authenticated";
/// `system:unauthenticated`.
pub const ALL_UNAUTHENTICATED: &str = "system:unauthenticated";
/// `system:anonymous`.
pub const ANONYMOUS: &str = "system:anonymous";

/// The kubelet's group adder (k8s.io/apiserver v0.37.2
/// `pkg/authentication/group/authenticated_group_adder.go`, wrapped around
/// the x509 and token authenticators in
/// `authenticatorfactory/delegating.go`): appends `system:authenticated`
/// unless the user is `system:anonymous` or the groups already hold
/// `system:authenticated` or `system:unauthenticated`. Anonymous access is
/// outside it, so it never gets the group.
pub fn with_authenticated_group(mut identity: Identity) -> Identity {
    let already = identity
        .groups
        .iter()
        .any(|g| g == ALL_AUTHENTICATED || g == ALL_UNAUTHENTICATED);
    if identity.user != ANONYMOUS && !already {
        identity.groups.push(ALL_AUTHENTICATED.to_owned());
    }
    identity
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            user: ANONYMOUS.into(),
            groups: vec![ALL_UNAUTHENTICATED.into()],
            ..Identity::default()
        }
    }
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    X509,
    Token,
    Anonymous,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::X509 => "x509",
            Method::Token => "token",
            Method::Anonymous => "anonymous",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authenticated {
    pub identity: Arc<Identity>,
    pub method: Method,
}

/// Why a request was not authenticated. Every variant is a 401; the detail
/// goes to the log, not to the caller.
#[derive(Debug, Error)]
pub enum AuthnError {
    #[error("no client certificate or other credentials")]
    NoCredentials,
    #[error("client certificate rejected: {0}")]
    Certificate(#[from] CertificateError),
    #[error("bearer token rejected: {0}")]
    Token(#[from] TokenError),
}

/// Clones share the token cache (the secure metrics listener uses one).
#[derive(Clone)]
pub struct Authenticator {
    tls: watch::Receiver<Option<Arc<TlsState>>>,
    /// `None`: `--authentication-token-webhook=false`; tokens are ignored.
    tokens: Option<TokenAuthenticator>,
    anonymous: bool,
}

impl Authenticator {
    pub fn new(
        tls: watch::Receiver<Option<Arc<TlsState>>>,
        tokens: Option<TokenAuthenticator>,
        anonymous: bool,
    ) -> Self {
        Authenticator {
            tls,
            tokens,
            anonymous,
        }
    }

    pub async fn authenticate(
        &self,
        certificate: Option<&ClientCertificate>,
        headers: &HeaderMap,
    ) -> Result<Authenticated, AuthnError> {
        if let Some(certificate) = certificate {
            let client_ca = self.tls.borrow().as_ref().and_then(|s| s.client_ca.clone());
            let client_ca = client_ca.ok_or(CertificateError::NoClientCa)?;
            let identity = certificate.authenticate(&client_ca, UnixTime::now())?;
            return Ok(Authenticated {
                identity,
                method: Method::X509,
            });
        }
        if let Some(tokens) = &self.tokens {
            // The kubelet's order: the Authorization header, then a token in
            // the WebSocket subprotocols (browsers cannot set headers there).
            let token = match bearer_token(headers) {
                Some(token) => Some(token.to_owned()),
                None => websocket_token(headers)?,
            };
            if let Some(token) = token {
                // Boxed: the TokenReview path is kilobytes of future that
                // a request authenticated by its certificate need not carry.
                return Ok(Authenticated {
                    identity: Box::pin(tokens.authenticate(&token)).await?,
                    method: Method::Token,
                });
            }
        }
        if self.anonymous {
            return Ok(Authenticated {
                identity: Arc::new(Identity::anonymous()),
                method: Method::Anonymous,
            });
        }
        Err(AuthnError::NoCredentials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> Identity {
        Identity {
            user: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Identity::default()
        }
    }

    #[test]
    fn the_group_adder_follows_the_kubelets() {
        let added = |i: Identity| with_authenticated_group(i).groups;
        assert_eq!(
            added(user("alice", &["dev"])),
            ["dev", "system:authenticated"]
        );
        assert_eq!(added(user("alice", &[])), ["system:authenticated"]);
        assert_eq!(
            added(user("bob", &["system:authenticated", "devs"])),
            ["system:authenticated", "devs"],
            "not duplicated"
        );
        assert_eq!(
            added(user("odd", &["x", "system:unauthenticated"])),
            ["x", "system:unauthenticated"],
            "never both"
        );
        assert_eq!(
            added(user("system:anonymous", &["x"])),
            ["x"],
            "anonymous by name is left alone"
        );
    }
}
