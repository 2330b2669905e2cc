//! The gateway as real command-line clients see it.

use crate::support::*;

fn curl(env: &Env, args: &[&str]) -> (String, String) {
    let ca = env.certs.path("ca.crt");
    let mut all = vec![
        "-sS",
        "--cacert",
        ca.to_str().unwrap(),
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    all.extend_from_slice(args);
    let output = run_tool("curl", &all);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (body.to_owned(), status.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_the_apiservers_certificate_lists_pods_over_http2_and_http11() {
    let env = Env::start().await;
    let cert = env.certs.path("apiserver-client.crt");
    let key = env.certs.path("apiserver-client.key");
    let url = format!("https://127.0.0.1:{}/pods", env.gateway.port());
    for version in ["--http2", "--http1.1"] {
        let args = [
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            version,
            url.as_str(),
        ];
        let (body, status) = tokio::task::block_in_place(|| curl(&env, &args));
        let expected = if version == "--http2" {
            "200 2"
        } else {
            "200 1.1"
        };
        assert_eq!(status, expected);
        assert!(body.contains("\"PodList\""), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_without_a_certificate_gets_401() {
    let env = Env::start().await;
    let url = format!("https://127.0.0.1:{}/pods", env.gateway.port());
    let (body, status) = tokio::task::block_in_place(|| curl(&env, &[url.as_str()]));
    assert_eq!((body.as_str(), status.as_str()), ("Unauthorized", "401 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_sees_a_verified_node_certificate_and_a_client_certificate_request() {
    let env = Env::start().await;
    let connect = format!("127.0.0.1:{}", env.gateway.port());
    let ca = env.certs.path("ca.crt");
    let output = tokio::task::block_in_place(|| {
        use std::io::Write;
        let mut child = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &connect,
                "-CAfile",
                ca.to_str().unwrap(),
                "-verify_ip",
                "127.0.0.1",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl installed (apt-get install openssl)");
        child.stdin.take().unwrap().write_all(b"Q\n").unwrap();
        child.wait_with_output().unwrap()
    });
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(
        text.contains("CN = system:node:test-node, O = system:nodes")
            || text.contains("CN=system:node:test-node"),
        "{text}"
    );
    assert!(
        text.contains("Acceptable client certificate CA names"),
        "{text}"
    );
    assert!(text.contains("kubelet-guard development CA"), "{text}");
}

/// Whether `openssl s_client` completes a handshake with `args`.
fn openssl_handshake(port: u16, ca: &std::path::Path, args: &[&str]) -> bool {
    use std::io::Write;
    let connect = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            ca.to_str().unwrap(),
        ])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl installed (apt-get install openssl)");
    child.stdin.take().unwrap().write_all(b"Q\n").unwrap();
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    output.status.success()
        && text.contains("Verify return code: 0 (ok)")
        && !text.contains("Cipher is (NONE)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls12_and_tls13_with_aead_suites_by_default() {
    let env = Env::start().await;
    let (port, ca) = (env.gateway.port(), env.certs.path("ca.crt"));
    let shakes = |args: &[&str]| tokio::task::block_in_place(|| openssl_handshake(port, &ca, args));
    assert!(shakes(&["-tls1_3"]));
    assert!(shakes(&["-tls1_2"]));
    // openssl's SECLEVEL stops it offering TLS 1.0/1.1 unless lowered.
    assert!(!shakes(&["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]));
    assert!(!shakes(&["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"]));
    for cbc in [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "AES128-SHA",
    ] {
        assert!(!shakes(&["-tls1_2", "-cipher", cbc]), "{cbc}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_and_cipher_suites_are_honoured() {
    let tls13 =
        Env::start_with(|_, s| s.serving.tls_min_version = kubelet_guard::tls::TlsVersion::Tls13)
            .await;
    let (port, ca) = (tls13.gateway.port(), tls13.certs.path("ca.crt"));
    assert!(tokio::task::block_in_place(|| openssl_handshake(
        port,
        &ca,
        &["-tls1_3"]
    )));
    assert!(!tokio::task::block_in_place(|| openssl_handshake(
        port,
        &ca,
        &["-tls1_2"]
    )));

    let narrow = Env::start_with(|_, s| {
        s.serving.tls_cipher_suites = vec!["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".into()]
    })
    .await;
    let (port, ca) = (narrow.gateway.port(), narrow.certs.path("ca.crt"));
    let shakes = |args: &[&str]| tokio::task::block_in_place(|| openssl_handshake(port, &ca, args));
    assert!(shakes(&[
        "-tls1_2",
        "-cipher",
        "ECDHE-ECDSA-AES256-GCM-SHA384"
    ]));
    assert!(!shakes(&[
        "-tls1_2",
        "-cipher",
        "ECDHE-ECDSA-AES128-GCM-SHA256"
    ]));
    assert!(!shakes(&[
        "-tls1_2",
        "-cipher",
        "ECDHE-ECDSA-CHACHA20-POLY1305"
    ]));
    assert!(shakes(&["-tls1_3"]), "TLS 1.3 suites stay on, as in Go");
}
