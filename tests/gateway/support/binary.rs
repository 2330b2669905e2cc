//! The `kubelet-guard` binary itself, started as an operator runs it.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use super::{Certs, NODE};

pub const BINARY: &str = env!("CARGO_BIN_EXE_kubelet-guard");

/// The binary, started as `serve` with dev certificates in front of a
/// stand-in kubelet, authorizing `system:masters` by static rule; its
/// stdout (JSON log lines) readable.
pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    pub lines: Lines<BufReader<ChildStdout>>,
    /// The log lines before the `serving` line (start-up warnings).
    pub startup: Vec<Value>,
}

impl Running {
    pub async fn start(certs: &Certs, kubelet: SocketAddr) -> Running {
        Running::start_with(
            certs,
            kubelet,
            "authorizationMode: Static\nauthenticationTokenWebhook: false\n",
        )
        .await
    }

    /// Like [`Running::start`], with `modes` (YAML lines) choosing how it
    /// authenticates and authorizes instead of static rules only — e.g.
    /// `authorizationMode: Webhook` and a `kubeconfig` for a fake apiserver.
    pub async fn start_with(certs: &Certs, kubelet: SocketAddr, modes: &str) -> Running {
        let d = certs.dir().display();
        let config = certs.path("config.yaml");
        std::fs::write(
            &config,
            format!(
                "nodeName: {NODE}\nsecureListenAddress: 127.0.0.1:0\nadminListenAddress: 127.0.0.1:0\n\
                 tlsCertFile: {d}/serving.crt\ntlsPrivateKeyFile: {d}/serving.key\nclientCaFile: {d}/ca.crt\n\
                 upstream: https://{kubelet}\nupstreamCaFile: {d}/ca.crt\n\
                 upstreamClientCertFile: {d}/gateway-client.crt\nupstreamClientKeyFile: {d}/gateway-client.key\n\
                 {modes}shutdownGracePeriod: 5s\n\
                 authorization:\n  static:\n    - group: system:masters\n      verbs: ['*']\n      subresources: ['*']\n"
            ),
        )
        .unwrap();
        let mut child = tokio::process::Command::new(BINARY)
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut running = Running {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            lines,
            startup: Vec::new(),
        };
        let serving = loop {
            let line = running.next_json().await;
            if line["message"] == "serving" {
                break line;
            }
            running.startup.push(line);
        };
        running.addr = serving["address"].as_str().unwrap().parse().unwrap();
        running
    }

    pub async fn next_json(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("a log line within 10s")
            .unwrap()
            .expect("stdout open");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        let pid = self.child.id().unwrap();
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    }
}
