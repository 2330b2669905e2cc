//! Upgrades: SPDY and WebSocket, GET and POST, relayed 101s and splicing.

use crate::support::*;

/// 64 KiB of varied bytes, so a dropped or reordered chunk shows.
fn payload() -> Vec<u8> {
    (0..65_536u32).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[tokio::test]
async fn spdy_exec_relays_the_101_and_splices_both_ways() {
    let env = Env::start().await;
    let mut raw = env.raw(&apiserver()).await;
    raw.write(spdy_request("/exec/default/demo/app?command=sh&input=1&output=1&tty=1").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");

    assert_eq!(head.status, 101);
    assert_eq!(head.header("upgrade"), Some("SPDY/3.1"));
    assert_eq!(head.header("connection"), Some("Upgrade"));
    assert_eq!(
        head.header("x-stream-protocol-version"),
        Some("v4.channel.k8s.io")
    );

    let data = payload();
    raw.write(&data).await;
    let echoed = raw.read_exact_after(head.rest, data.len()).await;
    assert!(echoed == data, "the kubelet's bytes come back unchanged");

    let saw = &env.kubelet_saw()[0];
    assert_eq!(saw.method, http::Method::POST);
    assert_eq!(saw.headers["upgrade"], "SPDY/3.1");
    assert_eq!(saw.headers["connection"], "Upgrade");
    let versions: Vec<_> = saw
        .headers
        .get_all("x-stream-protocol-version")
        .iter()
        .collect();
    assert_eq!(
        versions,
        ["v4.channel.k8s.io", "v3.channel.k8s.io"],
        "all offered versions, in order"
    );
}

#[tokio::test]
async fn websocket_exec_on_get_relays_accept_and_protocol() {
    let env = Env::start().await;
    let mut raw = env.raw(&apiserver()).await;
    raw.write(websocket_request("/exec/default/demo/app?command=date&output=1").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");

    assert_eq!(head.status, 101);
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(
        head.header("sec-websocket-protocol"),
        Some("v4.channel.k8s.io")
    );

    raw.write(b"\x81\x05hello").await;
    assert_eq!(raw.read_exact_after(head.rest, 7).await, b"\x81\x05hello");

    let saw = &env.kubelet_saw()[0];
    assert_eq!(saw.method, http::Method::GET);
    assert_eq!(saw.headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(saw.headers["sec-websocket-version"], "13");
}

#[tokio::test]
async fn websocket_port_forward_is_spliced() {
    let env = Env::start().await;
    let mut raw = env.raw(&apiserver()).await;
    raw.write(websocket_request("/portForward/default/demo?port=8080").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");
    assert_eq!(head.status, 101);
    let data = payload();
    raw.write(&data).await;
    assert!(raw.read_exact_after(head.rest, data.len()).await == data);
}

#[tokio::test]
async fn when_the_caller_closes_the_kubelets_last_bytes_still_arrive() {
    let env = Env::start().await;
    let mut raw = env.raw(&apiserver()).await;
    raw.write(spdy_request("/attach/default/demo/app?output=1").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");
    assert_eq!(head.status, 101);

    raw.write(b"last words").await;
    // TLS close_notify: the caller is done sending. The kubelet echoes, then
    // closes; the gateway must pass both on.
    tokio::io::AsyncWriteExt::shutdown(&mut raw.stream)
        .await
        .unwrap();
    let mut rest = head.rest;
    rest.extend(raw.read_to_end().await);
    assert_eq!(rest, b"last words");
}

#[tokio::test]
async fn a_kubelet_error_on_an_upgrade_is_relayed_with_its_body() {
    let env = Env::start().await;
    let mut raw = env.raw(&apiserver()).await;
    raw.write(spdy_request("/exec/default/no-such-pod/app?command=ls").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");
    assert_eq!(head.status, 404);
    let length: usize = head.header("content-length").unwrap().parse().unwrap();
    let body = raw.read_exact_after(head.rest, length).await;
    assert_eq!(body, b"pod does not exist");
}

#[tokio::test]
async fn strict_mode_refuses_a_websocket_exec_to_a_get_only_identity() {
    let env = Env::start().await;
    let mut raw = env.raw(&monitoring()).await;
    raw.write(websocket_request("/exec/default/demo/app?command=cat&input=1").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");
    assert_eq!(head.status, 403);
    let length: usize = head.header("content-length").unwrap().parse().unwrap();
    let body = raw.read_exact_after(head.rest, length).await;
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "Forbidden (user=monitoring, verb=create, resource=nodes, subresource(s)=[proxy])"
    );
    assert!(env.kubelet_saw().is_empty(), "the kubelet never saw it");
}

#[tokio::test]
async fn kubelet_mode_lets_a_get_only_identity_exec_over_websocket_as_the_kubelet_would() {
    let env = Env::start_with(|_, settings| {
        settings.streaming_authz = Some(kubelet_guard::authz::attributes::StreamingAuthz::Kubelet);
    })
    .await;
    let mut raw = env.raw(&monitoring()).await;
    raw.write(websocket_request("/exec/default/demo/app?command=cat&input=1").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");
    assert_eq!(
        head.status, 101,
        "`get nodes/proxy` is enough for the kubelet"
    );
    assert_eq!(env.kubelet_saw().len(), 1);
}
