//! Request → authorization attributes, as the kubelet computes them
//! (`pkg/kubelet/server/auth.go`, `GetRequestAttributes`), then stricter for
//! the streaming endpoints.
//!
//! Every request is checked against the resource `nodes/<subresource>` named
//! after this node (group "", version v1). The path picks the subresources, in
//! the order they are tried; the first one allowed wins. Hold this file next to
//! the kubelet's: the table below is its `switch`, the test at the bottom is
//! its `auth_test.go`.

use std::fmt;

use http::Method;
use serde::Serialize;

pub use crate::admit::method::{MethodNotAllowed, Verb};

/// A subresource of `nodes` that guards part of the kubelet API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Subresource {
    Stats,
    Metrics,
    Log,
    Checkpoint,
    Pods,
    Healthz,
    Configz,
    Statusz,
    Proxy,
}

impl Subresource {
    pub const ALL: [Subresource; 9] = [
        Subresource::Stats,
        Subresource::Metrics,
        Subresource::Log,
        Subresource::Checkpoint,
        Subresource::Pods,
        Subresource::Healthz,
        Subresource::Configz,
        Subresource::Statusz,
        Subresource::Proxy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Subresource::Stats => "stats",
            Subresource::Metrics => "metrics",
            Subresource::Log => "log",
            Subresource::Checkpoint => "checkpoint",
            Subresource::Pods => "pods",
            Subresource::Healthz => "healthz",
            Subresource::Configz => "configz",
            Subresource::Statusz => "statusz",
            Subresource::Proxy => "proxy",
        }
    }

    pub fn parse(name: &str) -> Option<Subresource> {
        Subresource::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl AsRef<str> for Subresource {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Subresource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the streaming endpoints are authorized.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StreamingAuthz {
    /// `/exec`, `/attach`, `/run` and `/portForward` need verb `create`
    /// whatever the method. The kubelet authorizes a WebSocket exec (a GET) as
    /// `get nodes/proxy`, so a read-only identity could run commands.
    #[default]
    Strict,
    /// Exactly the kubelet's mapping: the verb follows the method.
    Kubelet,
}

/// What a request must be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attributes {
    pub verb: Verb,
    /// Tried in order; the first allowed one authorizes the request.
    pub subresources: &'static [Subresource],
}

/// The path prefixes (matched by whole segments) that name a subresource other
/// than `proxy`, as the kubelet (1.37) maps them. The fine-grained prefixes of
/// `KubeletFineGrainedAuthz` (GA in 1.36) fall back to `proxy`, so existing
/// RBAC keeps working; the z-pages `/statusz` and `/flagz` were added with
/// their own subresource and no fallback.
const SUBRESOURCE_TABLE: &[(&str, &[Subresource])] = &[
    ("/stats", &[Subresource::Stats]),
    ("/metrics", &[Subresource::Metrics]),
    ("/logs", &[Subresource::Log]),
    ("/checkpoint", &[Subresource::Checkpoint]),
    ("/statusz", &[Subresource::Statusz]),
    ("/flagz", &[Subresource::Configz]),
    ("/pods", &[Subresource::Pods, Subresource::Proxy]),
    ("/runningpods", &[Subresource::Pods, Subresource::Proxy]),
    ("/healthz", &[Subresource::Healthz, Subresource::Proxy]),
    ("/configz", &[Subresource::Configz, Subresource::Proxy]),
];

const PROXY: &[Subresource] = &[Subresource::Proxy];

/// Endpoints that run code in or open a channel into a container.
const STREAMING_PREFIXES: &[&str] = &["/exec", "/attach", "/run", "/portForward"];

/// The kubelet's only endpoints that switch protocols (`/run` answers
/// plainly).
const UPGRADE_PREFIXES: &[&str] = &["/exec", "/attach", "/portForward"];

/// Whether the kubelet may upgrade a request for `path`. Elsewhere an
/// `Upgrade` header is dropped like any hop-by-hop header, so a path a
/// caller may only read can never be turned into a stream.
pub fn is_upgrade_endpoint(path: &str) -> bool {
    UPGRADE_PREFIXES.iter().any(|p| is_subpath(path, p))
}

/// Maps a method and a decoded, already validated path to the attributes
/// the request is authorized with ([`attributes_for`] after the method's
/// verb; a method with none is refused as in admission).
pub fn request_attributes(
    method: &Method,
    path: &str,
    streaming: StreamingAuthz,
) -> Result<Attributes, MethodNotAllowed> {
    let verb = Verb::for_method(method).ok_or_else(|| MethodNotAllowed(method.clone()))?;
    Ok(attributes_for(verb, path, streaming))
}

/// The attributes for a request admitted with `method_verb` (its method's
/// verb) and the decoded `path`.
pub fn attributes_for(method_verb: Verb, path: &str, streaming: StreamingAuthz) -> Attributes {
    let is_streaming = STREAMING_PREFIXES.iter().any(|p| is_subpath(path, p));
    let verb = match streaming {
        StreamingAuthz::Strict if is_streaming => Verb::Create,
        _ => method_verb,
    };
    Attributes {
        verb,
        subresources: subresources_for(path),
    }
}

/// The subresources that guard `path`, in the order they are tried.
pub fn subresources_for(path: &str) -> &'static [Subresource] {
    SUBRESOURCE_TABLE
        .iter()
        .find(|(prefix, _)| is_subpath(path, prefix))
        .map_or(PROXY, |(_, subresources)| subresources)
}

/// The kubelet's `isSubpath`: `path` is `base` or lies below it, matched by
/// whole segments (`/metricsx` is not under `/metrics`).
fn is_subpath(path: &str, base: &str) -> bool {
    let base = base.strip_suffix('/').unwrap_or(base);
    match path.strip_prefix(base) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Subresource::*;

    /// Every kubelet route (from its `auth_test.go`, 1.37) with the
    /// subresources the kubelet checks with `KubeletFineGrainedAuthz` on (GA),
    /// plus whether the route is a streaming endpoint.
    const KUBELET_ROUTES: &[(&str, &[Subresource], bool)] = &[
        ("/attach/ns/pod/container", &[Proxy], true),
        ("/attach/ns/pod/uid/container", &[Proxy], true),
        ("/checkpoint/ns/pod/container", &[Checkpoint], false),
        ("/configz", &[Configz, Proxy], false),
        ("/statusz", &[Statusz], false),
        ("/flagz", &[Configz], false),
        ("/containerLogs/ns/pod/container", &[Proxy], false),
        ("/debug/flags/v", &[Proxy], false),
        ("/debug/pprof/profile", &[Proxy], false),
        ("/exec/ns/pod/container", &[Proxy], true),
        ("/exec/ns/pod/uid/container", &[Proxy], true),
        ("/healthz", &[Healthz, Proxy], false),
        ("/healthz/log", &[Healthz, Proxy], false),
        ("/healthz/ping", &[Healthz, Proxy], false),
        ("/healthz/syncloop", &[Healthz, Proxy], false),
        ("/logs/", &[Log], false),
        ("/logs/kubelet.log", &[Log], false),
        ("/metrics", &[Metrics], false),
        ("/metrics/slis", &[Metrics], false),
        ("/metrics/cadvisor", &[Metrics], false),
        ("/metrics/probes", &[Metrics], false),
        ("/metrics/resource", &[Metrics], false),
        ("/pods", &[Pods, Proxy], false),
        ("/pods/", &[Pods, Proxy], false),
        ("/portForward/ns/pod", &[Proxy], true),
        ("/portForward/ns/pod/uid", &[Proxy], true),
        ("/run/ns/pod/container", &[Proxy], true),
        ("/run/ns/pod/uid/container", &[Proxy], true),
        ("/runningpods/", &[Pods, Proxy], false),
        ("/stats/", &[Stats], false),
        ("/stats/summary", &[Stats], false),
        ("/", &[Proxy], false),
    ];

    const METHODS: &[(Method, Verb)] = &[
        (Method::POST, Verb::Create),
        (Method::GET, Verb::Get),
        (Method::HEAD, Verb::Get),
        (Method::PUT, Verb::Update),
        (Method::PATCH, Verb::Patch),
        (Method::DELETE, Verb::Delete),
    ];

    #[test]
    fn every_route_times_every_method_in_kubelet_mode() {
        for (path, subresources, _) in KUBELET_ROUTES {
            for (method, verb) in METHODS {
                let got = request_attributes(method, path, StreamingAuthz::Kubelet);
                let want = Attributes {
                    verb: *verb,
                    subresources,
                };
                assert_eq!(got, Ok(want), "{method} {path}");
            }
        }
    }

    #[test]
    fn every_route_times_every_method_in_strict_mode() {
        for (path, subresources, streaming) in KUBELET_ROUTES {
            for (method, verb) in METHODS {
                let got = request_attributes(method, path, StreamingAuthz::Strict);
                let want = Attributes {
                    verb: if *streaming { Verb::Create } else { *verb },
                    subresources,
                };
                assert_eq!(got, Ok(want), "{method} {path}");
            }
        }
    }

    #[test]
    fn methods_without_a_verb_are_refused() {
        for method in [Method::OPTIONS, Method::TRACE, Method::CONNECT] {
            for mode in [StreamingAuthz::Strict, StreamingAuthz::Kubelet] {
                assert_eq!(
                    request_attributes(&method, "/pods", mode),
                    Err(MethodNotAllowed(method.clone()))
                );
            }
        }
        let custom = Method::from_bytes(b"PROPFIND").unwrap();
        assert!(request_attributes(&custom, "/exec/a/b/c", StreamingAuthz::Strict).is_err());
    }

    #[test]
    fn prefixes_match_whole_segments_only() {
        let cases: &[(&str, &[Subresource])] = &[
            ("/metricsx", &[Proxy]),
            ("/statsd", &[Proxy]),
            ("/logsx/a", &[Proxy]),
            ("/podsx", &[Proxy]),
            ("/runningpodsx", &[Proxy]),
            ("/runningpods", &[Pods, Proxy]),
            ("/healthzz", &[Proxy]),
            ("/checkpoint", &[Checkpoint]),
            ("/Pods", &[Proxy]),
        ];
        for (path, want) in cases {
            assert_eq!(subresources_for(path), *want, "{path}");
        }
        let strict = |p| {
            request_attributes(&Method::GET, p, StreamingAuthz::Strict)
                .unwrap()
                .verb
        };
        assert_eq!(strict("/execute/a/b/c"), Verb::Get);
        assert_eq!(strict("/running/a"), Verb::Get);
        assert_eq!(
            strict("/portforward/a/b"),
            Verb::Get,
            "the kubelet routes only /portForward"
        );
        assert_eq!(strict("/exec"), Verb::Create);
    }

    #[test]
    fn only_exec_attach_and_port_forward_upgrade() {
        for path in ["/exec/a/b/c", "/attach/a/b/c", "/portForward/a/b", "/exec"] {
            assert!(is_upgrade_endpoint(path), "{path}");
        }
        for path in [
            "/run/a/b/c",
            "/containerLogs/a/b/c",
            "/pods",
            "/execute",
            "/portforward/a/b",
            "/",
        ] {
            assert!(!is_upgrade_endpoint(path), "{path}");
        }
    }

    #[test]
    fn subresource_names_round_trip() {
        for s in Subresource::ALL {
            assert_eq!(Subresource::parse(s.as_str()), Some(s));
        }
        assert_eq!(Subresource::parse("nodes"), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn method() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::GET),
            Just(Method::HEAD),
            Just(Method::POST),
            Just(Method::PUT),
            Just(Method::PATCH),
            Just(Method::DELETE),
            Just(Method::OPTIONS),
            "[A-Z]{1,8}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap_or(Method::TRACE)),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just("exec"),
            Just("attach"),
            Just("run"),
            Just("portForward"),
            Just("pods"),
            Just("runningpods"),
            Just("metrics"),
            Just("stats"),
            Just("logs"),
            Just("healthz"),
            Just("configz"),
            Just("statusz"),
            Just("flagz"),
            Just("checkpoint"),
            Just(""),
            Just("x"),
        ];
        proptest::collection::vec(segment, 0..5).prop_map(|s| format!("/{}", s.join("/")))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// In strict mode nothing under a streaming prefix is ever checked
        /// with less than `create`; in both modes at least one subresource is
        /// checked, and `proxy`, when present, is the last resort.
        #[test]
        fn strict_mode_never_lets_a_stream_through_as_a_read(method in method(), path in path()) {
            for mode in [StreamingAuthz::Strict, StreamingAuthz::Kubelet] {
                match request_attributes(&method, &path, mode) {
                    Ok(attributes) => {
                        prop_assert!(!attributes.subresources.is_empty());
                        if let Some(i) = attributes.subresources.iter().position(|s| *s == Subresource::Proxy) {
                            prop_assert_eq!(i, attributes.subresources.len() - 1);
                        }
                        let streaming = ["/exec", "/attach", "/run", "/portForward"].iter().any(|p| is_subpath(&path, p));
                        if mode == StreamingAuthz::Strict && streaming {
                            prop_assert_eq!(attributes.verb, Verb::Create);
                        }
                        if mode == StreamingAuthz::Kubelet {
                            prop_assert_eq!(Some(attributes.verb), Verb::for_method(&method));
                        }
                    }
                    Err(_) => prop_assert!(Verb::for_method(&method).is_none()),
                }
            }
        }
    }
}
