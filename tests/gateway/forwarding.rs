//! Plain requests: what reaches the kubelet, and how bodies stream.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::support::*;

#[tokio::test]
async fn a_get_reaches_the_kubelet_with_the_exact_path_and_query() {
    let env = Env::start().await;
    let target = "/containerLogs/default/demo/app?tailLines=3&timestamps=true&sinceTime=2026-11-29T00%3A00%3A00Z";
    let (status, body) = env.get(&apiserver(), target).await;

    assert_eq!(status, 200);
    assert_eq!(body.lines().count(), 3, "{body}");
    let saw = env.kubelet_saw();
    assert_eq!(saw.len(), 1);
    assert_eq!(saw[0].method, Method::GET);
    assert_eq!(saw[0].target, target, "forwarded byte for byte");
    assert_eq!(saw[0].version, Version::HTTP_11);
}

#[tokio::test]
async fn a_followed_log_arrives_line_by_line_before_the_response_ends() {
    let env = Env::start().await;
    let mut client = env.connect(&apiserver()).await;
    let started = Instant::now();
    let response = client
        .send(
            Request::get("/containerLogs/default/demo/app?follow=true&tailLines=0")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), 200);

    // The kubelet writes a line every 50ms and never ends the body: each
    // line must come through on its own.
    let mut body = response.into_body();
    let mut lines = Vec::new();
    let mut first_byte = None;
    while lines.len() < 5 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a line within 5s")
            .expect("body still open")
            .expect("no body error");
        if let Ok(data) = frame.into_data() {
            first_byte.get_or_insert_with(|| started.elapsed());
            lines.push(String::from_utf8_lossy(&data).into_owned());
        }
    }
    let first_byte = first_byte.unwrap();
    println!("followed log: first line after {first_byte:?} (the kubelet writes it after 50ms)");
    assert!(
        first_byte < Duration::from_secs(1),
        "time to first byte {first_byte:?}"
    );
    assert_eq!(lines[0], "log line 1\n");
    assert_eq!(lines[4], "log line 5\n");
}

/// The body of a request the test writes piece by piece.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn a_post_body_streams_to_the_kubelet_and_the_answer_streams_back() {
    let env = Env::start().await;
    let tls = tls_connect(&env.certs, env.gateway, &apiserver(), &[b"http/1.1"]).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);

    let (tx, rx) = mpsc::channel(1);
    sender.ready().await.unwrap();
    let response = sender
        .send_request(
            Request::post("/run/default/demo/app?cmd=cat")
                .header("host", "127.0.0.1")
                .body(ChannelBody(rx))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut echo = response.into_body();

    // Each chunk comes back before the next one is sent: nothing in the
    // gateway waits for the whole request body.
    for i in 0..5 {
        let chunk = Bytes::from(format!("chunk {i};"));
        tx.send(chunk.clone()).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), echo.frame())
            .await
            .expect("echo within 5s")
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(back, chunk);
    }
    drop(tx);
    assert!(
        echo.frame().await.is_none(),
        "the body ends when the request body ends"
    );
}

#[tokio::test]
async fn an_http2_caller_is_forwarded_to_the_kubelet_as_http11() {
    let env = Env::start().await;
    let (alpn, response) = send_h2(
        &env.certs,
        env.gateway,
        &apiserver(),
        Request::get("https://127.0.0.1/pods")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert!(body_text(response).await.contains("\"PodList\""));

    let saw = env.kubelet_saw();
    assert_eq!(saw.len(), 1);
    assert_eq!(saw[0].version, Version::HTTP_11);
    assert_eq!(saw[0].target, "/pods");
    assert_eq!(
        saw[0].headers["host"], "127.0.0.1",
        "the :authority becomes Host"
    );
}

#[tokio::test]
async fn a_kubelet_that_is_down_gives_502_at_once() {
    let env = Env::start_with(|_, settings| {
        // Nothing listens on port 1.
        settings.upstream.upstream = "https://127.0.0.1:1".into();
    })
    .await;
    let started = Instant::now();
    let (status, body) = env.get(&apiserver(), "/pods").await;
    assert_eq!(status, 502);
    assert!(
        body.starts_with("Bad Gateway: kubelet unreachable"),
        "{body}"
    );
    assert!(!body.contains('\n'), "one line: {body:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn caller_credentials_never_reach_the_kubelet_only_the_gateways_own() {
    let env = Env::start_full(
        kubelet_guard_testkit::kubelet::DemoKubeletOptions {
            required_token: Some("gateway-secret".into()),
            ..Default::default()
        },
        |certs, settings| {
            std::fs::write(certs.path("upstream-token"), "gateway-secret\n").unwrap();
            settings.upstream.upstream_token_file = Some(certs.path("upstream-token"));
        },
    )
    .await;
    let mut client = env.connect(&apiserver()).await;
    let response = client
        .send(
            Request::get("/pods")
                .header("Authorization", "Bearer caller-token")
                .header("Impersonate-User", "system:admin")
                .header("Impersonate-Group", "system:masters")
                .header("Impersonate-Uid", "0")
                .header("Impersonate-Extra-Scopes", "all")
                .header("X-Remote-User", "admin")
                .header("X-Remote-Group", "system:masters")
                .header("X-Remote-Extra-Foo", "bar")
                .header("X-Forwarded-For", "192.0.2.9")
                .header("Accept", "application/json")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        response.status(),
        200,
        "the kubelet accepted the gateway's token"
    );

    let saw = &env.kubelet_saw()[0];
    assert_eq!(saw.headers["authorization"], "Bearer gateway-secret");
    for (name, _) in &saw.headers {
        let name = name.as_str();
        assert!(!name.starts_with("impersonate-"), "{name} forwarded");
        assert!(!name.starts_with("x-remote-"), "{name} forwarded");
    }
    assert_eq!(
        saw.headers["accept"], "application/json",
        "end-to-end headers pass"
    );
    assert_eq!(saw.headers["x-forwarded-for"], "192.0.2.9, 127.0.0.1");
}

#[tokio::test]
async fn hop_by_hop_headers_stop_at_the_gateway() {
    let env = Env::start().await;
    let mut raw = env.raw(&apiserver()).await;
    raw.write(
        b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-Stays: yes\r\n\r\n",
    )
    .await;
    let head = raw.read_head().await.expect("response");
    assert_eq!(head.status, 200);

    let saw = &env.kubelet_saw()[0];
    for name in ["x-hop", "keep-alive", "te", "proxy-connection"] {
        assert!(!saw.headers.contains_key(name), "{name} forwarded");
    }
    assert_eq!(saw.headers["x-stays"], "yes");
}

#[tokio::test]
async fn the_kubelet_certificate_is_verified_for_the_configured_server_name() {
    // Real kubelet certificates name the node, not 127.0.0.1.
    let certs = Certs::new();
    let mut spec =
        kubelet_guard::certs::LeafSpec::new("node-a", &[], kubelet_guard::certs::Usage::Server);
    spec.dns_names = vec!["node-a".into()];
    certs.issue("node-a-kubelet", &spec);
    let kubelet = kubelet_guard_testkit::kubelet::DemoKubelet::start(
        "127.0.0.1:0".parse().unwrap(),
        kubelet_guard_testkit::kubelet::DemoKubeletOptions {
            tls: Some(
                kubelet_guard_testkit::kubelet::mutual_tls(
                    &certs.path("node-a-kubelet.crt"),
                    &certs.path("node-a-kubelet.key"),
                    &certs.path("ca.crt"),
                )
                .unwrap(),
            ),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    for (server_name, expected) in [(None, 502), (Some("node-a"), 200), (Some("node-b"), 502)] {
        let mut settings = gateway_settings(&certs, kubelet.addr());
        settings.upstream.upstream_tls_server_name = server_name.map(String::from);
        let (addr, shutdown, _task) = start_gateway(settings).await;
        let mut client = Http1::connect(&certs, addr, &apiserver()).await;
        let response = client
            .send(Request::get("/pods").body(empty()).unwrap())
            .await;
        let status = response.status().as_u16();
        let body = body_text(response).await;
        assert_eq!(status, expected, "{server_name:?}: {body}");
        if expected == 502 {
            assert!(body.contains("certificate"), "{body}");
        }
        shutdown.cancel();
    }
}
