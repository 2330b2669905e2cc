//! Running it: readiness, metrics, graceful shutdown, and the limits that
//! keep slow clients from holding connections.

use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use kubelet_guard::config::GoDuration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn readiness_follows_the_kubelet_and_shutdown() {
    let env = Env::start().await;
    assert_eq!(
        env.admin_get("/readyz", None).await,
        (200, "ok\n".to_owned())
    );
    assert_eq!(env.admin_get("/livez", None).await.0, 200);
    let (_, metrics) = env.admin_get("/metrics", None).await;
    assert!(metrics.contains("kubelet_guard_ready 1\n"), "{metrics}");

    env.kubelet.stop();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, body) = env.admin_get("/readyz", None).await;
    assert_eq!(status, 503);
    assert!(body.contains("the kubelet is unreachable"), "{body}");
    assert_eq!(
        env.admin_get("/livez", None).await.0,
        200,
        "alive, just not ready"
    );
    // What the KubeletGuardNotReady alert reads.
    let (_, metrics) = env.admin_get("/metrics", None).await;
    assert!(metrics.contains("kubelet_guard_ready 0\n"), "{metrics}");
}

#[tokio::test]
async fn the_ready_gauge_follows_a_stopped_kubelet_without_probes() {
    // A stopped kubelet sends no readiness probes: the gauge must not wait
    // for them.
    let env = Env::start().await;
    let ready = |text: &str, value: &str| text.contains(&format!("kubelet_guard_ready {value}\n"));
    // One probe while the kubelet is up.
    assert_eq!(env.admin_get("/readyz", None).await.0, 200);
    let mut metrics = env.admin_get("/metrics", None).await.1;
    assert!(ready(&metrics, "1"), "{metrics}");
    env.kubelet.stop();
    // 15 s without a probe, then the gateway checks on its own.
    for _ in 0..250 {
        metrics = env.admin_get("/metrics", None).await.1;
        if ready(&metrics, "0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready(&metrics, "0"), "not 0 within 25 s: {metrics}");
}

#[tokio::test]
async fn readiness_reports_a_kubelet_that_refuses_the_gateway() {
    let env = Env::start_full(
        kubelet_guard_testkit::kubelet::DemoKubeletOptions {
            required_token: Some("the-right-token".into()),
            ..Default::default()
        },
        |_, _| {},
    )
    .await;
    let (status, body) = env.admin_get("/readyz", None).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("the kubelet answered /healthz with 401"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_count_what_happened() {
    let env = Env::start().await;
    assert_eq!(env.get(&apiserver(), "/pods").await.0, 200);
    assert_eq!(env.get(&Identity::Nobody, "/pods").await.0, 401);
    assert_eq!(env.get(&monitoring(), "/configz").await.0, 200);
    let mut stream = env.raw(&apiserver()).await;
    stream
        .write(spdy_request("/exec/default/demo/app?command=sh").as_bytes())
        .await;
    let head = stream.read_head().await.unwrap();
    stream.write(b"0123456789").await;
    stream.read_exact_after(head.rest, 10).await;

    let (status, text) = env.admin_get("/metrics", None).await;
    assert_eq!(status, 200);
    for expected in [
        r#"kubelet_guard_requests_total{subresource="pods",verb="get",code="200"} 1"#,
        r#"kubelet_guard_requests_total{subresource="none",verb="none",code="401"} 1"#,
        r#"kubelet_guard_requests_total{subresource="proxy",verb="get",code="200"} 1"#,
        r#"kubelet_guard_requests_total{subresource="proxy",verb="create",code="101"} 1"#,
        r#"kubelet_guard_authentications_total{method="none",result="failure"} 1"#,
        r#"kubelet_guard_authentications_total{method="x509",result="success"} 3"#,
        r#"kubelet_guard_authorization_decisions_total{source="static",decision="allowed"} 3"#,
        "kubelet_guard_upgraded_streams 1",
        "kubelet_guard_upstream_duration_seconds_count 3",
        r#"kubelet_guard_certificate_expiry_timestamp_seconds{certificate="serving"}"#,
        r#"kubelet_guard_certificate_expiry_timestamp_seconds{certificate="client_ca"}"#,
    ] {
        assert!(text.contains(expected), "missing {expected}\n{text}");
    }
    assert!(
        text.contains(r#"kubelet_guard_relayed_bytes_total{direction="to_caller"}"#),
        "{text}"
    );

    // The real tool, on the real output.
    let checked = tokio::task::block_in_place(|| {
        use std::io::Write;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool installed (tests/run installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    });
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let (_, openmetrics) = env
        .admin_get(
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0"),
        )
        .await;
    assert!(openmetrics.ends_with("# EOF\n"));

    drop(stream);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, text) = env.admin_get("/metrics", None).await;
    assert!(text.contains("kubelet_guard_upgraded_streams 0"), "{text}");
}

#[tokio::test]
async fn shutdown_finishes_an_in_flight_log_and_refuses_new_connections() {
    let env = Env::start_with(|_, s| {
        s.operations.shutdown_grace_period = GoDuration(Duration::from_secs(10))
    })
    .await;
    let mut client = env.connect(&apiserver()).await;
    // 20 lines of `log line N\n`, one every 50ms: about a second of stream.
    let response = client
        .send(
            Request::get("/containerLogs/default/demo/app?follow=true&tailLines=0&limitBytes=230")
                .body(empty())
                .unwrap(),
        )
        .await;
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();

    let started = Instant::now();
    env.begin_shutdown();
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(env.gateway).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "still accepting after shutdown began");

    let mut received = first.len();
    while let Some(frame) = body.frame().await {
        received += frame
            .expect("the log ends cleanly, not cut")
            .into_data()
            .map_or(0, |d| d.len());
    }
    assert_eq!(received, 230, "the whole log arrived");
    let finished = env
        .finished_within(Duration::from_secs(10))
        .await
        .expect("the gateway exits");
    println!(
        "shutdown: in-flight log finished {:?} after shutdown began; gateway exited {:?} later",
        started.elapsed() - finished,
        finished
    );
}

#[tokio::test]
async fn upgraded_streams_run_for_the_grace_period_then_close() {
    let env = Env::start_with(|_, s| {
        s.operations.shutdown_grace_period = GoDuration(Duration::from_secs(1))
    })
    .await;
    let mut stream = env.raw(&apiserver()).await;
    stream
        .write(spdy_request("/attach/default/demo/app?output=1").as_bytes())
        .await;
    let head = stream.read_head().await.unwrap();
    assert_eq!(head.status, 101);

    let started = Instant::now();
    env.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write(b"during grace").await;
    assert_eq!(
        stream.read_exact_after(head.rest, 12).await,
        b"during grace"
    );

    let mut rest = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.stream.read(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed at the end of the grace period"
    );
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed too early: {closed_after:?}"
    );
    let finished = env
        .finished_within(Duration::from_secs(5))
        .await
        .expect("the gateway exits");
    println!(
        "shutdown: stream closed {closed_after:?} after shutdown began (grace 1s); exit {finished:?} later"
    );
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off_but_idle_connections_are_kept() {
    let env = Env::start_with(|_, s| {
        s.limits.request_header_timeout = GoDuration(Duration::from_millis(500))
    })
    .await;

    let mut slow = env.raw(&apiserver()).await;
    slow.write(b"GET /pods HTTP/1.1\r\nHost: node\r\nX-Slow: ")
        .await;
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.stream.read(&mut buf)).await;
    let after = started.elapsed();
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    assert!(
        after >= Duration::from_millis(400) && after < Duration::from_secs(2),
        "closed after {after:?}"
    );
    println!("slow header: connection closed {after:?} after the partial head (limit 500ms)");

    let mut idle = env.raw(&apiserver()).await;
    idle.write(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        .await;
    let first = idle.read_head().await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(idle.read_exact_after(first.rest, 2).await, b"ok");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    idle.write(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        .await;
    assert_eq!(
        idle.read_head().await.unwrap().status,
        200,
        "idle longer than the header timeout, still open"
    );
    assert!(
        env.kubelet_saw().iter().all(|r| r.target == "/healthz"),
        "the slow request never reached the kubelet"
    );
}
