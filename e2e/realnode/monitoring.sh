# shellcheck shell=bash
# The monitoring kit on the real node, sourced by e2e/realnode/inside: a real
# Prometheus (Debian's `prometheus`, the package that ships promtool) runs as a
# process in the node's network namespace, scrapes the gateway's secure
# metrics listener (<node-ip>:10262) with a ServiceAccount token bound by the
# shipped manifests/monitoring/prometheus-rbac.yaml, and loads the shipped
# alerting rules. Faults make their alerts fire, then resolve.
#
# The rules are monitoring/rules.yaml with only `for:` shortened (to 6 s) and
# a 2 s evaluation interval, so a fault shows within seconds: the expressions
# are the shipped ones (checked against the loaded rules below).

PROM_PORT=9090
PROM_FOR=6s

prom_api() {
	curl -sf "http://127.0.0.1:$PROM_PORT/api/v1/$1"
}

# alert_state NAME: firing, pending or nothing.
alert_state() {
	prom_api alerts | python3 -c '
import json, sys
alerts = json.load(sys.stdin)["data"]["alerts"]
print(" ".join(sorted({a["state"] for a in alerts if a["labels"]["alertname"] == sys.argv[1]})))' "$1"
}

alert_is() {
	[[ $(alert_state "$1") == "$2" ]]
}

# monitoring_start: the scraper's identity and RBAC (shipped), its token,
# and Prometheus with the shipped rules.
monitoring_start() {
	local p=$D/prometheus
	mkdir -p "$p/data"
	kubectl create namespace monitoring >/dev/null
	kubectl -n monitoring create serviceaccount prometheus-k8s >/dev/null
	kubectl apply -f "$ROOT/manifests/monitoring/prometheus-rbac.yaml" >/dev/null
	kubectl -n monitoring create token prometheus-k8s --duration=1h >"$p/token"
	python3 - "$ROOT/monitoring/rules.yaml" "$p/rules.yaml" "$PROM_FOR" <<'EOF'
import sys, yaml
shipped, out, short = sys.argv[1:]
rules = yaml.safe_load(open(shipped))
for group in rules["groups"]:
    group["interval"] = "2s"
    for rule in group["rules"]:
        if "for" in rule:
            rule["for"] = short
yaml.safe_dump(rules, open(out, "w"))
EOF
	cat >"$p/prometheus.yml" <<EOF
global: {scrape_interval: 2s, evaluation_interval: 2s}
rule_files: [$p/rules.yaml]
scrape_configs:
  - job_name: kubelet-guard
    scheme: https
    authorization: {credentials_file: $p/token}
    # The serving certificate is issued by the cluster's kubelet-serving
    # signer for the node IP, which is what is scraped.
    tls_config: {ca_file: $D/pki/ca.crt}
    static_configs: [{targets: ["$NODE_IP:10262"]}]
EOF
	promtool check config "$p/prometheus.yml" >/dev/null || fail "promtool check config" || return
	pidfile prometheus prometheus --config.file="$p/prometheus.yml" --storage.tsdb.path="$p/data" \
		--web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn
	wait_until "prometheus ready" 30 curl -sf "http://127.0.0.1:$PROM_PORT/-/ready"
}

# The expressions Prometheus loaded are the shipped ones, every rule of them.
sc_prometheus_loaded_the_shipped_rules() {
	prom_api rules >"$D/prometheus/loaded-rules.json" || fail "no /api/v1/rules" || return
	python3 - "$ROOT/monitoring/rules.yaml" "$D/prometheus/loaded-rules.json" <<'EOF' || fail "loaded rules differ from monitoring/rules.yaml" || return
import json, sys, yaml
shipped = {r["alert"]: r["expr"] for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"]}
loaded = {r["name"]: r["query"] for g in json.load(open(sys.argv[2]))["data"]["groups"] for r in g["rules"]}
assert set(loaded) == set(shipped), (sorted(loaded), sorted(shipped))
# Prometheus prints the parsed expression; compare without whitespace.
norm = lambda e: "".join(e.split())
bad = [a for a in shipped if norm(loaded[a]) != norm(shipped[a])]
assert not bad, bad
EOF
}

# Prometheus scrapes the secure listener with the ServiceAccount token: the
# target is up and the gateway's own series arrive.
sc_prometheus_scrapes_with_a_token() {
	wait_until "target up" 30 bash -c "curl -sf 'http://127.0.0.1:$PROM_PORT/api/v1/query?query=up%7Bjob%3D%22kubelet-guard%22%7D%3D%3D1' | grep -q '\"value\"'" ||
		fail "target not up: $(prom_api targets | head -c 400)" || return
	prom_api 'query?query=kubelet_guard_ready' | grep -q '"value"' || fail "no kubelet_guard_ready series" || return
	# Without the token, and with a token RBAC does not allow: refused.
	local code
	code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$D/pki/ca.crt" "https://$NODE_IP:10262/metrics")
	[[ $code == 401 ]] || fail "no token: $code, want 401" || return
	code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$D/pki/ca.crt" \
		-H "Authorization: Bearer $(kubectl -n "$NS" create token nobody)" "https://$NODE_IP:10262/metrics")
	[[ $code == 403 ]] || fail "token without RBAC: $code, want 403" || return
	echo "secure metrics: Prometheus scrapes https://$NODE_IP:10262/metrics with the prometheus-k8s ServiceAccount token (target up); no token 401, token without RBAC 403" >>"$D/transcript"
}

# The run's 90 s serving certificates are short-lived: the expiry alerts fire
# for them (critical: within a day) and stay silent for the client CA.
sc_alert_certificate_expiring_fires() {
	wait_until "KubeletGuardCertificateExpiring firing" 30 alert_is KubeletGuardCertificateExpiring firing ||
		fail "not firing: $(prom_api alerts | head -c 400)" || return
	local certs
	certs=$(prom_api alerts | python3 -c '
import json, sys
print(sorted({a["labels"]["certificate"] for a in json.load(sys.stdin)["data"]["alerts"] if a["labels"]["alertname"] == "KubeletGuardCertificateExpiring"}))')
	[[ $certs == "['serving']" ]] || fail "expiring certificates: $certs, want only serving" || return
	echo "alert KubeletGuardCertificateExpiring fired for certificate=serving (the run's ${CERT_DURATION} kubelet-serving certificates)" >>"$D/transcript"
}

# Stop the kubelet: it no longer probes the gateway, which checks readiness
# on its own 15 s after the last probe, finds the kubelet gone, and
# KubeletGuardNotReady goes pending then firing; start the kubelet again:
# its probes pass and the alert resolves.
sc_alert_not_ready_fires_and_resolves() {
	local t0=$SECONDS fired resolved
	alert_is KubeletGuardNotReady "" || fail "NotReady before the fault: $(alert_state KubeletGuardNotReady)" || return
	node_kubelet_stop
	wait_until "KubeletGuardNotReady firing" 60 alert_is KubeletGuardNotReady firing || {
		node_kubelet_start >/dev/null 2>&1
		fail "not firing 60 s after the kubelet stopped: $(alert_state KubeletGuardNotReady)"
		return
	}
	fired=$((SECONDS - t0))
	node_kubelet_start || fail "kubelet did not come back" || return
	wait_until "KubeletGuardNotReady resolved" 40 alert_is KubeletGuardNotReady "" ||
		fail "still $(alert_state KubeletGuardNotReady) 40 s after the kubelet came back" || return
	resolved=$((SECONDS - t0))
	wait_until "gateway pod Ready" 60 gateway_ready || fail "gateway pod not Ready again" || return
	echo "alert KubeletGuardNotReady: kubelet stopped -> firing after ${fired} s (for: $PROM_FOR); kubelet started -> resolved at ${resolved} s" >>"$D/transcript"
}

# monitoring_checks: everything above, then Prometheus stops.
monitoring_checks() {
	check "monitoring/prometheus-starts-with-the-shipped-rbac-and-rules" monitoring_start
	check "monitoring/prometheus-loaded-the-shipped-rules" sc_prometheus_loaded_the_shipped_rules
	check "monitoring/prometheus-scrapes-the-secure-listener-with-a-token" sc_prometheus_scrapes_with_a_token
	check "monitoring/alert-certificate-expiring-fires" sc_alert_certificate_expiring_fires
	check "monitoring/alert-not-ready-fires-and-resolves" sc_alert_not_ready_fires_and_resolves
	stop_pid prometheus
}
