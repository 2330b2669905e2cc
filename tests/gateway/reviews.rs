//! SubjectAccessReview and TokenReview against a fake apiserver, through the
//! gateway's real kube client: what is asked, how answers are cached, and
//! that every failure refuses the request. (Who is blamed for a failure:
//! `faults.rs`; the identity in the reviews: `identity.rs`.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use kubelet_guard::config::GoDuration;
use serde_json::json;

use crate::support::apiserver::{Ask, Behaviour, TokenUser};
use crate::support::*;

/// Two groups: rcgen writes one O per subject, so openssl makes this one.
fn alice(env: &Env) -> Identity {
    env.certs
        .issue_with_openssl("alice", "/CN=alice/O=team-a/O=team-b", &[])
}

fn no_caching(settings: &mut kubelet_guard::config::Settings) {
    settings.authz.authorization_webhook_cache_authorized_ttl = GoDuration(Duration::ZERO);
    settings.authz.authorization_webhook_cache_unauthorized_ttl = GoDuration(Duration::ZERO);
}

/// The review body the kubelet's webhook authorizer sends for alice's
/// certificate (whose credential id is `credential_id`): her O values, then
/// the group adder's `system:authenticated` (see `identity.rs`).
fn expected_review(verb: &str, subresource: &str, credential_id: &str) -> serde_json::Value {
    json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "metadata": {},
        "spec": {
            "resourceAttributes": {
                "name": NODE,
                "resource": "nodes",
                "subresource": subresource,
                "verb": verb,
                "version": "v1"
            },
            "user": "alice",
            "groups": ["team-a", "team-b", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/credential-id": [credential_id]}
        }
    })
}

#[tokio::test]
async fn every_row_of_the_mapping_table_sends_the_kubelets_review() {
    let env = Env::with_apiserver(|_, s| no_caching(s)).await;
    let who = alice(&env);
    // Denying everything makes every subresource of a row be asked, in order.
    let rows: &[(Method, &str, &str, &[&str])] = &[
        (Method::GET, "/stats/summary", "get", &["stats"]),
        (Method::GET, "/metrics", "get", &["metrics"]),
        (Method::GET, "/metrics/cadvisor", "get", &["metrics"]),
        (Method::GET, "/logs/kubelet.log", "get", &["log"]),
        (
            Method::POST,
            "/checkpoint/default/demo/app",
            "create",
            &["checkpoint"],
        ),
        (Method::GET, "/pods", "get", &["pods", "proxy"]),
        (Method::GET, "/runningpods/", "get", &["pods", "proxy"]),
        (Method::GET, "/healthz", "get", &["healthz", "proxy"]),
        (Method::GET, "/configz", "get", &["configz", "proxy"]),
        (Method::GET, "/statusz", "get", &["statusz"]),
        (
            Method::GET,
            "/containerLogs/default/demo/app",
            "get",
            &["proxy"],
        ),
        (Method::GET, "/exec/default/demo/app", "create", &["proxy"]),
        (
            Method::POST,
            "/attach/default/demo/app",
            "create",
            &["proxy"],
        ),
        (
            Method::GET,
            "/portForward/default/demo",
            "create",
            &["proxy"],
        ),
        (Method::DELETE, "/debug/pprof/profile", "delete", &["proxy"]),
        (Method::PUT, "/debug/flags/v", "update", &["proxy"]),
        (Method::PATCH, "/flagz", "patch", &["configz"]),
    ];
    let mut credential_id = String::new();
    for (method, path, verb, subresources) in rows {
        let before = env.api().subject_access_reviews().len();
        let (status, _) = env.call(&who, method.clone(), path, None).await;
        assert_eq!(status, 403, "{method} {path}");
        let sent = &env.api().subject_access_reviews()[before..];
        if credential_id.is_empty() {
            // Checked against openssl's fingerprint in `identity.rs`.
            credential_id = sent[0]["spec"]["extra"]["authentication.kubernetes.io/credential-id"]
                [0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
            assert!(credential_id.starts_with("X509SHA256="), "{credential_id}");
        }
        let expected: Vec<_> = subresources
            .iter()
            .map(|s| expected_review(verb, s, &credential_id))
            .collect();
        assert_eq!(sent, expected, "{method} {path}");
    }
    assert!(env.kubelet_saw().is_empty());
}

#[tokio::test]
async fn a_denied_fine_grained_subresource_falls_back_to_proxy() {
    let env = Env::with_apiserver(|_, _| {}).await;
    env.api().set_policy(|ask| ask.subresource == "proxy");
    let (status, body) = env.get(&alice(&env), "/pods").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        env.api().asked(),
        [
            ("get".into(), "pods".into()),
            ("get".into(), "proxy".into())
        ]
    );
}

#[tokio::test]
async fn strict_and_kubelet_modes_ask_for_different_verbs_on_a_websocket_exec() {
    for (mode, verb) in [
        (
            kubelet_guard::authz::attributes::StreamingAuthz::Strict,
            "create",
        ),
        (
            kubelet_guard::authz::attributes::StreamingAuthz::Kubelet,
            "get",
        ),
    ] {
        let env = Env::with_apiserver(|_, s| s.authz.streaming_authz = mode).await;
        env.api().set_policy(|_| true);
        let mut raw = env.raw(&alice(&env)).await;
        raw.write(websocket_request("/exec/default/demo/app?command=id").as_bytes())
            .await;
        assert_eq!(raw.read_head().await.unwrap().status, 101);
        assert_eq!(
            env.api().asked(),
            [(verb.to_owned(), "proxy".to_owned())],
            "{mode:?}"
        );
    }
}

#[tokio::test]
async fn decisions_are_cached_by_what_is_asked_not_by_url() {
    let env = Env::with_apiserver(|_, _| {}).await;
    env.api().set_policy(|ask| ask.subresource == "metrics");
    let who = alice(&env);
    let mut requests = 0;
    for path in [
        "/metrics",
        "/metrics/cadvisor",
        "/metrics/resource",
        "/metrics/probes",
        "/metrics",
    ] {
        assert_eq!(env.get(&who, path).await.0, 200);
        requests += 1;
    }
    for _ in 0..5 {
        assert_eq!(env.get(&who, "/stats/summary").await.0, 403);
        requests += 1;
    }
    let sent = env.api().subject_access_reviews().len();
    println!(
        "{requests} requests, {sent} reviews, cache hit rate {:.0}%",
        100.0 * (1.0 - sent as f64 / requests as f64)
    );
    assert_eq!(
        env.api().asked(),
        [
            ("get".into(), "metrics".into()),
            ("get".into(), "stats".into())
        ]
    );
}

#[tokio::test]
async fn cached_decisions_expire_and_denials_sooner() {
    let env = Env::with_apiserver(|_, s| {
        s.authz.authorization_webhook_cache_authorized_ttl = GoDuration(Duration::from_secs(3));
        s.authz.authorization_webhook_cache_unauthorized_ttl =
            GoDuration(Duration::from_millis(300));
    })
    .await;
    env.api().set_policy(|ask| ask.subresource == "metrics");
    let who = alice(&env);
    assert_eq!(env.get(&who, "/metrics").await.0, 200);
    assert_eq!(env.get(&who, "/stats/summary").await.0, 403);
    assert_eq!(env.api().subject_access_reviews().len(), 2);

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(env.get(&who, "/metrics").await.0, 200);
    assert_eq!(env.get(&who, "/stats/summary").await.0, 403);
    assert_eq!(
        env.api().subject_access_reviews().len(),
        3,
        "only the denial was asked again"
    );

    // A permission granted meanwhile shows once the denial expires.
    env.api().set_policy(|_| true);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(env.get(&who, "/stats/summary").await.0, 200);

    tokio::time::sleep(Duration::from_millis(2_700)).await;
    assert_eq!(env.get(&who, "/metrics").await.0, 200);
    assert_eq!(
        env.api()
            .asked()
            .iter()
            .filter(|(_, s)| s == "metrics")
            .count(),
        2,
        "the allow expired too"
    );
}

#[tokio::test]
async fn a_hundred_concurrent_cold_requests_send_one_review() {
    let env = Arc::new(Env::with_apiserver(|_, _| {}).await);
    env.api().set_policy(|_| true);
    // Slow answers make all hundred requests miss the cache together.
    env.api()
        .set_behaviour(Behaviour::Slow(Duration::from_millis(300)));
    let who = alice(&env);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let env = env.clone();
            let who = who.clone();
            tokio::spawn(async move { env.get(&who, "/pods").await.0 })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(env.api().subject_access_reviews().len(), 1);
    assert_eq!(env.kubelet_saw().len(), 100);
}

fn bob() -> TokenUser {
    TokenUser {
        username: "bob".into(),
        uid: "b0b".into(),
        groups: vec!["devs".into(), "system:authenticated".into()],
        extra: HashMap::from([("scopes".to_owned(), vec!["node-read".to_owned()])]),
        audiences: vec!["https://kubernetes.default.svc".into()],
    }
}

#[tokio::test]
async fn a_bearer_token_is_reviewed_cached_and_never_forwarded() {
    let env = Env::with_apiserver(|_, _| {}).await;
    env.api().add_token("bob-token", bob());
    env.api().set_policy(|ask| ask.user == "bob");

    for _ in 0..3 {
        let (status, _) = env
            .call(&Identity::Nobody, Method::GET, "/pods", Some("bob-token"))
            .await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        env.api().token_reviews().len(),
        1,
        "token results are cached"
    );
    assert_eq!(
        env.api().token_reviews()[0]["spec"],
        json!({"token": "bob-token"})
    );

    let review = &env.api().subject_access_reviews()[0]["spec"];
    assert_eq!(review["user"], "bob");
    assert_eq!(review["uid"], "b0b");
    assert_eq!(review["groups"], json!(["devs", "system:authenticated"]));
    assert_eq!(review["extra"], json!({"scopes": ["node-read"]}));

    for saw in env.kubelet_saw() {
        assert!(
            !saw.headers.contains_key("authorization"),
            "the caller's token reached the kubelet"
        );
    }

    let (status, body) = env
        .call(&Identity::Nobody, Method::GET, "/pods", Some("forged"))
        .await;
    assert_eq!((status, body.as_str()), (401, "Unauthorized"));
    assert_eq!(env.kubelet_saw().len(), 3);
}

#[tokio::test]
async fn token_audiences_are_checked() {
    let env =
        Env::with_apiserver(|_, s| s.authn.auth_token_audiences = vec!["kubelet-guard".into()])
            .await;
    env.api().add_token("bob-token", bob());
    env.api().add_token(
        "carol-token",
        TokenUser {
            username: "carol".into(),
            audiences: vec!["kubelet-guard".into()],
            ..bob()
        },
    );
    env.api().set_policy(|_| true);
    let get = |token| env.call(&Identity::Nobody, Method::GET, "/pods", Some(token));
    assert_eq!(
        get("bob-token").await.0,
        401,
        "bob's token is for the apiserver only"
    );
    assert_eq!(get("carol-token").await.0, 200);
    assert_eq!(
        env.api().token_reviews()[0]["spec"]["audiences"],
        json!(["kubelet-guard"])
    );
}

#[tokio::test]
async fn a_client_certificate_wins_over_a_token() {
    let env = Env::with_apiserver(|_, _| {}).await;
    env.api().add_token("bob-token", bob());
    env.api().set_policy(|_| true);
    let (status, _) = env
        .call(&alice(&env), Method::GET, "/pods", Some("bob-token"))
        .await;
    assert_eq!(status, 200);
    assert!(
        env.api().token_reviews().is_empty(),
        "the token was not even looked at"
    );
    assert_eq!(
        env.api().subject_access_reviews()[0]["spec"]["user"],
        "alice"
    );
}

#[tokio::test]
async fn an_unreachable_apiserver_fails_closed_but_cached_allows_keep_serving() {
    let env = Env::with_apiserver(|_, _| {}).await;
    env.api()
        .set_policy(|ask: &Ask| ask.subresource == "proxy" || ask.subresource == "pods");
    env.api().add_token("bob-token", bob());
    let who = alice(&env);
    assert_eq!(env.get(&who, "/pods").await.0, 200);

    env.api().stop();
    assert_eq!(
        env.get(&who, "/pods").await.0,
        200,
        "the cached allow still serves"
    );

    let (status, body) = env.get(&who, "/containerLogs/default/demo/app").await;
    // The kubelet's status and text (issue 14: was 403 with a suffix).
    assert_eq!(status, 500);
    assert_eq!(
        body,
        "Authorization error (user=alice, verb=get, resource=nodes, subresource=proxy)"
    );
    let (status, _) = env
        .call(&Identity::Nobody, Method::GET, "/pods", Some("bob-token"))
        .await;
    assert_eq!(
        status, 401,
        "a token that cannot be reviewed is not accepted"
    );
    assert_eq!(
        env.kubelet_saw().len(),
        2,
        "only the allowed requests reached the kubelet"
    );
}

#[tokio::test]
async fn a_slow_or_broken_apiserver_fails_closed_within_the_review_timeout() {
    let env = Env::with_apiserver(|_, s| {
        s.apiserver.review_timeout = GoDuration(Duration::from_millis(500))
    })
    .await;
    env.api().set_policy(|_| true);
    let who = alice(&env);
    for (behaviour, target) in [
        (Behaviour::Slow(Duration::from_secs(5)), "/pods"),
        (Behaviour::Status(500), "/stats/summary"),
        (Behaviour::Status(403), "/metrics"),
        (Behaviour::Malformed, "/healthz"),
    ] {
        env.api().set_behaviour(behaviour);
        let started = Instant::now();
        let (status, body) = env.get(&who, target).await;
        // 500 as the kubelet answers it (issue 14: was 403).
        assert_eq!(status, 500, "{behaviour:?}");
        assert!(
            body.starts_with("Authorization error (user=alice"),
            "{behaviour:?}: {body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{behaviour:?} took {:?}",
            started.elapsed()
        );
    }
    assert!(env.kubelet_saw().is_empty());
}

#[tokio::test]
async fn anonymous_requests_are_reviewed_as_system_anonymous_when_enabled() {
    let env = Env::with_apiserver(|_, s| s.authn.anonymous_auth = true).await;
    env.api()
        .set_policy(|ask| ask.user == "system:anonymous" && ask.subresource == "healthz");
    assert_eq!(env.get(&Identity::Nobody, "/healthz").await.0, 200);
    assert_eq!(env.get(&Identity::Nobody, "/pods").await.0, 403);
    let review = &env.api().subject_access_reviews()[0]["spec"];
    assert_eq!(review["user"], "system:anonymous");
    assert_eq!(review["groups"], json!(["system:unauthenticated"]));

    let off = Env::with_apiserver(|_, _| {}).await;
    off.api().set_policy(|_| true);
    assert_eq!(off.get(&Identity::Nobody, "/healthz").await.0, 401);
    assert!(off.api().subject_access_reviews().is_empty());
}

#[tokio::test]
async fn the_gateway_authenticates_to_the_apiserver_with_its_token_file() {
    let env = Env::with_apiserver(|_, _| {}).await;
    env.api().set_policy(|_| true);
    assert_eq!(env.get(&alice(&env), "/pods").await.0, 200);
    assert_eq!(env.api().gateway_tokens(), ["gateway-sa-token-1"]);
}

#[tokio::test]
async fn a_rotated_service_account_token_is_picked_up_without_a_restart() {
    let env = Env::with_apiserver(|_, s| no_caching(s)).await;
    env.api().set_policy(|_| true);
    let who = alice(&env);
    assert_eq!(env.get(&who, "/pods").await.0, 200);
    assert_eq!(
        env.api().gateway_tokens().last().map(String::as_str),
        Some("gateway-sa-token-1")
    );

    // The kubelet rotates projected tokens by rewriting the file.
    std::fs::write(env.certs.path("gateway-sa-token"), "gateway-sa-token-2").unwrap();
    let started = Instant::now();
    loop {
        assert_eq!(env.get(&who, "/pods").await.0, 200);
        if env.api().gateway_tokens().last().map(String::as_str) == Some("gateway-sa-token-2") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(75),
            "still the old token after 75s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("rotated token used after {:?}", started.elapsed());
}
