//! What an authenticated caller may do, by the kubelet's attributes.

use http::{Method, Request};

use crate::support::*;

async fn call(env: &Env, who: &Identity, method: Method, target: &str) -> (u16, String) {
    let mut client = env.connect(who).await;
    let response = client
        .send(
            Request::builder()
                .method(method)
                .uri(target)
                .body(empty())
                .unwrap(),
        )
        .await;
    let status = response.status().as_u16();
    (status, body_text(response).await)
}

#[tokio::test]
async fn monitoring_reads_metrics_and_stats_but_cannot_exec_or_checkpoint() {
    let env = Env::start().await;
    let who = monitoring();
    assert_eq!(
        call(&env, &who, Method::GET, "/metrics/cadvisor").await.0,
        200
    );
    assert_eq!(call(&env, &who, Method::GET, "/stats/summary").await.0, 200);
    assert_eq!(
        call(&env, &who, Method::HEAD, "/metrics").await.0,
        200,
        "HEAD is a get"
    );

    let (status, body) = call(&env, &who, Method::POST, "/checkpoint/default/demo/app").await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "Forbidden (user=monitoring, verb=create, resource=nodes, subresource(s)=[checkpoint])"
    );
    assert_eq!(
        env.kubelet_saw().len(),
        3,
        "only the allowed requests reached the kubelet"
    );
}

#[tokio::test]
async fn fine_grained_subresources_fall_back_to_proxy() {
    let env = Env::start().await;
    // monitoring has `get nodes/proxy`, not `nodes/pods`: allowed by fallback.
    assert_eq!(call(&env, &monitoring(), Method::GET, "/pods").await.0, 200);
    assert_eq!(
        call(&env, &monitoring(), Method::GET, "/healthz").await.0,
        200
    );
    let (status, body) = call(&env, &monitoring(), Method::DELETE, "/pods").await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "Forbidden (user=monitoring, verb=delete, resource=nodes, subresource(s)=[pods proxy])"
    );
}

#[tokio::test]
async fn a_method_without_a_verb_is_405_before_authorization() {
    let env = Env::start().await;
    let (status, body) = call(&env, &apiserver(), Method::OPTIONS, "/pods").await;
    assert_eq!(status, 405);
    assert_eq!(body, "Method Not Allowed: method OPTIONS is not allowed");
    assert!(env.kubelet_saw().is_empty());
}
