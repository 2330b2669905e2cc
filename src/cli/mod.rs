//! The command line: `serve`, `explain`, `certs dev` and `certs sign`.

pub mod explain;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use kubelet_guard::app::Gateway;
use kubelet_guard::certs::{self, DevCertsRequest};
use kubelet_guard::config::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "kubelet-guard",
    version,
    about = "Authenticating, authorizing gateway in front of the kubelet"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    // The parsed flags here include their defaults; `serve` reads the
    // matches instead, to tell a flag given from a default.
    Serve(Box<Settings>),
    /// Show what the gateway would check for a request: its attributes, the
    /// SubjectAccessReviews it would send (YAML) and the RBAC that allows it.
    /// Contacts nothing.
    Explain(explain::ExplainArgs),
    /// Make certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Sign a certificate signing request (PEM, e.g. from a pending
    /// kubelet-serving CSR) with a CA, as a serving certificate. For
    /// development clusters without a signer; prints the certificate.
    Sign {
        /// CA certificate (PEM).
        #[arg(long)]
        ca_cert: PathBuf,
        /// CA key (PEM).
        #[arg(long)]
        ca_key: PathBuf,
        /// The request (PEM); - for stdin.
        #[arg(long)]
        csr: PathBuf,
        /// How long the certificate is valid.
        #[arg(long, default_value = "8760h")]
        duration: kubelet_guard::config::GoDuration,
    },
    /// A development CA, a serving certificate for the node, client
    /// certificates for the apiserver, a monitoring identity and the
    /// gateway, and an impostor from another CA. Not for production.
    Dev {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The node the serving certificate is for (CN=system:node:<name>).
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        /// IP SANs of the serving certificate (the addresses the apiserver dials).
        #[arg(long = "ip", value_name = "IP", default_value = "127.0.0.1")]
        ips: Vec<IpAddr>,
        /// DNS SANs of the serving certificate.
        #[arg(long = "dns", value_name = "NAME")]
        dns_names: Vec<String>,
    },
}

/// `flags`: the `serve` subcommand's matches.
pub fn serve(flags: &clap::ArgMatches) -> anyhow::Result<()> {
    // Configuration errors go to stderr before any logging is set up.
    let config = Settings::load(flags)?.validate()?;
    kubelet_guard::logging::init(config.log_format);
    runtime()?.block_on(async {
        let gateway = Gateway::bind(config).await.context("cannot start")?;
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        gateway.run(shutdown).await;
        Ok(())
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn certs_dev(
    out: PathBuf,
    node_name: String,
    ips: Vec<IpAddr>,
    dns_names: Vec<String>,
) -> anyhow::Result<()> {
    certs::write_dev_certs(
        &out,
        &DevCertsRequest {
            node_name,
            ips,
            dns_names,
        },
    )?;
    println!("wrote development certificates to {}", out.display());
    Ok(())
}

pub fn certs_sign(
    ca_cert: &Path,
    ca_key: &Path,
    csr: &Path,
    duration: Duration,
) -> anyhow::Result<()> {
    let read = |path: &Path| -> anyhow::Result<String> {
        if path == Path::new("-") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            Ok(text)
        } else {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        }
    };
    let authority = certs::Authority::from_pem(&read(ca_cert)?, &read(ca_key)?)?;
    print!(
        "{}",
        certs::sign_serving_request(&authority, &read(csr)?, duration)?
    );
    Ok(())
}

/// SIGTERM (the kubelet stopping the pod) or SIGINT starts a graceful shutdown.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        tracing::warn!("cannot listen for SIGTERM");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
