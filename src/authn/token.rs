//! Bearer tokens, checked with a TokenReview as the kubelet's webhook token
//! authenticator checks them. Results, good and bad, are cached for the
//! configured TTL under a hash of the token (the token itself is not kept);
//! concurrent checks of one token share one review. A review that fails is
//! not cached and the request gets a 401.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use moka::future::Cache;
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::Identity;
use crate::fault::{FailureReporter, ReviewFailure, ReviewKind};
use crate::metrics::{Metrics, ReviewLabels};

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token was not accepted by the apiserver")]
    Rejected,
    /// The apiserver could not check the token: the infrastructure failed,
    /// not the caller (see [`crate::fault`]).
    #[error("the token could not be checked: {0}")]
    ReviewFailed(ReviewFailure),
    #[error("malformed WebSocket bearer token: {0}")]
    Malformed(String),
}

/// Clones share the result cache.
#[derive(Clone)]
pub struct TokenAuthenticator {
    api: Api<TokenReview>,
    audiences: Vec<String>,
    timeout: Duration,
    /// `None`: the apiserver said no.
    results: Cache<[u8; 32], Option<Arc<Identity>>>,
    metrics: Arc<Metrics>,
    failures: Arc<FailureReporter>,
}

impl TokenAuthenticator {
    pub fn new(
        client: kube::Client,
        audiences: Vec<String>,
        cache_ttl: Duration,
        timeout: Duration,
        metrics: Arc<Metrics>,
        failures: Arc<FailureReporter>,
    ) -> Self {
        TokenAuthenticator {
            api: Api::all(client),
            audiences,
            timeout,
            results: Cache::builder()
                .max_capacity(16_384)
                .time_to_live(cache_ttl)
                .build(),
            metrics,
            failures,
        }
    }

    pub async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let entry = self
            .results
            .entry(key)
            .or_try_insert_with(self.review(token))
            .await
            .map_err(|e| e.as_ref().clone())?;
        if !entry.is_fresh() {
            self.metrics.token_cache_hits.inc();
        }
        entry.into_value().ok_or(TokenError::Rejected)
    }

    async fn review(&self, token: &str) -> Result<Option<Arc<Identity>>, TokenError> {
        self.ask(token).await.map_err(|failure| {
            self.failures.report(&failure);
            TokenError::ReviewFailed(failure)
        })
    }

    /// One TokenReview; `Ok(None)` when the token is not accepted.
    async fn ask(&self, token: &str) -> Result<Option<Arc<Identity>>, ReviewFailure> {
        let kind = ReviewKind::TokenReview;
        let review = TokenReview {
            metadata: Default::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            status: None,
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(
            self.timeout,
            self.api.create(&PostParams::default(), &review),
        )
        .await;
        self.metrics
            .review_duration
            .get_or_create(&ReviewLabels {
                kind: "tokenreview",
            })
            .observe(started.elapsed().as_secs_f64());
        let answer = answer
            .map_err(|_| ReviewFailure::timeout(kind, self.timeout))?
            .map_err(|e| ReviewFailure::from_kube(kind, &e))?;
        let Some(status) = answer.status else {
            return Err(ReviewFailure::without_status(kind));
        };
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        // Asked for audiences, the token must be meant for one of them.
        if !self.audiences.is_empty() {
            let granted = status.audiences.unwrap_or_default();
            if !granted.iter().any(|a| self.audiences.contains(a)) {
                return Ok(None);
            }
        }
        let Some(user) = status
            .user
            .filter(|u| u.username.as_deref().is_some_and(|n| !n.is_empty()))
        else {
            return Ok(None);
        };
        // The TokenReview's user as the kubelet's webhook token
        // authenticator takes it (k8s.io/apiserver v0.37.2
        // `plugin/pkg/authenticator/token/webhook/webhook.go`), then its
        // group adder.
        Ok(Some(Arc::new(super::with_authenticated_group(Identity {
            user: user.username.unwrap_or_default(),
            uid: user.uid.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        }))))
    }
}

/// The token a WebSocket client sends as a subprotocol
/// (`base64url.bearer.authorization.k8s.io.<base64url token>`), read as the
/// kubelet's protocol authenticator reads it: only on a WebSocket upgrade,
/// at most one such protocol, valid unpadded base64url of UTF-8, and at
/// least one other protocol left for the server to choose.
pub fn websocket_token(headers: &http::HeaderMap) -> Result<Option<String>, TokenError> {
    use base64::Engine as _;
    let is_websocket = crate::request_headers::requested_upgrade(headers)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !is_websocket {
        return Ok(None);
    }
    let malformed = |why: &str| TokenError::Malformed(why.to_owned());
    let prefix = crate::request_headers::WEBSOCKET_BEARER_PREFIX.as_bytes();
    let mut token = None;
    let mut others = 0;
    for value in headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
        for protocol in crate::request_headers::protocol_list(value.as_bytes()) {
            let Some(encoded) = protocol.strip_prefix(prefix) else {
                others += 1;
                continue;
            };
            if token.is_some() {
                return Err(malformed("more than one bearer token protocol"));
            }
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded)
                .map_err(|_| malformed("the bearer token protocol is not base64url"))?;
            token = Some(
                String::from_utf8(decoded)
                    .map_err(|_| malformed("the bearer token is not UTF-8"))?,
            );
        }
    }
    match token {
        Some(token) if !token.is_empty() && others == 0 => {
            Err(malformed("no subprotocol besides the bearer token"))
        }
        Some(token) if !token.is_empty() => Ok(Some(token)),
        _ => Ok(None),
    }
}

/// The token of an `Authorization: Bearer <token>` header, read as the
/// kubelet reads it: scheme case-insensitive, empty tokens ignored.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    fn websocket(protocols: &[&str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("connection", "Upgrade".parse().unwrap());
        headers.insert("upgrade", "websocket".parse().unwrap());
        for p in protocols {
            headers.append("sec-websocket-protocol", p.parse().unwrap());
        }
        headers
    }

    const TOKEN_PROTOCOL: &str = "base64url.bearer.authorization.k8s.io.c2VjcmV0LXRva2Vu"; // "secret-token"

    #[test]
    fn websocket_tokens_are_read_as_the_kubelet_reads_them() {
        let token = |h| websocket_token(&h);
        assert_eq!(
            token(websocket(&[&format!(
                "{TOKEN_PROTOCOL}, v4.channel.k8s.io"
            )])),
            Ok(Some("secret-token".into()))
        );
        assert_eq!(
            token(websocket(&["v4.channel.k8s.io", TOKEN_PROTOCOL])),
            Ok(Some("secret-token".into())),
            "several header lines"
        );
        assert_eq!(token(websocket(&["v4.channel.k8s.io"])), Ok(None));
        assert!(
            token(websocket(&[TOKEN_PROTOCOL])).is_err(),
            "nothing left to choose"
        );
        assert!(
            token(websocket(&[
                TOKEN_PROTOCOL,
                TOKEN_PROTOCOL,
                "v4.channel.k8s.io"
            ]))
            .is_err()
        );
        assert!(
            token(websocket(&[
                "base64url.bearer.authorization.k8s.io.c2VjcmV0LXRva2Vu=",
                "v4"
            ]))
            .is_err()
        );
        assert!(
            token(websocket(&[
                "base64url.bearer.authorization.k8s.io.!!",
                "v4"
            ]))
            .is_err()
        );
        assert!(
            token(websocket(&[
                "base64url.bearer.authorization.k8s.io._w",
                "v4"
            ]))
            .is_err(),
            "not UTF-8"
        );

        let mut spdy = websocket(&[TOKEN_PROTOCOL, "v4.channel.k8s.io"]);
        spdy.insert("upgrade", "SPDY/3.1".parse().unwrap());
        assert_eq!(token(spdy), Ok(None), "only WebSocket upgrades carry it");
    }

    #[test]
    fn bearer_tokens_are_read_as_the_kubelet_reads_them() {
        assert_eq!(bearer_token(&with_auth("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with_auth("bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with_auth("Bearer abc trailing")), Some("abc"));
        assert_eq!(bearer_token(&with_auth("Bearer ")), None);
        assert_eq!(bearer_token(&with_auth("Basic dXNlcjpwYXNz")), None);
        assert_eq!(bearer_token(&with_auth("Bearer")), None);
        assert_eq!(bearer_token(&http::HeaderMap::new()), None);
    }
}
