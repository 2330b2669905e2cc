//! Everything the gateway counts, registered once and read by the admin
//! listener's `/metrics`. Labels are small, fixed sets (no paths, no users),
//! so the series count stays bounded whatever callers send.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The subresource that allowed the request, or the first one checked
    /// when it was refused; "none" before attributes exist (401, 400, 405).
    pub subresource: &'static str,
    pub verb: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthnLabels {
    /// x509, token, anonymous or none.
    pub method: &'static str,
    /// success; failure (the caller's credential was refused); or error
    /// (it could not be checked: the TokenReview failed).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// caller or infrastructure (`fault::Fault`).
    pub fault: &'static str,
    /// A fixed cause name: no_credentials, bad_certificate, token_rejected,
    /// malformed_token, denied, bad_request, method_not_allowed for the
    /// caller; an `ApiserverCause` label, kubelet_unreachable or
    /// kubelet_bad_answer for the infrastructure.
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewFailureLabels {
    /// subjectaccessreview or tokenreview.
    pub kind: &'static str,
    /// An `ApiserverCause` label (apiserver_unreachable, apiserver_timeout,
    /// gateway_credential_rejected, gateway_forbidden, apiserver_error,
    /// apiserver_bad_response, gateway_credential_unavailable).
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// static, cache or review.
    pub source: &'static str,
    /// allowed, denied or error (the apiserver could not answer).
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// subjectaccessreview or tokenreview.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// to_kubelet or to_caller.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// serving, client_ca or upstream_client.
    pub certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServingGapLabels {
    /// missing_ip_san, missing_dns_san (counts of --node-ip / --node-hostname
    /// values the serving certificate does not cover), not_yet_valid or
    /// expired (1 or 0), as of the last load or reload.
    pub gap: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// serving (certificate, key and client CA), client_ca (with a CSR-issued
    /// serving certificate), upstream_ca, upstream_client or upstream_token.
    pub material: &'static str,
    /// success or failure.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// connect, tls, timeout or protocol (`proxy::UpstreamCause`).
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// denied, failed, vanished, request, certificate or apiserver.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScrapeLabels {
    /// The status of the answer on the secure metrics listener.
    pub code: u16,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub authentications: Family<AuthnLabels, Counter>,
    pub authorizations: Family<AuthzLabels, Counter>,
    pub refusals: Family<RefusalLabels, Counter>,
    pub review_failures: Family<ReviewFailureLabels, Counter>,
    pub token_cache_hits: Counter,
    pub review_duration: Family<ReviewLabels, Histogram, fn() -> Histogram>,
    pub upstream_duration: Histogram,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub connections: Gauge,
    pub upgraded_streams: Gauge,
    pub relayed_bytes: Family<DirectionLabels, Counter>,
    pub certificate_expiry: Family<CertificateLabels, Gauge>,
    pub serving_certificate_gaps: Family<ServingGapLabels, Gauge>,
    pub reloads: Family<ReloadLabels, Counter>,
    pub certificate_rotations: Counter,
    pub csr_failures: Family<ReasonLabels, Counter>,
    pub scrapes: Family<ScrapeLabels, Counter>,
    /// 1 when the last readiness check passed, else 0 (checked on every
    /// `/readyz`, and on its own after 15 s without one).
    pub ready: Gauge,
}

/// 0.5ms … ~4s: reviews and kubelet answers on loopback are fast; slow
/// ones are what the histogram is for.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("kubelet_guard"),
            requests: Family::default(),
            authentications: Family::default(),
            authorizations: Family::default(),
            refusals: Family::default(),
            review_failures: Family::default(),
            token_cache_hits: Counter::default(),
            review_duration: Family::new_with_constructor(latency_histogram),
            upstream_duration: latency_histogram(),
            upstream_errors: Family::default(),
            connections: Gauge::default(),
            upgraded_streams: Gauge::default(),
            relayed_bytes: Family::default(),
            certificate_expiry: Family::default(),
            serving_certificate_gaps: Family::default(),
            reloads: Family::default(),
            certificate_rotations: Counter::default(),
            csr_failures: Family::default(),
            scrapes: Family::default(),
            ready: Gauge::default(),
        };
        let r = &mut metrics.registry;
        r.register(
            "requests",
            "Requests by subresource, verb and status code",
            metrics.requests.clone(),
        );
        r.register(
            "authentications",
            "Authentication attempts by method and result",
            metrics.authentications.clone(),
        );
        r.register(
            "authorization_decisions",
            "Authorization decisions by source (static, cache, review) and decision",
            metrics.authorizations.clone(),
        );
        r.register(
            "refusals",
            "Refused requests by who failed (caller or infrastructure) and cause",
            metrics.refusals.clone(),
        );
        r.register(
            "apiserver_review_failures",
            "TokenReviews and SubjectAccessReviews the apiserver did not answer usably, by cause",
            metrics.review_failures.clone(),
        );
        r.register(
            "token_cache_hits",
            "Bearer tokens answered from the TokenReview cache",
            metrics.token_cache_hits.clone(),
        );
        r.register_with_unit(
            "review_duration",
            "Time for SubjectAccessReview and TokenReview calls to the apiserver",
            Unit::Seconds,
            metrics.review_duration.clone(),
        );
        r.register_with_unit(
            "upstream_duration",
            "Time from forwarding a request to the kubelet's response headers",
            Unit::Seconds,
            metrics.upstream_duration.clone(),
        );
        r.register(
            "upstream_errors",
            "Requests that got no usable answer from the kubelet, by cause (connect, tls, timeout, protocol)",
            metrics.upstream_errors.clone(),
        );
        r.register(
            "connections",
            "Open client connections",
            metrics.connections.clone(),
        );
        r.register(
            "upgraded_streams",
            "Open exec, attach and port-forward streams",
            metrics.upgraded_streams.clone(),
        );
        r.register_with_unit(
            "relayed",
            "Body and stream bytes relayed, by direction",
            Unit::Bytes,
            metrics.relayed_bytes.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When each certificate in use expires (seconds since the epoch)",
            metrics.certificate_expiry.clone(),
        );
        r.register(
            "serving_certificate_gaps",
            "What the serving certificate misses of the node: missing_ip_san/missing_dns_san (count), not_yet_valid/expired (0 or 1)",
            metrics.serving_certificate_gaps.clone(),
        );
        r.register(
            "certificate_reloads",
            "Reloads of certificates and credentials from disk, by result",
            metrics.reloads.clone(),
        );
        r.register(
            "certificate_rotations",
            "Serving certificates issued through a CertificateSigningRequest (--serving-cert-source=csr)",
            metrics.certificate_rotations.clone(),
        );
        r.register(
            "csr_failures",
            "CertificateSigningRequests that did not yield a certificate, by reason",
            metrics.csr_failures.clone(),
        );
        r.register(
            "metrics_scrapes",
            "Requests to the secure metrics listener, by status code",
            metrics.scrapes.clone(),
        );
        r.register(
            "ready",
            "1 when the last readiness check (/readyz) passed: certificate usable, kubelet answering; else 0",
            metrics.ready.clone(),
        );
        metrics
    }

    /// A scrape's answer for its `Accept` header: OpenMetrics 1.0.0 when the
    /// scraper asks for `application/openmetrics-text`, else the Prometheus
    /// text format 0.0.4. Returns (Content-Type, body).
    pub fn exposition(&self, accept: Option<&http::HeaderValue>) -> (&'static str, String) {
        let openmetrics = accept
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/openmetrics-text"));
        if openmetrics {
            (
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.encode(),
            )
        } else {
            (
                "text/plain; version=0.0.4; charset=utf-8",
                self.encode_prometheus(),
            )
        }
    }

    /// The exposition in the classic Prometheus text format (0.0.4), for
    /// scrapers and tools (promtool) that do not ask for OpenMetrics.
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode())
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub fn set_expiry(&self, certificate: &'static str, expires_at: i64) {
        self.certificate_expiry
            .get_or_create(&CertificateLabels { certificate })
            .set(expires_at);
    }

    pub fn reloaded(&self, material: &'static str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads
            .get_or_create(&ReloadLabels { material, result })
            .inc();
    }

    pub fn relayed(&self, direction: &'static str, bytes: u64) {
        if bytes > 0 {
            self.relayed_bytes
                .get_or_create(&DirectionLabels { direction })
                .inc_by(bytes);
        }
    }
}

/// OpenMetrics names a counter family `x` and its sample `x_total`; the
/// Prometheus text format names both `x_total`, and has no `# UNIT` or
/// `# EOF` lines. Everything else is the same.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family() {
        let metrics = Metrics::new();
        metrics
            .requests
            .get_or_create(&RequestLabels {
                subresource: "proxy",
                verb: "get",
                code: 200,
            })
            .inc();
        metrics.set_expiry("serving", 1_900_000_000);
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"kubelet_guard_requests_total{subresource="proxy",verb="get",code="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"kubelet_guard_certificate_expiry_timestamp_seconds{certificate="serving"} 1900000000"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn prometheus_text_names_counters_with_total_and_drops_openmetrics_lines() {
        let metrics = Metrics::new();
        metrics.token_cache_hits.inc();
        let text = metrics.encode_prometheus();
        assert!(
            text.contains("# HELP kubelet_guard_token_cache_hits_total Bearer tokens"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE kubelet_guard_token_cache_hits_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("kubelet_guard_token_cache_hits_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE kubelet_guard_upstream_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(
            !text.contains("# UNIT") && !text.contains("# EOF"),
            "{text}"
        );
    }
}
