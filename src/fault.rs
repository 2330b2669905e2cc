//! Who failed when a request is refused: the caller (no or bad credentials,
//! not allowed, a malformed request) or the infrastructure (the apiserver
//! unreachable, slow, refusing the gateway's own credential, answering
//! garbage; the kubelet failing). A caller with a good token and a caller
//! with a forged one must not look alike to an operator: each refusal says
//! which side failed in the access log (`decision`, `cause`), in the
//! `refusals` metric, and — for the infrastructure — in a rate-limited warn
//! line naming the cause.
//!
//! Status codes stay the kubelet's (`pkg/kubelet/server/server.go`,
//! `InstallAuthFilter`): an authentication error is a 401 whatever its
//! cause, an authorization error (no review could be made) a 500.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::metrics::{Metrics, ReviewFailureLabels};

/// The side that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// What the caller sent or is: fix the caller.
    Caller,
    /// The apiserver, the kubelet or the gateway's own credentials: fix the
    /// platform.
    Infrastructure,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Caller => "caller",
            Fault::Infrastructure => "infrastructure",
        }
    }
}

/// Which review could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReviewKind {
    TokenReview,
    SubjectAccessReview,
}

impl ReviewKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewKind::TokenReview => "tokenreview",
            ReviewKind::SubjectAccessReview => "subjectaccessreview",
        }
    }

    fn resource(self) -> &'static str {
        match self {
            ReviewKind::TokenReview => "tokenreviews",
            ReviewKind::SubjectAccessReview => "subjectaccessreviews",
        }
    }
}

impl std::fmt::Display for ReviewKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReviewKind::TokenReview => "TokenReview",
            ReviewKind::SubjectAccessReview => "SubjectAccessReview",
        })
    }
}

/// Why the apiserver gave no usable answer to a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiserverCause {
    /// No connection, TLS failure, connection dropped.
    Unreachable,
    /// No answer within `--review-timeout`.
    Timeout,
    /// 401: the apiserver does not accept the gateway's own credential
    /// (an expired or rotated-away ServiceAccount token, a wrong kubeconfig).
    CredentialRejected,
    /// 403: the gateway's identity may not create the review (not bound to
    /// `system:auth-delegator`).
    Forbidden,
    /// Any other error status (429, 5xx, 404 from a proxy in between).
    ServerError,
    /// A success status whose body is not a review with a status.
    BadResponse,
    /// The gateway could not load its own credential (token file unreadable).
    CredentialUnavailable,
}

impl ApiserverCause {
    /// The metric and access-log label.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiserverCause::Unreachable => "apiserver_unreachable",
            ApiserverCause::Timeout => "apiserver_timeout",
            ApiserverCause::CredentialRejected => "gateway_credential_rejected",
            ApiserverCause::Forbidden => "gateway_forbidden",
            ApiserverCause::ServerError => "apiserver_error",
            ApiserverCause::BadResponse => "apiserver_bad_response",
            ApiserverCause::CredentialUnavailable => "gateway_credential_unavailable",
        }
    }
}

/// A review the apiserver did not answer usably. The request that needed
/// it is refused (401 for a TokenReview, 500 for a SubjectAccessReview) and
/// the result is not cached.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind} could not be made ({}): {detail}", cause.as_str())]
pub struct ReviewFailure {
    pub kind: ReviewKind,
    pub cause: ApiserverCause,
    /// What the client library said, for the log.
    pub detail: String,
}

impl ReviewFailure {
    pub fn timeout(kind: ReviewKind, timeout: Duration) -> Self {
        ReviewFailure {
            kind,
            cause: ApiserverCause::Timeout,
            detail: format!("no answer within {timeout:?}"),
        }
    }

    pub fn without_status(kind: ReviewKind) -> Self {
        ReviewFailure {
            kind,
            cause: ApiserverCause::BadResponse,
            detail: "the review came back without a status".into(),
        }
    }

    /// Classifies an error of the kube client (kube-client 5, `Error`).
    pub fn from_kube(kind: ReviewKind, error: &kube::Error) -> Self {
        let cause = match error {
            kube::Error::Api(status) => match status.code {
                401 => ApiserverCause::CredentialRejected,
                403 => ApiserverCause::Forbidden,
                _ => ApiserverCause::ServerError,
            },
            kube::Error::SerdeError(_) | kube::Error::FromUtf8(_) => ApiserverCause::BadResponse,
            kube::Error::Auth(_) => ApiserverCause::CredentialUnavailable,
            _ => ApiserverCause::Unreachable,
        };
        ReviewFailure {
            kind,
            cause,
            detail: crate::proxy::error_chain(error),
        }
    }

    /// What an operator should look at, for the warn line.
    fn hint(&self) -> String {
        match self.cause {
            ApiserverCause::Unreachable => "the apiserver cannot be reached".into(),
            ApiserverCause::Timeout => {
                "the apiserver did not answer within --review-timeout".into()
            }
            ApiserverCause::CredentialRejected => "the apiserver rejects the gateway's own credential (401): check its ServiceAccount token or --kubeconfig".into(),
            ApiserverCause::Forbidden => format!(
                "the apiserver refuses the gateway (403): it needs `create {}` (ClusterRole system:auth-delegator)",
                self.kind.resource()
            ),
            ApiserverCause::ServerError => "the apiserver answers with an error status".into(),
            ApiserverCause::BadResponse => "the apiserver's answer is not a usable review".into(),
            ApiserverCause::CredentialUnavailable => {
                "the gateway cannot load its own credential for the apiserver".into()
            }
        }
    }
}

/// Counts failed reviews and says so at warn level, at most once per
/// review kind and cause per `every` (with how many were not logged in
/// between): an outage fails every request, and a log line per request
/// would bury the cause it is meant to show.
pub struct FailureReporter {
    metrics: Arc<Metrics>,
    every: Duration,
    /// Per (kind, cause): when it was last logged, and failures since.
    last: Mutex<HashMap<(ReviewKind, ApiserverCause), (Instant, u64)>>,
}

/// Default spacing of the warn lines for one kind and cause.
pub const WARN_EVERY: Duration = Duration::from_secs(30);

impl FailureReporter {
    pub fn new(metrics: Arc<Metrics>, every: Duration) -> Self {
        FailureReporter {
            metrics,
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Records one failed review.
    pub fn report(&self, failure: &ReviewFailure) {
        self.metrics
            .review_failures
            .get_or_create(&ReviewFailureLabels {
                kind: failure.kind.as_str(),
                cause: failure.cause.as_str(),
            })
            .inc();
        if let Some(suppressed) = self.due(failure.kind, failure.cause, Instant::now()) {
            tracing::warn!(
                review = failure.kind.as_str(),
                cause = failure.cause.as_str(),
                error = %failure.detail,
                suppressed,
                "{}: {} failed, so requests that need it are refused (infrastructure, not the caller)",
                failure.hint(),
                failure.kind,
            );
        }
    }

    /// `Some(failures not logged since the last line)` when a line is due.
    fn due(&self, kind: ReviewKind, cause: ApiserverCause, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere; the counts are
        // still usable.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(&(kind, cause)) {
            Some((at, suppressed)) if now.duration_since(*at) < self.every => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let skipped = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(skipped)
            }
            None => {
                last.insert((kind, cause), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warn_lines_are_spaced_per_kind_and_cause() {
        let reporter = FailureReporter::new(Arc::new(Metrics::new()), Duration::from_secs(30));
        let t0 = Instant::now();
        let (sar, token) = (ReviewKind::SubjectAccessReview, ReviewKind::TokenReview);
        let rejected = ApiserverCause::CredentialRejected;
        assert_eq!(reporter.due(sar, rejected, t0), Some(0));
        for i in 1..=99 {
            assert_eq!(
                reporter.due(sar, rejected, t0 + Duration::from_millis(i)),
                None
            );
        }
        assert_eq!(
            reporter.due(token, rejected, t0),
            Some(0),
            "another kind is its own line"
        );
        assert_eq!(
            reporter.due(sar, ApiserverCause::Timeout, t0),
            Some(0),
            "another cause is its own line"
        );
        assert_eq!(
            reporter.due(sar, rejected, t0 + Duration::from_secs(31)),
            Some(99),
            "the next line says how many were not logged"
        );
    }

    #[test]
    fn failed_reviews_are_counted_by_kind_and_cause() {
        let metrics = Arc::new(Metrics::new());
        let reporter = FailureReporter::new(metrics.clone(), WARN_EVERY);
        for _ in 0..3 {
            reporter.report(&ReviewFailure {
                kind: ReviewKind::TokenReview,
                cause: ApiserverCause::CredentialRejected,
                detail: "401".into(),
            });
        }
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"kubelet_guard_apiserver_review_failures_total{kind="tokenreview",cause="gateway_credential_rejected"} 3"#
            ),
            "{text}"
        );
    }

    #[test]
    fn kube_errors_are_classified_by_who_failed() {
        let api = |code: u16| {
            kube::Error::Api(
                kube::core::Status::failure("injected", "Failure")
                    .with_code(code)
                    .boxed(),
            )
        };
        let kind = ReviewKind::TokenReview;
        assert_eq!(
            ReviewFailure::from_kube(kind, &api(401)).cause,
            ApiserverCause::CredentialRejected
        );
        assert_eq!(
            ReviewFailure::from_kube(kind, &api(403)).cause,
            ApiserverCause::Forbidden
        );
        for code in [404, 429, 500, 503] {
            assert_eq!(
                ReviewFailure::from_kube(kind, &api(code)).cause,
                ApiserverCause::ServerError
            );
        }
        let garbage = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        assert_eq!(
            ReviewFailure::from_kube(kind, &kube::Error::SerdeError(garbage)).cause,
            ApiserverCause::BadResponse
        );
    }
}
