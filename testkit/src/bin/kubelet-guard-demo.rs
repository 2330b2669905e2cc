//! The demo (`cargo demo`): development certificates, a stand-in kubelet
//! on loopback, and the gateway in front of it with static rules — then
//! ready-to-paste `curl` commands that show each decision. It lives in the
//! test kit because the stand-in kubelet does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use kubelet_guard::app::Gateway;
use kubelet_guard::certs::{self, DevCertsRequest};
use kubelet_guard::config::{LogFormat, Settings};
use kubelet_guard_testkit::kubelet::{DemoKubelet, DemoKubeletOptions, mutual_tls};

const NODE_NAME: &str = "demo-node";

/// Run the gateway in front of a stand-in kubelet on loopback, with
/// development certificates, and print curl commands to try.
#[derive(Debug, Parser)]
#[command(name = "kubelet-guard-demo")]
struct Demo {
    /// Where certificates and the generated config go.
    #[arg(long, default_value = "kubelet-guard-demo")]
    dir: PathBuf,
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:10443")]
    listen: SocketAddr,
}

/// Makes everything under `--dir`, serves on `--listen` until Ctrl-C.
fn main() -> anyhow::Result<()> {
    let demo = Demo::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    kubelet_guard::logging::init(LogFormat::Text);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(&demo.dir, demo.listen))
}

async fn serve(dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    certs::write_dev_certs(
        dir,
        &DevCertsRequest {
            node_name: NODE_NAME.into(),
            ips: vec![listen.ip()],
            dns_names: vec!["localhost".into()],
        },
    )?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;

    let kubelet = DemoKubelet::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        DemoKubeletOptions {
            tls: Some(mutual_tls(
                &dir.join("kubelet.crt"),
                &dir.join("kubelet.key"),
                &dir.join("ca.crt"),
            )?),
            ..DemoKubeletOptions::default()
        },
    )
    .await
    .context("cannot start the demo kubelet")?;

    let config_path = dir.join("kubelet-guard.yaml");
    std::fs::write(&config_path, demo_config(&dir, listen, kubelet.addr()))
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = Settings::from_file(&config_path)?.validate()?;
    let gateway = Gateway::bind(config).await?;

    print_walkthrough(
        &dir,
        gateway.local_addr(),
        gateway.admin_addr(),
        &config_path,
    );

    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    gateway.run(shutdown).await;
    drop(kubelet);
    Ok(())
}

fn demo_config(dir: &Path, listen: SocketAddr, kubelet: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "# Written by the kubelet-guard demo (`cargo demo`).
nodeName: {NODE_NAME}
secureListenAddress: {listen}
tlsCertFile: {d}/serving.crt
tlsPrivateKeyFile: {d}/serving.key
clientCaFile: {d}/ca.crt
upstream: https://{kubelet}
upstreamCaFile: {d}/ca.crt
upstreamClientCertFile: {d}/gateway-client.crt
upstreamClientKeyFile: {d}/gateway-client.key
streamingAuthz: strict
adminListenAddress: {admin}
shutdownGracePeriod: 2s
logFormat: text
# The demo has no apiserver: static rules decide, bearer tokens are ignored.
authorizationMode: Static
authenticationTokenWebhook: false
authorization:
  static:
    # The apiserver may do anything (kubeadm's kubelet client identity).
    - user: {apiserver}
      verbs: ['*']
      subresources: ['*']
    # Monitoring may read: metrics, stats and `get nodes/proxy`, which in
    # strict mode is not enough to exec.
    - group: {monitoring}
      verbs: [get]
      subresources: [metrics, stats, proxy]
",
        apiserver = certs::APISERVER_USER,
        admin = SocketAddr::new(listen.ip(), listen.port() + 1),
        monitoring = certs::MONITORING_GROUP,
    )
}

fn print_walkthrough(dir: &Path, addr: SocketAddr, admin: SocketAddr, config: &Path) {
    let d = dir.display();
    let url = format!("https://{addr}");
    let apiserver = format!(
        "--cacert {d}/ca.crt --cert {d}/apiserver-client.crt --key {d}/apiserver-client.key"
    );
    let monitoring =
        format!("--cacert {d}/ca.crt --cert {d}/monitoring.crt --key {d}/monitoring.key");
    let websocket = "-H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
                     -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' -H 'Sec-WebSocket-Protocol: v4.channel.k8s.io'";
    println!(
        "
kubelet-guard demo: gateway on {url}, in front of a stand-in kubelet.
Certificates and config ({}) are in {d}.

# 1. Pods, as the apiserver (200):
curl -s {apiserver} {url}/pods

# 2. A log that follows, streamed line by line (Ctrl-C to stop):
curl -sN {apiserver} '{url}/containerLogs/default/demo/app?follow=true'

# 3. Monitoring may `get nodes/proxy`, but a WebSocket exec (a GET) needs `create` (403):
curl -si --http1.1 {monitoring} {websocket} '{url}/exec/default/demo/app?command=id&output=1'

# 4. The same exec as the apiserver switches protocols (101, then an echo; Ctrl-C to stop):
curl -si --http1.1 -N {apiserver} {websocket} '{url}/exec/default/demo/app?command=id&output=1'

# 5. No client certificate (401):
curl -si --cacert {d}/ca.crt {url}/pods

# 6. A certificate from another CA with the apiserver's name (401):
curl -si --cacert {d}/ca.crt --cert {d}/untrusted-client.crt --key {d}/untrusted-client.key {url}/pods

# 7. Readiness and metrics on the admin port (plain HTTP, loopback):
curl -s http://{admin}/readyz; curl -s http://{admin}/metrics | grep kubelet_guard_requests

Access log lines (one per request) appear below. Ctrl-C stops the demo.
",
        config.display()
    );
}
