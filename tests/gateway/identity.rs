//! The identity in every SubjectAccessReview is the one the kubelet's
//! authenticator chain produces (issue 14, part 2): for each credential
//! kind the review body the gateway sends, as the fake apiserver received
//! it, is compared whole with the body the kubelet would send — built here
//! from k8s.io/apiserver v0.37.2 (`request/x509` `CommonNameUserConversion`,
//! `plugin/pkg/authenticator/token/webhook`, `request/websocket`,
//! `request/anonymous`, `group/authenticated_group_adder.go`, and the
//! webhook authorizer's `SubjectAccessReviewSpec`).

use std::collections::HashMap;

use http::Method;
use serde_json::{Value, json};

use crate::support::apiserver::TokenUser;
use crate::support::*;

/// The review the kubelet's webhook authorizer sends for this user info.
/// `uid` and `extra` are left out when empty, as Go's `omitempty` does.
fn kubelet_review(
    user: &str,
    uid: &str,
    groups: &[&str],
    extra: Value,
    verb: &str,
    subresource: &str,
) -> Value {
    let mut spec = json!({
        "resourceAttributes": {
            "name": NODE,
            "resource": "nodes",
            "subresource": subresource,
            "verb": verb,
            "version": "v1"
        },
        "user": user,
    });
    if !uid.is_empty() {
        spec["uid"] = json!(uid);
    }
    if !groups.is_empty() {
        spec["groups"] = json!(groups);
    }
    if extra.as_object().is_some_and(|e| !e.is_empty()) {
        spec["extra"] = extra;
    }
    json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "metadata": {},
        "spec": spec,
    })
}

/// The kubelet's x509 credential id, computed by `openssl` (not by the
/// gateway's code): `X509SHA256=` + lowercase hex SHA-256 of the DER.
fn credential_id(env: &Env, name: &str) -> Value {
    let cert = env.certs.path(&format!("{name}.crt"));
    let out = run_tool(
        "openssl",
        &[
            "x509",
            "-in",
            cert.to_str().unwrap(),
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(hex.len(), 64, "{text}");
    json!({"authentication.kubernetes.io/credential-id": [format!("X509SHA256={hex}")]})
}

fn no_caching(settings: &mut kubelet_guard::config::Settings) {
    use kubelet_guard::config::GoDuration;
    use std::time::Duration;
    settings.authz.authorization_webhook_cache_authorized_ttl = GoDuration(Duration::ZERO);
    settings.authz.authorization_webhook_cache_unauthorized_ttl = GoDuration(Duration::ZERO);
}

/// An openssl config naming the Kubernetes UID attribute, so `-subj` can
/// carry it (`kubeUID=…`).
fn uid_config(env: &Env) -> String {
    let path = env.certs.path("uid.cnf");
    std::fs::write(
        &path,
        "oid_section = new_oids\n[new_oids]\nkubeUID = 1.3.6.1.4.1.57683.2\n[req]\ndistinguished_name = dn\n[dn]\n",
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_issue_14_certificate_is_reviewed_in_system_authenticated_like_the_kubelet() {
    // Issue 14, part 2, as reported: CN=alice, O=dev calling GET /pods.
    let env = Env::with_apiserver(|_, s| no_caching(s)).await;
    let alice = env
        .certs
        .issue_with_openssl("alice", "/CN=alice/O=dev", &[]);
    let extra = credential_id(&env, "alice");
    let (status, _) = env.get(&alice, "/pods").await;
    assert_eq!(status, 403, "nothing is allowed yet");
    let groups = ["dev", "system:authenticated"];
    assert_eq!(
        env.api().subject_access_reviews(),
        [
            kubelet_review("alice", "", &groups, extra.clone(), "get", "pods"),
            kubelet_review("alice", "", &groups, extra, "get", "proxy"),
        ]
    );

    // What that changes: a grant to every authenticated user now applies.
    env.api()
        .set_policy(|ask| ask.groups.iter().any(|g| g == "system:authenticated"));
    assert_eq!(env.get(&alice, "/pods").await.0, 200);
}

#[tokio::test]
async fn every_kind_of_certificate_subject_is_reviewed_as_the_kubelet_reviews_it() {
    let env = Env::with_apiserver(|_, s| no_caching(s)).await;
    let config = uid_config(&env);
    // (subject, openssl args, user, uid, groups)
    let cases: &[(&str, bool, &str, &str, &[&str])] = &[
        ("/CN=carl", false, "carl", "", &["system:authenticated"]),
        (
            "/CN=dana/O=team-a/O=team-b/O=team-c",
            false,
            "dana",
            "",
            &["team-a", "team-b", "team-c", "system:authenticated"],
        ),
        (
            "/CN=svc/O=ops/O=system:authenticated",
            false,
            "svc",
            "",
            &["ops", "system:authenticated"],
        ),
        (
            "/CN=odd/O=system:unauthenticated",
            false,
            "odd",
            "",
            &["system:unauthenticated"],
        ),
        (
            "/CN=system:anonymous/O=x",
            false,
            "system:anonymous",
            "",
            &["x"],
        ),
        (
            "/CN=erin/O=dev/kubeUID=erin-uid-1",
            true,
            "erin",
            "erin-uid-1",
            &["dev", "system:authenticated"],
        ),
    ];
    for (i, (subject, with_uid, user, uid, groups)) in cases.iter().enumerate() {
        let name = format!("subject-{i}");
        let args: Vec<&str> = if *with_uid {
            vec!["-config", &config]
        } else {
            vec![]
        };
        let who = env.certs.issue_with_openssl(&name, subject, &args);
        let before = env.api().subject_access_reviews().len();
        assert_eq!(env.get(&who, "/metrics").await.0, 403, "{subject}");
        let sent = &env.api().subject_access_reviews()[before..];
        assert_eq!(
            sent,
            [kubelet_review(
                user,
                uid,
                groups,
                credential_id(&env, &name),
                "get",
                "metrics"
            )],
            "{subject}"
        );
    }
}

#[tokio::test]
async fn a_certificate_with_two_user_uids_is_refused_like_the_kubelets_x509_authenticator() {
    // `parseUIDFromCert` errors on more than one UID; the kubelet then has
    // no certificate identity, and the gateway (a presented certificate
    // decides) answers 401.
    let env = Env::with_apiserver(|_, _| {}).await;
    env.api().set_policy(|_| true);
    let config = uid_config(&env);
    let who = env.certs.issue_with_openssl(
        "two-uids",
        "/CN=frank/kubeUID=one/kubeUID=two",
        &["-config", &config],
    );
    assert_eq!(env.get(&who, "/pods").await, (401, "Unauthorized".into()));
    assert!(env.api().subject_access_reviews().is_empty());
}

fn token_user(username: &str, uid: &str, groups: &[&str], extra: &[(&str, &[&str])]) -> TokenUser {
    TokenUser {
        username: username.into(),
        uid: uid.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        extra: extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect::<HashMap<_, _>>(),
        audiences: vec![],
    }
}

#[tokio::test]
async fn every_kind_of_token_user_is_reviewed_as_the_kubelet_reviews_it() {
    let env = Env::with_apiserver(|_, s| no_caching(s)).await;
    // (token, TokenReview user, expected groups in the review)
    let cases: Vec<(&str, TokenUser, &[&str])> = vec![
        (
            "sa-token",
            token_user(
                "system:serviceaccount:monitoring:prometheus",
                "0b7f6a4e-uid",
                &[
                    "system:serviceaccounts",
                    "system:serviceaccounts:monitoring",
                ],
                &[
                    ("authentication.kubernetes.io/credential-id", &["JTI=abc"]),
                    ("authentication.kubernetes.io/pod-name", &["prom-0"]),
                ],
            ),
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:monitoring",
                "system:authenticated",
            ],
        ),
        (
            "has-group",
            token_user("gina", "", &["system:authenticated", "ops"], &[]),
            &["system:authenticated", "ops"],
        ),
        (
            "no-groups",
            token_user("hank", "", &[], &[]),
            &["system:authenticated"],
        ),
        (
            "unauth-group",
            token_user("ivy", "", &["system:unauthenticated"], &[]),
            &["system:unauthenticated"],
        ),
        (
            "anonymous-name",
            token_user("system:anonymous", "", &[], &[]),
            &[],
        ),
    ];
    for (token, user, groups) in &cases {
        env.api().add_token(token, user.clone());
        let before = env.api().subject_access_reviews().len();
        let (status, _) = env
            .call(
                &Identity::Nobody,
                Method::GET,
                "/stats/summary",
                Some(token),
            )
            .await;
        assert_eq!(status, 403, "{token}");
        let extra: serde_json::Map<String, Value> = user
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        assert_eq!(
            &env.api().subject_access_reviews()[before..],
            [kubelet_review(
                &user.username,
                &user.uid,
                groups,
                Value::Object(extra),
                "get",
                "stats"
            )],
            "{token}"
        );
    }
}

#[tokio::test]
async fn a_websocket_protocol_token_is_reviewed_like_a_bearer_token() {
    let env = Env::with_apiserver(|_, _| {}).await;
    env.api().add_token(
        "carol-token",
        token_user("carol", "c4", &["browser-users"], &[("scopes", &["exec"])]),
    );
    // base64url("carol-token"), unpadded.
    let request = "GET /exec/default/demo/app?command=id HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.Y2Fyb2wtdG9rZW4, v4.channel.k8s.io\r\n\r\n";
    let mut conn = env.raw(&Identity::Nobody).await;
    conn.write(request.as_bytes()).await;
    assert_eq!(conn.read_head().await.unwrap().status, 403);
    assert_eq!(
        env.api().subject_access_reviews(),
        [kubelet_review(
            "carol",
            "c4",
            &["browser-users", "system:authenticated"],
            json!({"scopes": ["exec"]}),
            "create",
            "proxy"
        )]
    );
}

#[tokio::test]
async fn anonymous_is_reviewed_without_system_authenticated() {
    let env = Env::with_apiserver(|_, s| s.authn.anonymous_auth = true).await;
    assert_eq!(env.get(&Identity::Nobody, "/healthz").await.0, 403);
    assert_eq!(
        env.api().subject_access_reviews(),
        [
            kubelet_review(
                "system:anonymous",
                "",
                &["system:unauthenticated"],
                json!({}),
                "get",
                "healthz"
            ),
            kubelet_review(
                "system:anonymous",
                "",
                &["system:unauthenticated"],
                json!({}),
                "get",
                "proxy"
            ),
        ]
    );
}
