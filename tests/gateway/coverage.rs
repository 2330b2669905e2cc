//! Serving-certificate coverage: the certificate checked against
//! --node-ip and --node-hostname at start and on every reload, reported or
//! refused as configured.

use std::time::{Duration, Instant};

use kubelet_guard::certs::{LeafSpec, Usage};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::reloads::{
    SecretDir, pem_der, presented_certificate, read, serve_from_secret_dir, wait_for_metric,
};
use crate::support::*;

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
