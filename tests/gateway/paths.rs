//! Ambiguous request targets are refused with 400 before authorization and
//! never reach the kubelet; harmless escapes are authorized as the kubelet
//! will route them.

use crate::support::*;

async fn raw_get(env: &Env, who: &Identity, target: &str) -> u16 {
    let mut raw = env.raw(who).await;
    raw.write(format!("GET {target} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes())
        .await;
    raw.read_head().await.map_or(0, |head| head.status)
}

#[tokio::test]
async fn ambiguous_paths_are_400_and_never_forwarded() {
    let env = Env::start().await;
    for target in [
        "/exec/../pods",
        "/./pods",
        "/stats/..",
        "//pods",
        "/exec//default/demo/app",
        "/%2e%2e/pods",
        "/exec/%2E%2E/pods",
        "/stats%2fsummary",
        "/stats%2Fsummary",
        "/pods%00",
        "/pods%0d%0aX-Injected:%20yes",
        "/%c0%ae%c0%ae/pods",
        "/pods%ff",
        "/stats%5csummary",
        "/pods%zz",
        "https://other.example/pods",
        "*",
    ] {
        let status = raw_get(&env, &apiserver(), target).await;
        assert_eq!(status, 400, "{target}");
    }
    assert!(
        env.kubelet_saw().is_empty(),
        "forwarded: {:?}",
        env.kubelet_saw()
    );
}

#[tokio::test]
async fn a_percent_encoded_exec_is_authorized_as_an_exec() {
    // `/%65xec` is `/exec` to the kubelet's router: it must need `create`.
    let env = Env::start().await;
    let mut raw = env.raw(&monitoring()).await;
    raw.write(websocket_request("/%65xec/default/demo/app?command=id").as_bytes())
        .await;
    assert_eq!(raw.read_head().await.unwrap().status, 403);
    assert!(env.kubelet_saw().is_empty());
}

#[tokio::test]
async fn the_forwarded_target_is_the_authorized_one_byte_for_byte() {
    let env = Env::start().await;
    let target = "/%63ontainerLogs/default/demo/app?tailLines=1&x=%2F..%2F";
    let status = raw_get(&env, &apiserver(), target).await;
    assert_eq!(
        status, 200,
        "escapes in the query are not the path's business"
    );
    assert_eq!(env.kubelet_saw()[0].target, target);
}
