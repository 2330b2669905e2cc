//! Client-side options every load tool shares.

use std::path::PathBuf;

use crate::tls::Client;

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// host:port of the target (a proxy, or the upstream itself).
    #[arg(long)]
    pub addr: String,
    /// The name its certificate is verified for.
    #[arg(long, default_value = "127.0.0.1")]
    pub server_name: String,
    #[arg(long)]
    pub cacert: PathBuf,
    #[arg(long)]
    pub cert: PathBuf,
    #[arg(long)]
    pub key: PathBuf,
}

impl Target {
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.cacert, &self.cert, &self.key, &self.server_name)
    }
}
