//! The monitoring kit against the gateway itself: every PromQL expression in
//! the alerting rules and the Grafana dashboard parses, and reads only
//! metrics the gateway exports (or Prometheus's own `up`); the
//! PrometheusRule carries exactly the plain rules file's groups; every alert
//! has promtool unit tests. (promtool itself runs them in .ci/run.)

use std::collections::BTreeSet;
use std::path::Path;

use promql_parser::parser::{self, Expr};
use serde_json::Value;

use kubelet_guard::metrics::{
    AuthnLabels, AuthzLabels, Metrics, ReasonLabels, RefusalLabels, RequestLabels,
    ReviewFailureLabels, ReviewLabels, ScrapeLabels, ServingGapLabels,
};

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every sample name the gateway's exposition can hold: one series of each
/// family is made (families without series are not exposed), then the
/// names are read back from the Prometheus text the scrapers get.
fn exported() -> BTreeSet<String> {
    let m = Metrics::new();
    m.requests
        .get_or_create(&RequestLabels {
            subresource: "proxy",
            verb: "get",
            code: 200,
        })
        .inc();
    m.authentications
        .get_or_create(&AuthnLabels {
            method: "x509",
            result: "success",
        })
        .inc();
    m.authorizations
        .get_or_create(&AuthzLabels {
            source: "static",
            decision: "allowed",
        })
        .inc();
    m.refusals
        .get_or_create(&RefusalLabels {
            fault: "caller",
            cause: "denied",
        })
        .inc();
    m.review_failures
        .get_or_create(&ReviewFailureLabels {
            kind: "tokenreview",
            cause: "apiserver_timeout",
        })
        .inc();
    m.token_cache_hits.inc();
    m.review_duration
        .get_or_create(&ReviewLabels {
            kind: "tokenreview",
        })
        .observe(0.01);
    m.upstream_duration.observe(0.01);
    m.connections.set(1);
    m.upgraded_streams.set(1);
    m.relayed("to_kubelet", 1);
    m.set_expiry("serving", 1);
    m.serving_certificate_gaps
        .get_or_create(&ServingGapLabels { gap: "expired" })
        .set(0);
    m.reloaded("serving", false);
    m.certificate_rotations.inc();
    m.csr_failures
        .get_or_create(&ReasonLabels { reason: "denied" })
        .inc();
    m.scrapes.get_or_create(&ScrapeLabels { code: 200 }).inc();
    m.ready.set(1);
    let names: BTreeSet<String> = m
        .encode_prometheus()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect();
    assert!(names.contains("kubelet_guard_requests_total"), "{names:?}");
    names
}

/// The metric names a PromQL expression selects.
fn selected(expr: &Expr, into: &mut Vec<Option<String>>) {
    match expr {
        Expr::Aggregate(a) => {
            selected(&a.expr, into);
            if let Some(param) = &a.param {
                selected(param, into);
            }
        }
        Expr::Unary(u) => selected(&u.expr, into),
        Expr::Binary(b) => {
            selected(&b.lhs, into);
            selected(&b.rhs, into);
        }
        Expr::Paren(p) => selected(&p.expr, into),
        Expr::Subquery(s) => selected(&s.expr, into),
        Expr::VectorSelector(vs) => into.push(vs.name.clone()),
        Expr::MatrixSelector(ms) => into.push(ms.vs.name.clone()),
        Expr::Call(call) => call.args.args.iter().for_each(|a| selected(a, into)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Parses `expr` and returns the metrics it reads that the gateway does
/// not export; panics naming `origin` if it does not parse.
fn unknown_metrics(origin: &str, expr: &str, exported: &BTreeSet<String>) -> Vec<String> {
    let parsed = parser::parse(expr).unwrap_or_else(|e| panic!("{origin}: {expr:?}: {e}"));
    let mut names = Vec::new();
    selected(&parsed, &mut names);
    assert!(!names.is_empty(), "{origin}: {expr:?} reads no metric");
    names
        .into_iter()
        .map(|n| n.unwrap_or_else(|| panic!("{origin}: {expr:?}: a selector without a name")))
        .filter(|n| n != "up" && !exported.contains(n))
        .collect()
}

fn rules(file: &Value) -> Vec<&Value> {
    file["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .collect()
}

#[test]
fn every_alert_reads_only_exported_metrics() {
    let exported = exported();
    let file = yaml("monitoring/rules.yaml");
    let rules = rules(&file);
    assert!(rules.len() >= 10, "{rules:?}");
    let mut unknown = Vec::new();
    for rule in rules {
        let name = rule["alert"].as_str().expect("alert name");
        let expr = rule["expr"].as_str().expect("expr");
        unknown.extend(
            unknown_metrics(name, expr, &exported)
                .into_iter()
                .map(|m| format!("{name}: {m}")),
        );
    }
    assert!(unknown.is_empty(), "not exported: {unknown:?}");
}

#[test]
fn the_prometheusrule_holds_the_rules_file() {
    let plain = yaml("monitoring/rules.yaml");
    let object = yaml("manifests/monitoring/prometheusrule.yaml");
    assert_eq!(object["kind"], "PrometheusRule");
    assert_eq!(object["spec"], plain);
}

#[test]
fn every_alert_has_promtool_unit_tests() {
    let file = yaml("monitoring/rules.yaml");
    let tests = yaml("monitoring/rules_test.yaml");
    let tested: BTreeSet<&str> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|case| case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|case| case["alertname"].as_str())
        .collect();
    let untested: Vec<&str> = rules(&file)
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .filter(|a| !tested.contains(a))
        .collect();
    assert!(
        untested.is_empty(),
        "alerts never seen firing in rules_test.yaml: {untested:?}"
    );
}

#[test]
fn every_dashboard_query_parses_and_reads_only_exported_metrics() {
    let exported = exported();
    let dashboard: Value = serde_json::from_str(&read("monitoring/dashboard.json")).unwrap();
    // Grafana's variables, as Grafana would fill them in.
    let fill = |expr: &str| {
        expr.replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
    };
    let mut checked = 0;
    let mut unknown = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("title");
        for target in panel["targets"].as_array().expect("targets") {
            let expr = fill(target["expr"].as_str().expect("expr"));
            unknown.extend(unknown_metrics(title, &expr, &exported));
            checked += 1;
        }
    }
    // label_values(metric, label) of the variables.
    for variable in dashboard["templating"]["list"].as_array().expect("list") {
        if let Some(query) = variable["query"]["query"].as_str() {
            let metric = query
                .strip_prefix("label_values(")
                .and_then(|q| q.split(',').next())
                .unwrap_or_else(|| panic!("unexpected variable query {query:?}"));
            unknown.extend(unknown_metrics("variable", metric.trim(), &exported));
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} queries found");
    assert!(unknown.is_empty(), "not exported: {unknown:?}");
}

#[test]
fn the_dashboard_covers_what_an_operator_watches() {
    let text = read("monitoring/dashboard.json");
    for metric in [
        "kubelet_guard_requests_total",
        "kubelet_guard_authorization_decisions_total",
        "kubelet_guard_review_duration_seconds_bucket",
        "kubelet_guard_upstream_duration_seconds_bucket",
        "kubelet_guard_connections",
        "kubelet_guard_upgraded_streams",
        "kubelet_guard_relayed_bytes_total",
        "kubelet_guard_certificate_expiry_timestamp_seconds",
    ] {
        assert!(text.contains(metric), "no panel reads {metric}");
    }
}

#[test]
fn a_query_with_a_metric_the_gateway_does_not_export_is_caught() {
    let exported = exported();
    assert_eq!(
        unknown_metrics(
            "typo",
            "sum(rate(kubelet_guard_request_total[5m])) / on() up",
            &exported
        ),
        ["kubelet_guard_request_total"]
    );
}
