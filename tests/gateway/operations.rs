//! Running it: metrics, readiness, certificate reload under load, graceful
//! shutdown, and the limits that keep slow clients from holding connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use kubelet_guard::certs::{Authority, LeafSpec, Usage};
use kubelet_guard::config::{GoDuration, Settings};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

/// A directory laid out like a mounted Kubernetes Secret: the files are
/// symlinks through `..data`, and an update swaps `..data` atomically.
struct SecretDir {
    root: PathBuf,
    version: u32,
}

impl SecretDir {
    fn new(root: PathBuf, files: &[(&str, &str)]) -> SecretDir {
        std::fs::create_dir_all(&root).unwrap();
        let mut dir = SecretDir { root, version: 0 };
        dir.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.path(name)).unwrap();
        }
        dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// What the kubelet does when the Secret changes.
    fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.root.join(&version)).unwrap();
        for (name, contents) in files {
            std::fs::write(self.root.join(&version).join(name), contents).unwrap();
        }
        let staged = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staged).unwrap();
        std::fs::rename(&staged, self.root.join("..data")).unwrap();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// A GET over a new connection that trusts the CAs in `roots`.
async fn get_trusting(env: &Env, roots: &Path, who: &Identity, target: &str) -> u16 {
    let tcp = TcpStream::connect(env.gateway).await.unwrap();
    let tls = TlsConnector::from(client_tls_trusting(&env.certs, roots, who, &[b"http/1.1"]))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.ready().await.unwrap();
    let response = sender
        .send_request(
            Request::get(target)
                .header("host", "127.0.0.1")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    response.status().as_u16()
}

/// The serving certificate the gateway presents to a new connection.
async fn presented_certificate(env: &Env, roots: &Path) -> Vec<u8> {
    let tcp = TcpStream::connect(env.gateway).await.unwrap();
    let tls = TlsConnector::from(client_tls_trusting(
        &env.certs,
        roots,
        &apiserver(),
        &[b"http/1.1"],
    ))
    .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
    .await
    .expect("handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The dev serving pair in a Kubernetes-style Secret directory at
/// `certs/secret` (version 1, see `SecretDir`), with the gateway's
/// `--tls-cert-file`/`--tls-private-key-file` pointing into it.
fn serve_from_secret_dir(certs: &Certs, settings: &mut Settings) {
    let secret = SecretDir::new(
        certs.path("secret"),
        &[
            ("tls.crt", &read(&certs.path("serving.crt"))),
            ("tls.key", &read(&certs.path("serving.key"))),
        ],
    );
    settings.serving.tls_cert_file = Some(secret.path("tls.crt"));
    settings.serving.tls_private_key_file = Some(secret.path("tls.key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_ca_reload_under_load_without_a_failed_request() {
    let env = Env::start_with(|certs, settings| {
        let secret = SecretDir::new(
            certs.path("secret"),
            &[
                ("tls.crt", &read(&certs.path("serving.crt"))),
                ("tls.key", &read(&certs.path("serving.key"))),
                ("ca.crt", &read(&certs.path("ca.crt"))),
            ],
        );
        settings.serving.tls_cert_file = Some(secret.path("tls.crt"));
        settings.serving.tls_private_key_file = Some(secret.path("tls.key"));
        settings.serving.client_ca_file = Some(secret.path("ca.crt"));
    })
    .await;
    let mut secret = SecretDir {
        root: env.certs.path("secret"),
        version: 1,
    };

    // The rotation: a new CA signs the new serving certificate; the client
    // CA bundle carries old and new CA, so existing clients keep working.
    let new_ca = Authority::new("rotated CA").unwrap();
    let mut serving = LeafSpec::new(
        &format!("system:node:{NODE}"),
        &["system:nodes"],
        Usage::Server,
    );
    serving.ips = vec!["127.0.0.1".parse().unwrap()];
    let new_serving = new_ca.issue(&serving).unwrap();
    let new_client = env.certs.write_identity(
        "new-ca-client",
        &new_ca
            .issue(&LeafSpec::new(
                "kube-apiserver-kubelet-client",
                &["system:masters"],
                Usage::Client,
            ))
            .unwrap(),
    );
    let both_cas = env.certs.path("both-cas.crt");
    std::fs::write(
        &both_cas,
        format!("{}{}", read(&env.certs.path("ca.crt")), new_ca.cert_pem()),
    )
    .unwrap();

    assert_eq!(
        presented_certificate(&env, &both_cas).await,
        pem_der(&read(&env.certs.path("serving.crt")))
    );
    assert_eq!(
        env.get(&new_client, "/healthz").await.0,
        401,
        "the new CA is not trusted yet"
    );

    // An exec stream opened before the rotation.
    let mut stream = env.raw(&apiserver()).await;
    stream
        .write(spdy_request("/exec/default/demo/app?command=sh&input=1").as_bytes())
        .await;
    let head = stream.read_head().await.unwrap();
    assert_eq!(head.status, 101);

    // Load: new connections (new handshakes) and kept-alive ones, all the time.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let env = Arc::new(env);
    let mut load = Vec::new();
    for fresh_connections in [true, false] {
        let (env, stop, ok, failed, both_cas) = (
            env.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            both_cas.clone(),
        );
        load.push(tokio::spawn(async move {
            let connect = || async {
                let tcp = TcpStream::connect(env.gateway).await.unwrap();
                let tls = TlsConnector::from(client_tls_trusting(
                    &env.certs,
                    &both_cas,
                    &apiserver(),
                    &[b"http/1.1"],
                ))
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .unwrap();
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                sender
            };
            let mut sender = connect().await;
            while !stop.load(Ordering::Relaxed) {
                if fresh_connections {
                    sender = connect().await;
                }
                let response = match sender.ready().await {
                    Ok(()) => {
                        sender
                            .send_request(
                                Request::get("/pods")
                                    .header("host", "127.0.0.1")
                                    .body(empty())
                                    .unwrap(),
                            )
                            .await
                    }
                    Err(e) => Err(e),
                };
                let succeeded = match response {
                    Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                let counter = if succeeded { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let swapped = Instant::now();
    secret.update(&[
        ("tls.crt", &new_serving.cert_pem),
        ("tls.key", &new_serving.key_pem),
        ("ca.crt", &read(&both_cas)),
    ]);
    let mut picked_up = None;
    while swapped.elapsed() < Duration::from_secs(10) {
        if presented_certificate(&env, &both_cas).await == pem_der(&new_serving.cert_pem) {
            picked_up = Some(swapped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    let picked_up = picked_up.expect("the new serving certificate within 10s");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "reload under load: {ok} requests, {failed} failed; new certificate served {picked_up:?} after the swap"
    );
    assert_eq!(failed, 0);
    assert!(ok > 20, "{ok} requests");
    assert_eq!(
        get_trusting(&env, &both_cas, &new_client, "/healthz").await,
        200,
        "the new CA is trusted now"
    );
    assert_eq!(
        get_trusting(&env, &both_cas, &apiserver(), "/healthz").await,
        200,
        "and the old one still"
    );

    stream.write(b"still here").await;
    assert_eq!(
        stream.read_exact_after(head.rest, 10).await,
        b"still here",
        "the open stream survived"
    );

    let (_, metrics) = env.admin_get("/metrics", None).await;
    assert!(
        metrics.contains(
            r#"kubelet_guard_certificate_reloads_total{material="serving",result="success"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_broken_certificate_is_reported_and_the_last_good_one_kept() {
    let env = Env::start_with(|certs, settings| {
        serve_from_secret_dir(certs, settings);
    })
    .await;
    let mut secret = SecretDir {
        root: env.certs.path("secret"),
        version: 1,
    };
    // A certificate that does not match the key: loadable PEM, unusable pair.
    let other = Authority::new("other").unwrap();
    let mismatched = other
        .issue(&LeafSpec::new(
            "system:node:x",
            &["system:nodes"],
            Usage::Server,
        ))
        .unwrap();
    secret.update(&[
        ("tls.crt", &mismatched.cert_pem),
        ("tls.key", &read(&env.certs.path("serving.key"))),
    ]);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = env.admin_get("/metrics", None).await;
        if metrics.contains(
            r#"kubelet_guard_certificate_reloads_total{material="serving",result="failure"} 1"#,
        ) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed reload counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca = env.certs.path("ca.crt");
    assert_eq!(
        presented_certificate(&env, &ca).await,
        pem_der(&read(&env.certs.path("serving.crt")))
    );
    assert_eq!(env.get(&apiserver(), "/pods").await.0, 200);

    // Garbage instead of PEM: same outcome.
    secret.update(&[("tls.crt", "not a certificate"), ("tls.key", "nor a key")]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.get(&apiserver(), "/pods").await.0, 200);
    let (_, metrics) = env.admin_get("/metrics", None).await;
    assert!(
        metrics.contains(r#"material="serving",result="failure"} 2"#),
        "{metrics}"
    );
}

/// Whether an exec through the gateway switches protocols: upgrades get a
/// kubelet connection of their own, so each is a new TLS handshake with the
/// kubelet, verified with the CA bundle the gateway holds now.
async fn exec_switches(env: &Env) -> bool {
    let mut stream = env.raw(&apiserver()).await;
    stream
        .write(spdy_request("/exec/default/demo/app?command=sh&input=1").as_bytes())
        .await;
    stream
        .read_head()
        .await
        .is_some_and(|head| head.status == 101)
}

#[tokio::test]
async fn a_rotated_upstream_ca_is_picked_up_and_a_broken_one_keeps_the_last_good() {
    // The gateway starts trusting a CA that did not sign the kubelet's
    // certificate: the kubelet cannot be verified.
    let wrong = Authority::new("not the kubelet's CA").unwrap();
    let env = Env::start_with(|certs, settings| {
        let path = certs.path("upstream-ca.crt");
        std::fs::write(&path, wrong.cert_pem()).unwrap();
        settings.upstream.upstream_ca_file = Some(path);
    })
    .await;
    let upstream_ca = env.certs.path("upstream-ca.crt");
    assert_eq!(env.get(&apiserver(), "/pods").await.0, 502);
    assert!(!exec_switches(&env).await);

    // Rotation: the file now holds the kubelet's CA.
    std::fs::write(&upstream_ca, read(&env.certs.path("ca.crt"))).unwrap();
    wait_for_metric(
        &env,
        r#"kubelet_guard_certificate_reloads_total{material="upstream_ca",result="success"} 1"#,
    )
    .await;
    assert_eq!(env.get(&apiserver(), "/pods").await.0, 200);
    assert!(exec_switches(&env).await, "a new handshake uses the new CA");

    // A broken file: counted, and new handshakes keep the last good CA.
    std::fs::write(&upstream_ca, "not a certificate").unwrap();
    wait_for_metric(
        &env,
        r#"kubelet_guard_certificate_reloads_total{material="upstream_ca",result="failure"} 1"#,
    )
    .await;
    assert!(exec_switches(&env).await, "the last good CA is still used");
    assert_eq!(env.get(&apiserver(), "/pods").await.0, 200);
}

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

/// A serving certificate from the dev CA with exactly these SANs.
fn serving_with_sans(certs: &Certs, ips: &[&str], names: &[&str]) -> kubelet_guard::certs::Issued {
    let mut spec = LeafSpec::new(
        &format!("system:node:{NODE}"),
        &["system:nodes"],
        Usage::Server,
    );
    spec.ips = ips.iter().map(|i| i.parse().unwrap()).collect();
    spec.dns_names = names.iter().map(|n| n.to_string()).collect();
    certs.authority().issue(&spec).unwrap()
}

async fn wait_for_metric(env: &Env, series: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = env.admin_get("/metrics", None).await;
        if metrics.lines().any(|l| l == series) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "never saw {series}:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_serving_certificate_missing_the_node_ip_is_reported_at_start() {
    // Issue 14, part 4, as reported: only DNS:node-a, started with
    // --node-ip 10.0.0.5. It serves (the default is to warn), and says so.
    let env = Env::start_with(|certs, s| {
        let issued = serving_with_sans(certs, &[], &["node-a"]);
        certs.write_identity("node-a-only", &issued);
        s.serving.tls_cert_file = Some(certs.path("node-a-only.crt"));
        s.serving.tls_private_key_file = Some(certs.path("node-a-only.key"));
        s.node.node_ip = vec!["10.0.0.5".parse().unwrap()];
        s.node.node_hostname = vec!["node-a".into()];
    })
    .await;
    let (status, body) = env.admin_get("/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("does not cover IP:10.0.0.5"), "{body}");
    assert!(!body.contains("DNS:node-a"), "node-a is covered: {body}");
    let metrics = wait_for_metric(
        &env,
        r#"kubelet_guard_serving_certificate_gaps{gap="missing_ip_san"} 1"#,
    )
    .await;
    assert!(
        metrics.contains(r#"kubelet_guard_serving_certificate_gaps{gap="missing_dns_san"} 0"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_covering_serving_certificate_is_ready_and_reports_no_gap() {
    let env = Env::start_with(|_, s| {
        // The dev certificate carries IP:127.0.0.1 and DNS:localhost.
        s.node.node_ip = vec!["127.0.0.1".parse().unwrap()];
        s.node.node_hostname = vec!["LOCALHOST".into()];
    })
    .await;
    let (status, body) = env.admin_get("/readyz", None).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    for gap in [
        "missing_ip_san",
        "missing_dns_san",
        "not_yet_valid",
        "expired",
    ] {
        wait_for_metric(
            &env,
            &format!(r#"kubelet_guard_serving_certificate_gaps{{gap="{gap}"}} 0"#),
        )
        .await;
    }
}

#[tokio::test]
async fn with_refuse_a_gap_stops_the_gateway_from_starting() {
    let certs = Certs::new();
    let kubelet =
        start_tls_kubelet(&certs, "127.0.0.1:0".parse().unwrap(), Default::default()).await;
    let issued = serving_with_sans(&certs, &[], &["node-a"]);
    certs.write_identity("node-a-only", &issued);
    let mut settings = gateway_settings(&certs, kubelet.addr());
    settings.serving.tls_cert_file = Some(certs.path("node-a-only.crt"));
    settings.serving.tls_private_key_file = Some(certs.path("node-a-only.key"));
    settings.node.node_ip = vec!["10.0.0.5".parse().unwrap()];
    settings.node.node_hostname = vec!["node-a".into(), "node-a.example".into()];
    settings.serving.serving_cert_coverage = kubelet_guard::tls::coverage::CoveragePolicy::Refuse;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = settings.validate().unwrap();
    let error = match kubelet_guard::app::Gateway::bind(config).await {
        Ok(_) => panic!("started with a certificate that does not cover the node"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("IP:10.0.0.5") && error.contains("DNS:node-a.example"),
        "{error}"
    );
    assert!(!error.contains("DNS:node-a,"), "{error}");
}

#[tokio::test]
async fn a_reloaded_certificate_is_checked_too_and_refused_when_asked() {
    for policy in [
        kubelet_guard::tls::coverage::CoveragePolicy::Warn,
        kubelet_guard::tls::coverage::CoveragePolicy::Refuse,
    ] {
        let env = Env::start_with(|certs, settings| {
            serve_from_secret_dir(certs, settings);
            settings.node.node_ip = vec!["127.0.0.1".parse().unwrap()];
            settings.serving.serving_cert_coverage = policy;
        })
        .await;
        assert_eq!(env.admin_get("/readyz", None).await.0, 200, "{policy:?}");
        let mut secret = SecretDir {
            root: env.certs.path("secret"),
            version: 1,
        };
        let narrow = serving_with_sans(&env.certs, &[], &["node-a"]);
        secret.update(&[("tls.crt", &narrow.cert_pem), ("tls.key", &narrow.key_pem)]);

        let ca = env.certs.path("ca.crt");
        match policy {
            kubelet_guard::tls::coverage::CoveragePolicy::Warn => {
                wait_for_metric(
                    &env,
                    r#"kubelet_guard_serving_certificate_gaps{gap="missing_ip_san"} 1"#,
                )
                .await;
                // Readiness answers are reused for a second.
                let deadline = Instant::now() + Duration::from_secs(5);
                let (status, body) = loop {
                    let (status, body) = env.admin_get("/readyz", None).await;
                    if status != 200 || Instant::now() > deadline {
                        break (status, body);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                assert_eq!(status, 503, "{body}");
                assert!(body.contains("does not cover IP:127.0.0.1"), "{body}");
                // Served anyway, and a client dialing the node IP fails to
                // verify it — what the apiserver would see.
                let tcp = TcpStream::connect(env.gateway).await.unwrap();
                let refused = TlsConnector::from(client_tls_trusting(
                    &env.certs,
                    &ca,
                    &apiserver(),
                    &[b"http/1.1"],
                ))
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .expect_err("the new certificate does not name 127.0.0.1");
                assert!(
                    refused
                        .to_string()
                        .contains("not valid for name \"127.0.0.1\""),
                    "{refused}"
                );
            }
            kubelet_guard::tls::coverage::CoveragePolicy::Refuse => {
                wait_for_metric(
                    &env,
                    r#"kubelet_guard_certificate_reloads_total{material="serving",result="failure"} 1"#,
                )
                .await;
                assert_eq!(
                    presented_certificate(&env, &ca).await,
                    pem_der(&read(&env.certs.path("serving.crt"))),
                    "refuse: the old certificate stays"
                );
                assert_eq!(env.admin_get("/readyz", None).await.0, 200);
            }
        }
    }
}
