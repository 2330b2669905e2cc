//! The `kubelet-guard` binary as an operator runs it: configuration errors
//! name the setting, the access log is JSON on stdout without query strings,
//! and SIGTERM ends it cleanly.

use std::path::Path;
use std::time::{Duration, Instant};

use kubelet_guard::config::Settings;
use kubelet_guard_testkit::kubelet::{DemoKubelet, DemoKubeletOptions};

use crate::support::binary::{BINARY, Running};
use crate::support::*;

fn serve(args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(BINARY)
        .arg("serve")
        .args(args)
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_documented_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kubelet-guard.yaml");
    let mut settings = Settings::from_file(&path).expect("config/kubelet-guard.yaml parses");
    settings.node.node_name = Some("node-1".into());
    let config = settings
        .validate()
        .expect("config/kubelet-guard.yaml validates");
    assert_eq!(config.listen, "0.0.0.0:10250".parse().unwrap());
    assert!(!config.static_rules.is_empty());
    assert_eq!(config.limits.idle_timeout, Duration::from_secs(90));
}

#[test]
fn configuration_errors_name_the_setting_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let base = [
        "--tls-cert-file",
        "/x/tls.crt",
        "--tls-private-key-file",
        "/x/tls.key",
        "--upstream-ca-file",
        "/x/ca",
    ];
    let with = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        serve(&args)
    };

    let cases: Vec<((i32, String), &str)> = vec![
        (
            with(&[]),
            "--node-name (nodeName in the config file): required",
        ),
        (with(&["--node-name", "Node_1"]), "is not a valid node name"),
        (
            with(&["--node-name", "n", "--review-timeout", "soon"]),
            "\"soon\" is not a duration",
        ),
        (
            with(&["--node-name", "n", "--tls-min-version", "VersionTLS10"]),
            "TLS 1.0 and 1.1 are broken",
        ),
        (
            with(&["--node-name", "n", "--streaming-authz", "loose"]),
            "invalid value 'loose'",
        ),
        (
            with(&["--node-name", "n", "--idle-timeout", "0s"]),
            "--idle-timeout (idleTimeout in the config file): must be more than 0s",
        ),
        (
            with(&["--node-name", "n", "--upstream", "http://10.0.0.1:10250"]),
            "only allowed to a kubelet on loopback",
        ),
        (
            with(&[
                "--node-name",
                "n",
                "--config",
                &file("typo.yaml", "tlsCertFil: /x\n"),
            ]),
            "unknown field `tlsCertFil`",
        ),
        (
            with(&[
                "--node-name",
                "n",
                "--config",
                &file(
                    "rule.yaml",
                    "authorization:\n  static:\n    - user: a\n      verbs: [list]\n      subresources: [proxy]\n",
                ),
            ]),
            "rule 0: unknown verb \"list\"",
        ),
        (
            with(&[
                "--node-name",
                "n",
                "--authorization-mode",
                "Static",
                "--authentication-token-webhook=false",
            ]),
            "cannot read /x/tls.crt",
        ),
    ];
    for ((code, stderr), expected) in cases {
        assert_ne!(code, 0, "{expected}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_a_json_access_log_and_stops_cleanly_on_sigterm() {
    let certs = Certs::new();
    let kubelet = start_kubelet(&certs).await;
    let mut running = Running::start(&certs, kubelet.addr()).await;
    let addr = running.addr;
    let mut client = Http1::connect(&certs, addr, &apiserver()).await;
    let secret_query = "/exec/default/demo/app?command=echo&command=hunter2";
    let response = client
        .send(http::Request::post(secret_query).body(empty()).unwrap())
        .await;
    assert_eq!(response.status(), 400, "the demo kubelet wants an upgrade");
    body_text(response).await;
    let response = client
        .send(http::Request::get("/pods?watch=1").body(empty()).unwrap())
        .await;
    let body = body_text(response).await;

    let mut access = Vec::new();
    while access.len() < 2 {
        let line = running.next_json().await;
        if line["target"] == "access" {
            access.push(line);
        }
    }
    let exec = &access[0];
    assert_eq!(exec["message"], "request");
    assert_eq!(exec["user"], "kube-apiserver-kubelet-client");
    // The reviewed identity: the O, then the group adder's (issue 14).
    assert_eq!(exec["groups"], "system:masters,system:authenticated");
    assert_eq!(exec["authn"], "x509");
    assert_eq!(exec["method"], "POST");
    assert_eq!(exec["path"], "/exec/default/demo/app", "no query string");
    assert_eq!(exec["verb"], "create");
    assert_eq!(exec["subresources"], "proxy");
    assert_eq!(exec["decision"], "allowed");
    assert_eq!(exec["source"], "static");
    assert_eq!(exec["status"], 400);
    assert!(exec["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(exec["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(exec["timestamp"].is_string());
    assert!(
        !exec.to_string().contains("hunter2"),
        "the exec command leaked: {exec}"
    );
    let pods = &access[1];
    assert_eq!(
        (pods["path"].as_str(), pods["status"].as_u64()),
        (Some("/pods"), Some(200))
    );
    assert_eq!(pods["bytes_out"].as_u64(), Some(body.len() as u64));

    let pid = running.child.id().unwrap().to_string();
    let sent = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(10), running.child.wait())
        .await
        .expect("exits within 10s")
        .unwrap();
    println!("SIGTERM to exit: {:?}", sent.elapsed());
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_descriptors_return_to_baseline_after_streams_aborts_and_a_dying_kubelet() {
    let certs = Certs::new();
    let kubelet = start_kubelet(&certs).await;
    let running = Running::start(&certs, kubelet.addr()).await;
    let addr = running.addr;
    // The reloader's inotify and the admin listener come up just after the
    // "serving" line: take the baseline once the count is steady.
    let mut baseline = running.open_fds();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = running.open_fds();
        if again == baseline {
            break;
        }
        baseline = again;
    }

    for _ in 0..30 {
        let mut client = Http1::connect(&certs, addr, &apiserver()).await;
        let response = client
            .send(http::Request::get("/pods").body(empty()).unwrap())
            .await;
        body_text(response).await;
    }
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut stream = Raw::connect(&certs, addr, &apiserver(), &[b"http/1.1"]).await;
        stream
            .write(spdy_request("/exec/default/demo/app?command=sh").as_bytes())
            .await;
        let head = stream.read_head().await.unwrap();
        assert_eq!(head.status, 101);
        stream.write(b"ping").await;
        stream.read_exact_after(head.rest, 4).await;
        streams.push(stream);
    }
    for _ in 0..10 {
        let mut upload = Raw::connect(&certs, addr, &apiserver(), &[b"http/1.1"]).await;
        upload
            .write(b"POST /run/default/demo/app HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial")
            .await;
    }
    let mut follow = Http1::connect(&certs, addr, &apiserver()).await;
    let log = follow
        .send(
            http::Request::get("/containerLogs/default/demo/app?follow=true")
                .body(empty())
                .unwrap(),
        )
        .await;
    let busy = running.open_fds();
    assert!(
        busy > baseline + 20,
        "{busy} fds under load, {baseline} idle"
    );

    // The kubelet dies under the open streams and the follow; the callers go.
    kubelet.stop();
    drop(streams);
    drop(log);
    drop(follow);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut now = running.open_fds();
    while now != baseline && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = running.open_fds();
    }
    println!("file descriptors: {baseline} idle, {busy} under load, {now} after");

    assert_eq!(now, baseline, "file descriptors leaked");
}

async fn start_kubelet(certs: &Certs) -> DemoKubelet {
    let options = DemoKubeletOptions {
        log_interval: Duration::from_millis(20),
        ..Default::default()
    };
    start_tls_kubelet(certs, "127.0.0.1:0".parse().unwrap(), options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_warns_about_a_serving_certificate_that_misses_the_node_ip() {
    // Issue 14, part 4: the dev serving certificate carries IP:127.0.0.1
    // and DNS:localhost, not 10.0.0.5.
    let certs = Certs::new();
    let kubelet = start_kubelet(&certs).await;
    let running = Running::start_with(
        &certs,
        kubelet.addr(),
        "authorizationMode: Static\nauthenticationTokenWebhook: false\nnodeIp: [10.0.0.5, 127.0.0.1]\nnodeHostname: [localhost]\n",
    )
    .await;
    let warnings: Vec<_> = running
        .startup
        .iter()
        .filter(|l| l["level"] == "WARN" && l.get("missing_sans").is_some())
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", running.startup);
    assert_eq!(warnings[0]["missing_sans"], "IP:10.0.0.5");
}

#[test]
fn the_binary_refuses_to_start_on_a_gap_when_asked() {
    let certs = Certs::new();
    let d = certs.dir().display();
    let (code, stderr) = serve(&[
        "--node-name",
        NODE,
        "--tls-cert-file",
        &format!("{d}/serving.crt"),
        "--tls-private-key-file",
        &format!("{d}/serving.key"),
        "--upstream-ca-file",
        &format!("{d}/ca.crt"),
        "--authorization-mode",
        "Static",
        "--authentication-token-webhook=false",
        "--secure-listen-address",
        "127.0.0.1:0",
        "--admin-listen-address",
        "127.0.0.1:0",
        "--node-ip",
        "10.0.0.5",
        "--serving-cert-coverage",
        "refuse",
    ]);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("does not cover IP:10.0.0.5"), "{stderr}");
}

#[test]
fn the_text_log_has_no_colour_codes_when_stdout_is_not_a_terminal() {
    // Issue 16, part 6: a file, a pipe or a container log gets plain text.
    // The gap warning below is logged at start, so there is a line to read.
    let certs = Certs::new();
    let d = certs.dir().display();
    let mut child = std::process::Command::new(BINARY)
        .args(["serve", "--node-name", NODE, "--log-format", "text"])
        .args(["--tls-cert-file", &format!("{d}/serving.crt")])
        .args(["--tls-private-key-file", &format!("{d}/serving.key")])
        .args(["--upstream-ca-file", &format!("{d}/ca.crt")])
        .args(["--authorization-mode", "Static"])
        .arg("--authentication-token-webhook=false")
        .args(["--secure-listen-address", "127.0.0.1:0"])
        .args(["--admin-listen-address", "127.0.0.1:0"])
        .args(["--node-ip", "10.0.0.5"])
        .env_remove("NODE_NAME")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut text).unwrap();
        text
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    let text = reader.join().unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("IP:10.0.0.5"),
        "no gap warning logged: {text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape in a piped log: {text:?}"
    );
}
