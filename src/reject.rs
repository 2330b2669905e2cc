//! Every way the gateway refuses a request, turned into a status and a short
//! text body in this one place. Bodies match the kubelet's wording so that
//! what the apiserver relays to `kubectl` reads the same.

use http::{HeaderValue, Response, StatusCode, header};

use crate::authn::AuthnError;
use crate::authz::AuthzError;
use crate::authz::attributes::{MethodNotAllowed, Subresource, Verb};
use crate::authz::path::PathError;
use crate::body::{self, Body};
use crate::proxy::ProxyError;

#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("bad request: {0}")]
    BadPath(#[from] PathError),
    #[error("bad request: absolute-form request target")]
    AbsoluteForm,
    #[error("bad request: {0}")]
    BadHost(&'static str),
    #[error("unauthenticated: {0}")]
    Unauthorized(#[from] AuthnError),
    #[error("{0}")]
    MethodNotAllowed(#[from] MethodNotAllowed),
    #[error("forbidden")]
    Forbidden {
        user: String,
        verb: Verb,
        subresources: &'static [Subresource],
    },
    #[error("{error}")]
    AuthorizationError {
        user: String,
        verb: Verb,
        error: AuthzError,
    },
    #[error("bad gateway: {0}")]
    BadGateway(#[from] ProxyError),
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadPath(_) | Rejection::AbsoluteForm | Rejection::BadHost(_) => {
                StatusCode::BAD_REQUEST
            }
            Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Rejection::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            // The kubelet answers 500; a refusal the caller may retry is a
            // 403 here, and never an allow.
            Rejection::Forbidden { .. } | Rejection::AuthorizationError { .. } => {
                StatusCode::FORBIDDEN
            }
            Rejection::BadGateway(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// What the caller reads. Authentication details stay in the log: a
    /// caller probing certificates learns nothing from the body.
    pub fn body(&self) -> String {
        match self {
            Rejection::BadPath(e) => format!("Bad Request: {e}"),
            Rejection::AbsoluteForm => {
                "Bad Request: absolute-form request targets are not accepted".into()
            }
            Rejection::BadHost(why) => format!("Bad Request: {why}"),
            Rejection::Unauthorized(_) => "Unauthorized".into(),
            Rejection::MethodNotAllowed(e) => format!("Method Not Allowed: {e}"),
            Rejection::Forbidden {
                user,
                verb,
                subresources,
            } => format!(
                "Forbidden (user={user}, verb={verb}, resource=nodes, subresource(s)=[{}])",
                subresources
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Rejection::AuthorizationError { user, verb, error } => format!(
                "Authorization error (user={user}, verb={verb}, resource=nodes, subresource={}): authorization could not be checked",
                error.subresource
            ),
            Rejection::BadGateway(e) => format!("Bad Gateway: {e}"),
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(body::text(self.body()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if let Rejection::BadGateway(ProxyError::UpgradeNotSwitched(_)) = self {
            // The connection's state after a failed upgrade is not trusted
            // (`proxy::upgrade_answer`): this answer is its last.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Rejection::MethodNotAllowed(_) = self {
            headers.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_reads_like_the_kubelet() {
        let rejection = Rejection::Forbidden {
            user: "monitoring".into(),
            verb: Verb::Get,
            subresources: &[Subresource::Pods, Subresource::Proxy],
        };
        assert_eq!(rejection.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            rejection.body(),
            "Forbidden (user=monitoring, verb=get, resource=nodes, subresource(s)=[pods proxy])"
        );
    }

    #[test]
    fn unauthorized_says_nothing_about_why() {
        let rejection = Rejection::Unauthorized(AuthnError::NoCredentials);
        assert_eq!(rejection.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(rejection.body(), "Unauthorized");
    }
}
