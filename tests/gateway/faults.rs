//! Every refusal says who failed (issue 14, part 3): the caller (no or bad
//! credentials, not allowed) or the infrastructure (the apiserver
//! unreachable, slow, refusing the gateway's own credential, answering
//! garbage). Status codes are the kubelet's `InstallAuthFilter`: 401 for an
//! authentication error whatever its cause, 500 when a SubjectAccessReview
//! could not be made; the access log's `decision` and `cause`, the
//! `refusals` metric and a rate-limited warn line tell them apart.

use std::time::Duration;

use http::Method;
use serde_json::Value;

use crate::support::apiserver::{Behaviour, TokenUser};
use crate::support::binary::Running;
use crate::support::*;

fn bob() -> TokenUser {
    TokenUser {
        username: "bob".into(),
        uid: "b0b".into(),
        groups: vec!["devs".into()],
        extra: Default::default(),
        audiences: vec![],
    }
}

fn alice(env: &Env) -> Identity {
    env.certs
        .issue_with_openssl("alice", "/CN=alice/O=dev", &[])
}

async fn metrics(env: &Env) -> String {
    env.admin_get("/metrics", None).await.1
}

fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_rejected_gateway_credential_is_blamed_on_the_platform_not_on_the_caller() {
    // Issue 14, part 3, as reported: the apiserver rejects the gateway's own
    // ServiceAccount token; a caller with a valid token gets a 401.
    let env = Env::with_apiserver(|_, _| {}).await;
    env.api().add_token("bob-token", bob());
    env.api().set_policy(|_| true);
    env.api().set_behaviour(Behaviour::Status(401));
    let valid = env
        .call(&Identity::Nobody, Method::GET, "/pods", Some("bob-token"))
        .await;
    assert_eq!(valid, (401, "Unauthorized".into()), "the kubelet's answer");

    env.api().set_behaviour(Behaviour::Normal);
    let forged = env
        .call(&Identity::Nobody, Method::GET, "/pods", Some("forged"))
        .await;
    assert_eq!(forged, (401, "Unauthorized".into()));

    let text = metrics(&env).await;
    for (series, expected) in [
        (
            r#"kubelet_guard_refusals_total{fault="infrastructure",cause="gateway_credential_rejected"}"#,
            1,
        ),
        (
            r#"kubelet_guard_refusals_total{fault="caller",cause="token_rejected"}"#,
            1,
        ),
        (
            r#"kubelet_guard_authentications_total{method="token",result="error"}"#,
            1,
        ),
        (
            r#"kubelet_guard_authentications_total{method="token",result="failure"}"#,
            1,
        ),
        (
            r#"kubelet_guard_apiserver_review_failures_total{kind="tokenreview",cause="gateway_credential_rejected"}"#,
            1,
        ),
    ] {
        assert_eq!(counter(&text, series), expected, "{series}\n{text}");
    }
    assert!(env.kubelet_saw().is_empty());
}

#[tokio::test]
async fn every_apiserver_failure_is_an_infrastructure_refusal_with_its_cause() {
    let env = Env::with_apiserver(|_, s| {
        s.apiserver.review_timeout = kubelet_guard::config::GoDuration(Duration::from_millis(500))
    })
    .await;
    env.api().add_token("bob-token", bob());
    env.api().set_policy(|_| true);
    let who = alice(&env);
    let cases = [
        (Behaviour::Status(401), "gateway_credential_rejected"),
        (Behaviour::Status(403), "gateway_forbidden"),
        // (429, 503 and 504 are retried by the kube client until the
        // review timeout: they end as apiserver_timeout.)
        (Behaviour::Status(404), "apiserver_error"),
        (Behaviour::Status(500), "apiserver_error"),
        (Behaviour::Status(502), "apiserver_error"),
        (Behaviour::Malformed, "apiserver_bad_response"),
        (Behaviour::Slow(Duration::from_secs(3)), "apiserver_timeout"),
    ];
    for (behaviour, cause) in cases {
        env.api().set_behaviour(behaviour);
        let before = metrics(&env).await;

        // A SubjectAccessReview that cannot be made: the kubelet's 500.
        let (status, body) = env.get(&who, "/stats/summary").await;
        assert_eq!(status, 500, "{behaviour:?}");
        assert_eq!(
            body, "Authorization error (user=alice, verb=get, resource=nodes, subresource=stats)",
            "{behaviour:?}"
        );
        // A TokenReview that cannot be made: the kubelet's 401.
        let (status, _) = env
            .call(&Identity::Nobody, Method::GET, "/pods", Some("bob-token"))
            .await;
        assert_eq!(status, 401, "{behaviour:?}");

        let after = metrics(&env).await;
        let series =
            format!(r#"kubelet_guard_refusals_total{{fault="infrastructure",cause="{cause}"}}"#);
        assert_eq!(
            counter(&after, &series) - counter(&before, &series),
            2,
            "{behaviour:?}: {series}\n{after}"
        );
        for kind in ["subjectaccessreview", "tokenreview"] {
            let series = format!(
                r#"kubelet_guard_apiserver_review_failures_total{{kind="{kind}",cause="{cause}"}}"#
            );
            assert_eq!(
                counter(&after, &series) - counter(&before, &series),
                1,
                "{behaviour:?}: {series}"
            );
        }
    }

    // Unreachable: the apiserver stops listening.
    env.api().stop();
    let (status, _) = env.get(&who, "/stats/summary").await;
    assert_eq!(status, 500);
    let text = metrics(&env).await;
    assert_eq!(
        counter(
            &text,
            r#"kubelet_guard_refusals_total{fault="infrastructure",cause="apiserver_unreachable"}"#
        ),
        1,
        "{text}"
    );
    assert!(env.kubelet_saw().is_empty(), "nothing was let through");
}

#[tokio::test]
async fn caller_refusals_stay_4xx_and_are_blamed_on_the_caller() {
    let env = Env::with_apiserver(|_, _| {}).await;
    env.api().set_policy(|ask| ask.subresource == "metrics");
    let who = alice(&env);
    assert_eq!(env.get(&who, "/pods").await.0, 403);
    assert_eq!(env.get(&Identity::Nobody, "/pods").await.0, 401);
    assert_eq!(env.get(&who, "/%2e%2e/pods").await.0, 400);
    let text = metrics(&env).await;
    for cause in ["denied", "no_credentials", "bad_request"] {
        let series = format!(r#"kubelet_guard_refusals_total{{fault="caller",cause="{cause}"}}"#);
        assert_eq!(counter(&text, &series), 1, "{series}\n{text}");
    }
    assert!(
        !text.contains(r#"fault="infrastructure""#),
        "no infrastructure refusal: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_and_one_warn_line_name_the_infrastructure_cause() {
    let certs = Certs::new();
    let kubelet =
        start_tls_kubelet(&certs, "127.0.0.1:0".parse().unwrap(), Default::default()).await;
    let api = crate::support::apiserver::FakeApiserver::start(&certs).await;
    api.add_token("bob-token", bob());
    api.set_policy(|_| true);
    let kubeconfig = api.write_kubeconfig(&certs, "gateway-sa-token-1");
    let mut running = Running::start_with(
        &certs,
        kubelet.addr(),
        &format!(
            "authorizationMode: Webhook\nauthenticationTokenWebhook: true\nkubeconfig: {}\n",
            kubeconfig.display()
        ),
    )
    .await;
    let alice = certs.issue_with_openssl("alice", "/CN=alice/O=dev", &[]);

    // The gateway's credential is rejected: three token callers and two
    // certificate callers are refused; then a forged token, the caller's
    // fault.
    api.set_behaviour(Behaviour::Status(401));
    let get = |who: Identity, token: Option<&'static str>| {
        let certs = &certs;
        let addr = running.addr;
        async move {
            let mut client = Http1::connect(certs, addr, &who).await;
            let mut request = http::Request::get("/pods");
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let response = client.send(request.body(empty()).unwrap()).await;
            response.status().as_u16()
        }
    };
    for _ in 0..3 {
        assert_eq!(get(Identity::Nobody, Some("bob-token")).await, 401);
    }
    for _ in 0..2 {
        assert_eq!(get(alice.clone(), None).await, 500);
    }
    api.set_behaviour(Behaviour::Normal);
    assert_eq!(get(Identity::Nobody, Some("forged")).await, 401);

    let mut access = Vec::new();
    let mut warnings = Vec::new();
    while access.len() < 6 {
        let line = running.next_json().await;
        if line["target"] == "access" {
            access.push(line);
        } else if line["level"] == "WARN" && line.get("review").is_some() {
            warnings.push(line);
        }
    }
    let field = |l: &Value, k: &str| l[k].as_str().unwrap_or_default().to_owned();
    for line in &access[..3] {
        assert_eq!(field(line, "decision"), "authentication_error", "{line}");
        assert_eq!(
            field(line, "cause"),
            "gateway_credential_rejected",
            "{line}"
        );
        assert_eq!(line["status"], 401);
    }
    for line in &access[3..5] {
        assert_eq!(field(line, "decision"), "authorization_error", "{line}");
        assert_eq!(
            field(line, "cause"),
            "gateway_credential_rejected",
            "{line}"
        );
        assert_eq!(line["status"], 500);
    }
    assert_eq!(field(&access[5], "decision"), "unauthenticated");
    assert_eq!(field(&access[5], "cause"), "token_rejected");

    // One warn line per review kind, not one per request; each names the
    // cause and what to fix.
    let named: Vec<(String, String)> = warnings
        .iter()
        .map(|w| (field(w, "review"), field(w, "cause")))
        .collect();
    assert_eq!(
        named,
        [
            ("tokenreview".into(), "gateway_credential_rejected".into()),
            (
                "subjectaccessreview".into(),
                "gateway_credential_rejected".into()
            ),
        ],
        "{warnings:?}"
    );
    assert!(
        field(&warnings[0], "message").contains("the gateway's own credential"),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn a_kubelet_failure_is_counted_by_its_cause() {
    let series = |cause: &str| format!(r#"kubelet_guard_upstream_errors_total{{cause="{cause}"}}"#);

    // Nothing listens on port 1: the TCP connection is refused.
    let down = Env::start_with(|_, settings| {
        settings.upstream.upstream = "https://127.0.0.1:1".into();
    })
    .await;
    assert_eq!(down.get(&apiserver(), "/pods").await.0, 502);
    let (_, text) = down.admin_get("/metrics", None).await;
    assert_eq!(counter(&text, &series("connect")), 1, "{text}");
    assert_eq!(counter(&text, &series("tls")), 0, "{text}");

    // The kubelet's certificate is verified for a name it does not carry.
    let misnamed = Env::start_with(|_, settings| {
        settings.upstream.upstream_tls_server_name = Some("node-b".into());
    })
    .await;
    assert_eq!(misnamed.get(&apiserver(), "/pods").await.0, 502);
    let (_, text) = misnamed.admin_get("/metrics", None).await;
    assert_eq!(counter(&text, &series("tls")), 1, "{text}");
    assert_eq!(counter(&text, &series("connect")), 0, "{text}");
    assert_eq!(
        counter(
            &text,
            r#"kubelet_guard_refusals_total{fault="infrastructure",cause="kubelet_unreachable"}"#
        ),
        1,
        "the refusal keeps its cause: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_what_went_wrong_with_the_kubelet() {
    let certs = Certs::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut running = Running::start(&certs, closed).await;
    let mut client = Http1::connect(&certs, running.addr, &apiserver()).await;
    let response = client
        .send(http::Request::get("/pods").body(empty()).unwrap())
        .await;
    assert_eq!(response.status(), 502);
    let line = loop {
        let line = running.next_json().await;
        if line["target"] == "access" {
            break line;
        }
    };
    assert_eq!(line["upstream_error"], "connect", "{line}");
    assert_eq!(line["cause"], "kubelet_unreachable", "{line}");
    assert_eq!(line["decision"], "allowed", "{line}");
}
