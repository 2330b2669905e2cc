//! Reloading from files under load: the serving certificate and client CA
//! swapped in a Secret-style directory, a broken certificate keeping the
//! last good one, the kubelet's CA bundle rotated.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use kubelet_guard::certs::{Authority, LeafSpec, Usage};
use kubelet_guard::config::Settings;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

/// A directory laid out like a mounted Kubernetes Secret: the files are
/// symlinks through `..data`, and an update swaps `..data` atomically.
pub(crate) struct SecretDir {
    pub(crate) root: PathBuf,
    pub(crate) version: u32,
}

impl SecretDir {
    pub(crate) fn new(root: PathBuf, files: &[(&str, &str)]) -> SecretDir {
        std::fs::create_dir_all(&root).unwrap();
        let mut dir = SecretDir { root, version: 0 };
        dir.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.path(name)).unwrap();
        }
        dir
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// What the kubelet does when the Secret changes.
    pub(crate) fn update(&mut self, files: &[(&str, &str)]) {
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

pub(crate) fn read(path: &Path) -> String {
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
pub(crate) async fn presented_certificate(env: &Env, roots: &Path) -> Vec<u8> {
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

pub(crate) fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The dev serving pair in a Kubernetes-style Secret directory at
/// `certs/secret` (version 1, see `SecretDir`), with the gateway's
/// `--tls-cert-file`/`--tls-private-key-file` pointing into it.
pub(crate) fn serve_from_secret_dir(certs: &Certs, settings: &mut Settings) {
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

/// Waits up to 10 s for the admin `/metrics` to show `series` (a whole line).
pub(crate) async fn wait_for_metric(env: &Env, series: &str) -> String {
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
