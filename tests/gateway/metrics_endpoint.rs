//! The secure metrics listener, over real TLS: a scraper with a
//! ServiceAccount token or a client certificate gets `/metrics` only when a
//! SubjectAccessReview for the non-resource `get /metrics` allows it; the
//! answers for no credentials, a denial and an apiserver that cannot answer
//! are those of the kube-scheduler's secure port (401, 403, 500).

use std::collections::HashMap;
use std::net::SocketAddr;

use http::Request;
use tokio_util::sync::CancellationToken;

use kubelet_guard::app::Gateway;
use kubelet_guard::certs::{MONITORING_GROUP, MONITORING_USER};
use kubelet_guard::config::{AuthorizationMode, ListenSetting, Settings};

use crate::support::apiserver::{Behaviour, FakeApiserver, TokenUser};
use crate::support::{
    Certs, Http1, Identity, body_text, empty, gateway_settings, monitoring, start_tls_kubelet,
};

const PROMETHEUS_TOKEN: &str = "prometheus-sa-token";
const PROMETHEUS_USER: &str = "system:serviceaccount:monitoring:prometheus-k8s";

struct Scrape {
    certs: Certs,
    api: FakeApiserver,
    metrics: SocketAddr,
    admin: SocketAddr,
    shutdown: CancellationToken,
    _kubelet: kubelet_guard_testkit::kubelet::DemoKubelet,
}

impl Drop for Scrape {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Scrape {
    /// A gateway with the secure metrics listener on a free loopback port,
    /// asking the fake apiserver, which allows `get /metrics` to the
    /// Prometheus ServiceAccount and nobody else.
    async fn start(adjust: impl FnOnce(&mut Settings)) -> Scrape {
        let certs = Certs::new();
        let kubelet = start_tls_kubelet(
            &certs,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Default::default(),
        )
        .await;
        let api = FakeApiserver::start(&certs).await;
        api.add_token(
            PROMETHEUS_TOKEN,
            TokenUser {
                username: PROMETHEUS_USER.into(),
                uid: "uid-1".into(),
                groups: vec!["system:serviceaccounts".into()],
                extra: HashMap::new(),
                audiences: vec![],
            },
        );
        api.set_policy(|ask| {
            ask.user == PROMETHEUS_USER && ask.verb == "get" && ask.path == "/metrics"
        });
        let mut settings = gateway_settings(&certs, kubelet.addr());
        settings.apiserver.kubeconfig = Some(api.write_kubeconfig(&certs, "gateway-sa-token-1"));
        settings.authz.authorization_mode = AuthorizationMode::Webhook;
        settings.authn.authentication_token_webhook = true;
        settings.authz.authorization = None;
        settings.operations.metrics_listen_address =
            ListenSetting::At("127.0.0.1:0".parse().unwrap());
        adjust(&mut settings);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let gateway = Gateway::bind(settings.validate().unwrap()).await.unwrap();
        let metrics = gateway.metrics_addr().expect("the metrics listener is on");
        let admin = gateway.admin_addr();
        let shutdown = CancellationToken::new();
        tokio::spawn(gateway.run(shutdown.clone()));
        Scrape {
            certs,
            api,
            metrics,
            admin,
            shutdown,
            _kubelet: kubelet,
        }
    }

    async fn get(&self, who: &Identity, path: &str, token: Option<&str>) -> (u16, String) {
        let mut client = Http1::connect(&self.certs, self.metrics, who).await;
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = client.send(request.body(empty()).unwrap()).await;
        let status = response.status().as_u16();
        (status, body_text(response).await)
    }

    /// The loopback admin listener's exposition (no credentials needed).
    async fn admin_metrics(&self) -> String {
        let tcp = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = Request::get("/metrics")
            .header("host", "admin")
            .body(empty())
            .unwrap();
        body_text(sender.send_request(request).await.unwrap()).await
    }
}

#[tokio::test]
async fn a_service_account_token_allowed_by_a_non_resource_review_scrapes_and_is_cached() {
    let env = Scrape::start(|_| {}).await;
    let (status, body) = env
        .get(&Identity::Nobody, "/metrics", Some(PROMETHEUS_TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("# TYPE kubelet_guard_token_cache_hits_total counter"),
        "{body}"
    );
    let reviews = env.api.subject_access_reviews();
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    let spec = &reviews[0]["spec"];
    assert_eq!(spec["user"], PROMETHEUS_USER);
    assert_eq!(
        spec["nonResourceAttributes"],
        serde_json::json!({"path": "/metrics", "verb": "get"})
    );
    assert!(spec.get("resourceAttributes").is_none(), "{spec}");

    let (status, _) = env
        .get(&Identity::Nobody, "/metrics", Some(PROMETHEUS_TOKEN))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        env.api.subject_access_reviews().len(),
        1,
        "the second scrape is answered from the decision cache"
    );
    // Each scrape counted by its status.
    let text = env.admin_metrics().await;
    assert!(
        text.contains(r#"kubelet_guard_metrics_scrapes_total{code="200"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn no_credentials_is_401_and_asks_nothing() {
    let env = Scrape::start(|_| {}).await;
    for path in ["/metrics", "/healthz"] {
        assert_eq!(
            env.get(&Identity::Nobody, path, None).await,
            (401, "Unauthorized\n".into()),
            "{path}"
        );
    }
    let (status, _) = env
        .get(&Identity::Nobody, "/metrics", Some("forged-token"))
        .await;
    assert_eq!(status, 401);
    assert!(env.api.subject_access_reviews().is_empty());
}

#[tokio::test]
async fn a_client_certificate_the_review_denies_is_403_with_a_short_body() {
    let env = Scrape::start(|_| {}).await;
    let (status, body) = env.get(&monitoring(), "/metrics", None).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        format!("Forbidden (user={MONITORING_USER}, verb=get, path=/metrics)\n")
    );
    let reviews = env.api.subject_access_reviews();
    assert_eq!(reviews[0]["spec"]["user"], MONITORING_USER);
    assert!(
        reviews[0]["spec"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == MONITORING_GROUP),
        "the certificate's groups are sent: {reviews:?}"
    );

    // Allowed by group, once the policy says so (denials expire after 30s,
    // so a new gateway shows the allow).
    let env = Scrape::start(|_| {}).await;
    env.api.set_policy(|ask| {
        ask.groups.iter().any(|g| g == MONITORING_GROUP) && ask.path == "/metrics"
    });
    assert_eq!(env.get(&monitoring(), "/metrics", None).await.0, 200);
}

#[tokio::test]
async fn an_apiserver_that_cannot_answer_is_500_and_counted_as_the_infrastructures() {
    let env = Scrape::start(|_| {}).await;
    env.api.set_behaviour(Behaviour::Status(401));
    let (status, body) = env.get(&monitoring(), "/metrics", None).await;
    assert_eq!(status, 500);
    assert_eq!(
        body,
        format!("Authorization error (user={MONITORING_USER}, verb=get, path=/metrics)\n")
    );
    let text = env.admin_metrics().await;
    assert!(
        text.contains(r#"kubelet_guard_apiserver_review_failures_total{kind="subjectaccessreview",cause="gateway_credential_rejected"} 1"#),
        "{text}"
    );
    // Not cached: the next scrape after the apiserver recovers is answered.
    env.api.set_behaviour(Behaviour::Normal);
    env.api.set_policy(|ask| ask.path == "/metrics");
    assert_eq!(env.get(&monitoring(), "/metrics", None).await.0, 200);
}

#[tokio::test]
async fn only_get_metrics_is_served() {
    let env = Scrape::start(|_| {}).await;
    let (status, body) = env
        .get(&Identity::Nobody, "/readyz", Some(PROMETHEUS_TOKEN))
        .await;
    assert_eq!(status, 404, "{body}");
    let mut client = Http1::connect(&env.certs, env.metrics, &Identity::Nobody).await;
    let request = Request::post("/metrics")
        .header("authorization", format!("Bearer {PROMETHEUS_TOKEN}"))
        .body(empty())
        .unwrap();
    assert_eq!(client.send(request).await.status().as_u16(), 405);
}

#[tokio::test]
async fn plain_http_gets_no_metrics() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Scrape::start(|_| {}).await;
    let mut tcp = tokio::net::TcpStream::connect(env.metrics).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tcp.read_to_end(&mut answer),
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("kubelet_guard_"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn the_listener_is_off_by_default_and_when_set_to_off() {
    for setting in [None, Some(ListenSetting::Off)] {
        let certs = Certs::new();
        let mut settings = gateway_settings(&certs, "127.0.0.1:1".parse().unwrap());
        if let Some(setting) = setting {
            settings.operations.metrics_listen_address = setting;
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let gateway = Gateway::bind(settings.validate().unwrap()).await.unwrap();
        assert_eq!(gateway.metrics_addr(), None);
    }
}
