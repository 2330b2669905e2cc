//! SubjectAccessReview: the question the kubelet's webhook authorizer asks
//! the apiserver, asked the same way — one review per subresource, with the
//! caller's user, groups, uid and extra, for `nodes/<subresource>` named
//! after this node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::attributes::{Subresource, Verb};
use crate::authn::Identity;
use crate::fault::{FailureReporter, ReviewFailure, ReviewKind};
use crate::metrics::{Metrics, ReviewLabels};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

/// Why a review gave no answer (and whose fault that is). The request is
/// then refused: an unanswered question is never an allow.
pub type ReviewError = ReviewFailure;

/// The review the kubelet would send for this identity and check. Empty
/// fields are left out, as Go's `omitempty` leaves them out.
pub fn review_for(
    identity: &Identity,
    node: &str,
    verb: Verb,
    subresource: Subresource,
) -> SubjectAccessReview {
    SubjectAccessReview {
        metadata: Default::default(),
        spec: SubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.as_str().to_owned()),
                version: Some("v1".to_owned()),
                resource: Some("nodes".to_owned()),
                subresource: Some(subresource.as_str().to_owned()),
                name: Some(node.to_owned()),
                ..ResourceAttributes::default()
            }),
            user: Some(identity.user.clone()),
            uid: (!identity.uid.is_empty()).then(|| identity.uid.clone()),
            groups: (!identity.groups.is_empty()).then(|| identity.groups.clone()),
            extra: (!identity.extra.is_empty()).then(|| identity.extra.clone()),
            non_resource_attributes: None,
        },
        status: None,
    }
}

/// The review for a non-resource request (`verb` on URL `path`), as
/// k8s.io/apiserver's `DelegatingAuthorizer` sends it for the kube-scheduler
/// and kube-controller-manager secure ports (and kube-rbac-proxy): the
/// caller's identity with `nonResourceAttributes` instead of a resource.
pub fn non_resource_review_for(identity: &Identity, verb: &str, path: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        metadata: Default::default(),
        spec: SubjectAccessReviewSpec {
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(path.to_owned()),
                verb: Some(verb.to_owned()),
            }),
            resource_attributes: None,
            // user, uid, groups and extra exactly as for a resource review.
            ..review_for(identity, "", Verb::Get, Subresource::Metrics).spec
        },
        status: None,
    }
}

/// Sends reviews for one node.
#[derive(Clone)]
pub struct Reviewer {
    api: Api<SubjectAccessReview>,
    node: String,
    timeout: Duration,
    metrics: Arc<Metrics>,
    failures: Arc<FailureReporter>,
}

impl Reviewer {
    pub fn new(
        client: kube::Client,
        node: String,
        timeout: Duration,
        metrics: Arc<Metrics>,
        failures: Arc<FailureReporter>,
    ) -> Self {
        Reviewer {
            api: Api::all(client),
            node,
            timeout,
            metrics,
            failures,
        }
    }

    /// `Ok(true)` only when the apiserver says allowed. A failure is
    /// counted and (rate-limited) logged here, once per review sent rather
    /// than once per request waiting on it.
    pub async fn review(
        &self,
        identity: &Identity,
        verb: Verb,
        subresource: Subresource,
    ) -> Result<bool, ReviewError> {
        self.send(review_for(identity, &self.node, verb, subresource))
            .await
    }

    /// Like [`Reviewer::review`], for a non-resource request
    /// ([`non_resource_review_for`]).
    pub async fn review_non_resource(
        &self,
        identity: &Identity,
        verb: &str,
        path: &str,
    ) -> Result<bool, ReviewError> {
        self.send(non_resource_review_for(identity, verb, path))
            .await
    }

    async fn send(&self, review: SubjectAccessReview) -> Result<bool, ReviewError> {
        let answer = self.ask(&review).await;
        if let Err(failure) = &answer {
            self.failures.report(failure);
        }
        answer
    }

    async fn ask(&self, review: &SubjectAccessReview) -> Result<bool, ReviewError> {
        let kind = ReviewKind::SubjectAccessReview;
        let started = Instant::now();
        let answer = tokio::time::timeout(
            self.timeout,
            self.api.create(&PostParams::default(), review),
        )
        .await;
        self.metrics
            .review_duration
            .get_or_create(&ReviewLabels {
                kind: "subjectaccessreview",
            })
            .observe(started.elapsed().as_secs_f64());
        let answer = answer
            .map_err(|_| ReviewFailure::timeout(kind, self.timeout))?
            .map_err(|e| ReviewFailure::from_kube(kind, &e))?;
        let status = answer
            .status
            .ok_or_else(|| ReviewFailure::without_status(kind))?;
        Ok(status.allowed && status.denied != Some(true))
    }
}
