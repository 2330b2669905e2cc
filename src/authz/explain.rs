//! What the gateway would check for a request, without contacting anything:
//! the attributes, the SubjectAccessReviews in the order they would be sent,
//! and the RBAC that allows the request. Behind `kubelet-guard explain` and
//! the RBAC table in the README.

use http::Method;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use thiserror::Error;

use super::attributes::{
    Attributes, MethodNotAllowed, StreamingAuthz, Subresource, Verb, request_attributes,
};
use super::sar::review_for;
use crate::admit::path::{PathError, decode_request_path};
use crate::authn::Identity;

#[derive(Debug, Error)]
pub enum ExplainError {
    #[error("the gateway would answer 400: {0}")]
    Path(PathError),
    #[error("the gateway would answer 405: {0}")]
    Method(MethodNotAllowed),
}

/// Everything the gateway decides about one request before asking anyone.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub decoded_path: String,
    pub attributes: Attributes,
    /// What the kubelet itself would check (its verb follows the method).
    pub kubelet_attributes: Attributes,
    pub reviews: Vec<SubjectAccessReview>,
}

pub fn explain(
    identity: &Identity,
    node: &str,
    method: &Method,
    path: &str,
    streaming: StreamingAuthz,
) -> Result<Explanation, ExplainError> {
    let path_only = path.split_once('?').map_or(path, |(p, _)| p);
    let decoded_path = decode_request_path(path_only)
        .map_err(ExplainError::Path)?
        .into_owned();
    let attributes =
        request_attributes(method, &decoded_path, streaming).map_err(ExplainError::Method)?;
    let kubelet_attributes = StreamingAuthz::Kubelet;
    let kubelet_attributes = request_attributes(method, &decoded_path, kubelet_attributes)
        .map_err(ExplainError::Method)?;
    let reviews = attributes
        .subresources
        .iter()
        .map(|&s| review_for(identity, node, attributes.verb, s))
        .collect();
    Ok(Explanation {
        decoded_path,
        attributes,
        kubelet_attributes,
        reviews,
    })
}

/// A ClusterRole that allows `verb` on `nodes/<subresource>`.
pub fn cluster_role(verb: Verb, subresource: Subresource) -> ClusterRole {
    ClusterRole {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(format!("kubelet-{subresource}-{verb}")),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec![format!("nodes/{subresource}")]),
            verbs: vec![verb.as_str().to_owned()],
            ..Default::default()
        }]),
        aggregation_rule: None,
    }
}

/// The kubelet endpoints callers use, for the RBAC table.
pub const ENDPOINTS: &[(&str, &str, &str)] = &[
    (
        "GET",
        "/containerLogs/{ns}/{pod}/{container}",
        "`kubectl logs`",
    ),
    (
        "POST",
        "/exec/{ns}/{pod}/{container}",
        "`kubectl exec` (SPDY)",
    ),
    ("GET", "/exec/{ns}/{pod}/{container}", "exec over WebSocket"),
    (
        "POST",
        "/attach/{ns}/{pod}/{container}",
        "`kubectl attach` (SPDY)",
    ),
    (
        "GET",
        "/attach/{ns}/{pod}/{container}",
        "attach over WebSocket",
    ),
    (
        "POST",
        "/portForward/{ns}/{pod}",
        "`kubectl port-forward` (SPDY)",
    ),
    (
        "GET",
        "/portForward/{ns}/{pod}",
        "port-forward over WebSocket",
    ),
    ("POST", "/run/{ns}/{pod}/{container}", "run a command"),
    (
        "POST",
        "/checkpoint/{ns}/{pod}/{container}",
        "checkpoint a container",
    ),
    ("GET", "/pods", "pods on the node"),
    ("GET", "/runningpods/", "running pods"),
    ("GET", "/stats/summary", "metrics-server"),
    ("GET", "/metrics", "kubelet metrics"),
    ("GET", "/metrics/cadvisor", "cAdvisor metrics"),
    ("GET", "/metrics/resource", "resource metrics"),
    ("GET", "/metrics/probes", "probe metrics"),
    ("GET", "/healthz", "health"),
    ("GET", "/configz", "kubelet configuration"),
    ("GET", "/statusz", "kubelet status page"),
    ("GET", "/flagz", "kubelet flags"),
    ("GET", "/logs/{path}", "node logs"),
    ("GET", "/debug/pprof/{profile}", "profiling"),
];

/// The Markdown table of what each endpoint needs, in strict mode and as the
/// kubelet itself would check it.
pub fn rbac_table() -> String {
    let mut table = String::from(
        "| request | used for | kubelet-guard needs (strict) | the kubelet needs |\n|---|---|---|---|\n",
    );
    for &(method, path, purpose) in ENDPOINTS {
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        let decoded = path.replace(['{', '}'], "");
        let needs = |mode| {
            request_attributes(&method, &decoded, mode)
                .map(|a| describe(&a))
                .unwrap_or_else(|e| e.to_string())
        };
        table.push_str(&format!(
            "| `{method} {path}` | {purpose} | {} | {} |\n",
            needs(StreamingAuthz::Strict),
            needs(StreamingAuthz::Kubelet)
        ));
    }
    table
}

/// "`get nodes/pods` or `get nodes/proxy`".
pub fn describe(attributes: &Attributes) -> String {
    attributes
        .subresources
        .iter()
        .map(|s| format!("`{} nodes/{s}`", attributes.verb))
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_a_websocket_exec_in_strict_mode() {
        let who = Identity {
            user: "prometheus".into(),
            groups: vec!["monitoring".into()],
            ..Identity::default()
        };
        let e = explain(
            &who,
            "node-1",
            &Method::GET,
            "/exec/ns/pod/c?command=id",
            StreamingAuthz::Strict,
        )
        .unwrap();
        assert_eq!(e.decoded_path, "/exec/ns/pod/c");
        assert_eq!(describe(&e.attributes), "`create nodes/proxy`");
        assert_eq!(describe(&e.kubelet_attributes), "`get nodes/proxy`");
        assert_eq!(e.reviews.len(), 1);
        let attrs = e.reviews[0].spec.resource_attributes.as_ref().unwrap();
        assert_eq!(attrs.verb.as_deref(), Some("create"));
        assert_eq!(attrs.name.as_deref(), Some("node-1"));
    }

    #[test]
    fn refuses_what_the_gateway_would_refuse() {
        let who = Identity::default();
        let bad_path = explain(
            &who,
            "n",
            &Method::GET,
            "/exec/../pods",
            StreamingAuthz::Strict,
        );
        assert!(bad_path.unwrap_err().to_string().contains("400"));
        let bad_method = explain(&who, "n", &Method::OPTIONS, "/pods", StreamingAuthz::Strict);
        assert!(bad_method.unwrap_err().to_string().contains("405"));
    }

    #[test]
    fn the_readme_carries_the_current_rbac_table() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("<!-- rbac-table:start -->\n")
            .expect("start marker")
            + 26;
        let end = readme.find("<!-- rbac-table:end -->").expect("end marker");
        assert_eq!(
            &readme[start..end],
            rbac_table(),
            "README.md is out of date: paste `kubelet-guard explain --rbac-table` between the markers"
        );
    }

    #[test]
    fn the_rbac_table_shows_where_strict_mode_differs() {
        let table = rbac_table();
        assert!(table.contains(
            "| `GET /exec/{ns}/{pod}/{container}` | exec over WebSocket | `create nodes/proxy` | `get nodes/proxy` |"
        ));
        assert!(table.contains(
            "| `GET /pods` | pods on the node | `get nodes/pods` or `get nodes/proxy` |"
        ));
    }
}
