//! The `node` section: which node this gateway stands in front of — its
//! name (the `name` of every SubjectAccessReview, the CSR's subject) and the
//! addresses the apiserver may dial (checked against the serving
//! certificate, requested as SANs in csr mode).

use std::net::IpAddr;

use clap::Args;
use serde::Deserialize;

use super::{ConfigError, declared_defaults};

/// Flags and file keys of the node section.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeSettings {
    /// Name of this node, as in `kubectl get nodes` (the `name` of every
    /// SubjectAccessReview). Required.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// The node's IPs the apiserver may dial (repeat, or comma-separate):
    /// the serving certificate must carry each as an IP SAN (checked at
    /// start and reload); csr: requested as SANs, and with neither this nor
    /// --node-hostname, the Node object's addresses are.
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    pub node_ip: Vec<IpAddr>,

    /// The node's names the apiserver may dial (repeat, or comma-separate):
    /// checked against the DNS SANs like --node-ip; csr: requested as SANs.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub node_hostname: Vec<String>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        declared_defaults()
    }
}

/// The node, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub dns_names: Vec<String>,
}

impl NodeSettings {
    /// Errors: no name, a name that is not a DNS subdomain, a hostname that
    /// is not a DNS name.
    pub fn validate(&self) -> Result<Node, ConfigError> {
        let name = self.node_name.clone().ok_or_else(|| {
            ConfigError::invalid(
                "node-name",
                "required: the name of this node as in `kubectl get nodes` (or set NODE_NAME)",
            )
        })?;
        check_node_name(&name).map_err(|p| ConfigError::invalid("node-name", p))?;
        if let Some(bad) = self
            .node_hostname
            .iter()
            .find(|n| rustls_pki_types::DnsName::try_from(n.as_str()).is_err())
        {
            return Err(ConfigError::invalid(
                "node-hostname",
                format!("{bad:?} is not a DNS name"),
            ));
        }
        Ok(Node {
            name,
            ips: self.node_ip.clone(),
            dns_names: self.node_hostname.clone(),
        })
    }
}

/// Node names are DNS subdomains (RFC 1123), as the apiserver requires.
fn check_node_name(name: &str) -> Result<(), String> {
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(valid_label) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid node name (lowercase letters, digits, '-' and '.', at most 253 characters)"
        ))
    }
}
