//! Who may talk to the gateway at all. Every refusal is a 401 the caller can
//! read, and the kubelet never sees the request.

use std::time::Duration;

use kubelet_guard::certs::{LeafSpec, Usage};
use time::OffsetDateTime;

use crate::support::*;

async fn assert_unauthorized(env: &Env, who: &Identity) {
    let (status, body) = env.get(who, "/pods").await;
    assert_eq!((status, body.as_str()), (401, "Unauthorized"), "{who:?}");
    assert!(env.kubelet_saw().is_empty(), "{who:?} reached the kubelet");
}

#[tokio::test]
async fn no_certificate_is_401() {
    let env = Env::start().await;
    assert_unauthorized(&env, &Identity::Nobody).await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_401_even_with_the_apiservers_name() {
    let env = Env::start().await;
    assert_unauthorized(&env, &Identity::Named("untrusted-client".into())).await;
}

#[tokio::test]
async fn an_expired_certificate_is_401() {
    let env = Env::start().await;
    let mut spec = LeafSpec::new(
        kubelet_guard::certs::APISERVER_USER,
        &["system:masters"],
        Usage::Client,
    );
    spec.not_before = OffsetDateTime::now_utc() - Duration::from_secs(2 * 86_400);
    spec.not_after = OffsetDateTime::now_utc() - Duration::from_secs(86_400);
    let expired = env.certs.issue("expired", &spec);
    assert_unauthorized(&env, &expired).await;
}

#[tokio::test]
async fn a_not_yet_valid_certificate_is_401() {
    let env = Env::start().await;
    let mut spec = LeafSpec::new(
        kubelet_guard::certs::APISERVER_USER,
        &["system:masters"],
        Usage::Client,
    );
    spec.not_before = OffsetDateTime::now_utc() + Duration::from_secs(86_400);
    spec.not_after = OffsetDateTime::now_utc() + Duration::from_secs(2 * 86_400);
    let future = env.certs.issue("future", &spec);
    assert_unauthorized(&env, &future).await;
}

#[tokio::test]
async fn a_certificate_only_for_server_auth_is_401() {
    let env = Env::start().await;
    let spec = LeafSpec::new(
        kubelet_guard::certs::APISERVER_USER,
        &["system:masters"],
        Usage::Server,
    );
    let server_only = env.certs.issue("server-only", &spec);
    assert_unauthorized(&env, &server_only).await;
}

#[tokio::test]
async fn anonymous_access_is_off_by_default_and_authorized_like_anyone_when_on() {
    let env = Env::start_with(|_, settings| {
        settings.authn.anonymous_auth = true;
        if let Some(authz) = settings.authz.authorization.as_mut() {
            authz
                .static_rules
                .push(kubelet_guard::authz::static_rules::StaticRuleSpec {
                    user: None,
                    group: Some("system:unauthenticated".into()),
                    verbs: vec!["get".into()],
                    subresources: vec!["healthz".into()],
                });
        }
    })
    .await;
    let (status, body) = env.get(&Identity::Nobody, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, body) = env.get(&Identity::Nobody, "/pods").await;
    assert_eq!(status, 403);
    assert!(
        body.starts_with("Forbidden (user=system:anonymous, verb=get"),
        "{body}"
    );
    // A bad certificate is still a 401, never a fall-back to anonymous.
    let (status, _) = env
        .get(&Identity::Named("untrusted-client".into()), "/healthz")
        .await;
    assert_eq!(status, 401);
}
