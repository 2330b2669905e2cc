//! Every way the gateway refuses a request, turned into a status and a short
//! text body in this one place. Bodies match the kubelet's wording so that
//! what the apiserver relays to `kubectl` reads the same; statuses follow the
//! kubelet's `InstallAuthFilter` (`pkg/kubelet/server/server.go`): 401 for
//! any authentication error, 403 for a denial, 500 when authorization could
//! not be checked. Each refusal also says who failed ([`Fault`]).

use http::{HeaderValue, Response, StatusCode, header};

use crate::admit::{AdmitError, MethodNotAllowed, PathError};
use crate::authn::{AuthnError, TokenError};
use crate::authz::AuthzError;
use crate::authz::attributes::{Subresource, Verb};
use crate::body::{self, Body};
use crate::fault::Fault;
use crate::proxy::ProxyError;

#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("bad request: {0}")]
    BadPath(#[from] PathError),
    #[error("bad request: absolute-form request target")]
    AbsoluteForm,
    #[error("bad request: {0}")]
    BadHost(&'static str),
    /// The body's length is ambiguous; the connection is closed after the
    /// answer.
    #[error("bad request: {0}")]
    BadFraming(&'static str),
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

/// A request that was not admitted, as the caller reads it.
impl From<AdmitError> for Rejection {
    fn from(error: AdmitError) -> Self {
        match error {
            AdmitError::BadPath(e) => Rejection::BadPath(e),
            AdmitError::AbsoluteForm => Rejection::AbsoluteForm,
            AdmitError::BadHost(why) => Rejection::BadHost(why),
            AdmitError::BadFraming(why) => Rejection::BadFraming(why),
            AdmitError::MethodNotAllowed(e) => Rejection::MethodNotAllowed(e),
        }
    }
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadPath(_)
            | Rejection::AbsoluteForm
            | Rejection::BadHost(_)
            | Rejection::BadFraming(_) => StatusCode::BAD_REQUEST,
            Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Rejection::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::Forbidden { .. } => StatusCode::FORBIDDEN,
            // The kubelet's answer when a review cannot be made: a 5xx says
            // the platform failed, not the caller.
            Rejection::AuthorizationError { .. } => StatusCode::INTERNAL_SERVER_ERROR,
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
            Rejection::BadHost(why) | Rejection::BadFraming(why) => format!("Bad Request: {why}"),
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
            // Exactly the kubelet's text: the cause is in the log.
            Rejection::AuthorizationError { user, verb, error } => format!(
                "Authorization error (user={user}, verb={verb}, resource=nodes, subresource={})",
                error.subresource
            ),
            Rejection::BadGateway(e) => format!("Bad Gateway: {e}"),
        }
    }

    /// Who failed, and a fixed name for why (a metric label; see
    /// `metrics::RefusalLabels`).
    pub fn fault(&self) -> (Fault, &'static str) {
        match self {
            Rejection::BadPath(_)
            | Rejection::AbsoluteForm
            | Rejection::BadHost(_)
            | Rejection::BadFraming(_) => (Fault::Caller, "bad_request"),
            Rejection::MethodNotAllowed(_) => (Fault::Caller, "method_not_allowed"),
            Rejection::Unauthorized(error) => match error {
                AuthnError::NoCredentials => (Fault::Caller, "no_credentials"),
                AuthnError::Certificate(_) => (Fault::Caller, "bad_certificate"),
                AuthnError::Token(TokenError::Rejected) => (Fault::Caller, "token_rejected"),
                AuthnError::Token(TokenError::Malformed(_)) => (Fault::Caller, "malformed_token"),
                AuthnError::Token(TokenError::ReviewFailed(failure)) => {
                    (Fault::Infrastructure, failure.cause.as_str())
                }
            },
            Rejection::Forbidden { .. } => (Fault::Caller, "denied"),
            Rejection::AuthorizationError { error, .. } => {
                (Fault::Infrastructure, error.error.cause.as_str())
            }
            Rejection::BadGateway(ProxyError::Unreachable { .. } | ProxyError::Request(_)) => {
                (Fault::Infrastructure, "kubelet_unreachable")
            }
            Rejection::BadGateway(
                ProxyError::UnexpectedUpgrade | ProxyError::UpgradeNotSwitched(_),
            ) => (Fault::Infrastructure, "kubelet_bad_answer"),
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
        // A refusal after which the connection is not trusted: RFC 9112 §6.3
        // says a server that refuses Content-Length with Transfer-Encoding
        // "MUST close the connection" (Go's net/http does), and after a failed
        // upgrade the kubelet connection's state is unknown
        // (`proxy::upgrade_answer`). This answer is the connection's last.
        if matches!(
            self,
            Rejection::BadFraming(_) | Rejection::BadGateway(ProxyError::UpgradeNotSwitched(_))
        ) {
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
    fn an_authorization_error_reads_like_the_kubelets_and_blames_the_platform() {
        use crate::authz::AuthzError;
        use crate::fault::{ApiserverCause, ReviewFailure, ReviewKind};
        let rejection = Rejection::AuthorizationError {
            user: "alice".into(),
            verb: Verb::Get,
            error: AuthzError {
                subresource: Subresource::Proxy,
                error: std::sync::Arc::new(ReviewFailure {
                    kind: ReviewKind::SubjectAccessReview,
                    cause: ApiserverCause::CredentialRejected,
                    detail: "401".into(),
                }),
            },
        };
        assert_eq!(rejection.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            rejection.body(),
            "Authorization error (user=alice, verb=get, resource=nodes, subresource=proxy)"
        );
        assert_eq!(
            rejection.fault(),
            (Fault::Infrastructure, "gateway_credential_rejected")
        );
    }

    #[test]
    fn a_token_that_cannot_be_checked_is_a_401_that_blames_the_platform() {
        use crate::fault::{ApiserverCause, ReviewFailure, ReviewKind};
        let failed =
            Rejection::Unauthorized(AuthnError::Token(TokenError::ReviewFailed(ReviewFailure {
                kind: ReviewKind::TokenReview,
                cause: ApiserverCause::Timeout,
                detail: "5s".into(),
            })));
        assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(failed.body(), "Unauthorized");
        assert_eq!(failed.fault(), (Fault::Infrastructure, "apiserver_timeout"));
        let forged = Rejection::Unauthorized(AuthnError::Token(TokenError::Rejected));
        assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(forged.fault(), (Fault::Caller, "token_rejected"));
    }

    #[test]
    fn unauthorized_says_nothing_about_why() {
        let rejection = Rejection::Unauthorized(AuthnError::NoCredentials);
        assert_eq!(rejection.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(rejection.body(), "Unauthorized");
    }
}

#[cfg(test)]
mod admission_tests {
    //! The request-shape rules of `admit::target`, as the caller reads them.
    use super::*;
    use crate::admit::target::request_target;
    use http::{Request, Version, header};

    fn target(version: Version, uri: &str, hosts: &[&str]) -> Result<String, String> {
        let mut builder = Request::builder().version(version).uri(uri);
        for host in hosts {
            builder = builder.header(header::HOST, *host);
        }
        request_target(&builder.body(()).unwrap())
            .map(|t| t.to_string())
            .map_err(|e| Rejection::from(e).body())
    }

    #[test]
    fn http11_needs_exactly_one_well_formed_host() {
        use Version as V;
        assert_eq!(
            target(V::HTTP_11, "/pods?x=1", &["10.0.0.1:10250"]),
            Ok("/pods?x=1".into())
        );
        for (hosts, why) in [
            (&[][..], "missing Host header"),
            (&["a", "b"][..], "more than one Host header"),
            (&["a", "a"][..], "more than one Host header"),
            (&["user@a"][..], "malformed Host header"),
            (&["a/b"][..], "malformed Host header"),
            (&["a b"][..], "malformed Host header"),
        ] {
            assert_eq!(
                target(V::HTTP_11, "/pods", hosts),
                Err(format!("Bad Request: {why}")),
                "{hosts:?}"
            );
        }
        assert!(target(V::HTTP_11, "https://a/pods", &["a"]).is_err());
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        let request = Request::post("/run/a/b/c")
            .header(header::HOST, "a")
            .header(header::CONTENT_LENGTH, "4")
            .header(header::TRANSFER_ENCODING, "chunked")
            .body(())
            .unwrap();
        let refused = Rejection::from(request_target(&request).unwrap_err());
        assert_eq!(
            refused.body(),
            "Bad Request: both Content-Length and Transfer-Encoding"
        );
        let response = refused.into_response();
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()[header::CONNECTION], "close");
    }

    #[test]
    fn http10_takes_at_most_one_host() {
        use Version as V;
        assert!(target(V::HTTP_10, "/pods", &[]).is_ok());
        assert!(target(V::HTTP_10, "/pods", &["a"]).is_ok());
        assert!(target(V::HTTP_10, "/pods", &["a", "b"]).is_err());
        assert!(target(V::HTTP_10, "http://a/pods", &[]).is_err());
    }

    #[test]
    fn http2_authority_and_host_must_agree() {
        use Version as V;
        assert!(target(V::HTTP_2, "https://127.0.0.1/pods", &[]).is_ok());
        assert!(target(V::HTTP_2, "https://127.0.0.1/pods", &["127.0.0.1"]).is_ok());
        assert!(target(V::HTTP_2, "https://Node-1/pods", &["node-1"]).is_ok());
        assert!(target(V::HTTP_2, "/pods", &["127.0.0.1"]).is_ok());
        assert!(target(V::HTTP_2, "/pods", &[]).is_ok());
        for (uri, hosts) in [
            ("https://127.0.0.1/pods", &["127.0.0.1", "evil.example"][..]),
            ("https://127.0.0.1/pods", &["127.0.0.1", "127.0.0.1"][..]),
            ("https://127.0.0.1/pods", &["evil.example"][..]),
            ("https://127.0.0.1:10250/pods", &["127.0.0.1"][..]),
            ("https://user@127.0.0.1/pods", &[][..]),
            ("/pods", &["a", "b"][..]),
        ] {
            assert!(target(V::HTTP_2, uri, hosts).is_err(), "{uri} {hosts:?}");
        }
    }
}
