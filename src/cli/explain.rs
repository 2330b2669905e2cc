//! `kubelet-guard explain`: the attributes, SubjectAccessReviews and RBAC for
//! one request, printed as YAML documents ready for `kubectl apply --dry-run`.

use std::fmt::Write as _;

use anyhow::Context as _;
use clap::Args;
use http::Method;

use kubelet_guard::authn::Identity;
use kubelet_guard::authz::attributes::StreamingAuthz;
use kubelet_guard::authz::explain::{cluster_role, describe, explain, rbac_table};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The caller's user name.
    #[arg(long, default_value = "system:anonymous")]
    pub user: String,
    /// The caller's groups (repeat for several).
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// The node the gateway guards.
    #[arg(long, env = "NODE_NAME", default_value = "NODE")]
    pub node_name: String,
    #[arg(long, value_enum, default_value_t = StreamingAuthz::Strict)]
    pub streaming_authz: StreamingAuthz,
    /// Print the table of every kubelet endpoint and the RBAC it needs instead.
    #[arg(long, conflicts_with_all = ["method", "path"])]
    pub rbac_table: bool,
    /// GET, POST, PUT, PATCH, DELETE or HEAD.
    #[arg(required_unless_present = "rbac_table")]
    pub method: Option<String>,
    /// The request path (and query), e.g. /exec/default/web-0/app?command=id.
    #[arg(required_unless_present = "rbac_table")]
    pub path: Option<String>,
}

pub fn run(args: &ExplainArgs) -> anyhow::Result<()> {
    if args.rbac_table {
        return print_out(&rbac_table());
    }
    let (Some(method), Some(path)) = (&args.method, &args.path) else {
        anyhow::bail!("give METHOD and PATH, or --rbac-table");
    };
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("{method:?} is not an HTTP method"))?;
    let identity = Identity {
        user: args.user.clone(),
        groups: args.groups.clone(),
        ..Identity::default()
    };
    let e = explain(
        &identity,
        &args.node_name,
        &method,
        path,
        args.streaming_authz,
    )?;

    let mut out = String::new();
    writeln!(out, "# {method} {path}")?;
    writeln!(
        out,
        "# user {} groups {:?}, node {}",
        identity.user, identity.groups, args.node_name
    )?;
    writeln!(out, "# path as the kubelet routes it: {}", e.decoded_path)?;
    writeln!(out, "# needs: {}", describe(&e.attributes))?;
    if e.attributes != e.kubelet_attributes {
        writeln!(
            out,
            "#   (the kubelet itself would accept {}: --streaming-authz=strict asks for more)",
            describe(&e.kubelet_attributes)
        )?;
    }
    writeln!(
        out,
        "# Static rules are checked first; then these reviews are sent in order until one is allowed."
    )?;
    for review in &e.reviews {
        writeln!(out, "---\n{}", serde_saphyr::to_string(review)?.trim_end())?;
    }
    writeln!(
        out,
        "# RBAC that allows it (any one of these roles, bound to the caller):"
    )?;
    for &subresource in e.attributes.subresources {
        let role = cluster_role(e.attributes.verb, subresource);
        writeln!(out, "---\n{}", serde_saphyr::to_string(&role)?.trim_end())?;
    }
    print_out(&out)
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
