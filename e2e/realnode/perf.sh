# shellcheck shell=bash
# What a user sees on a real node (e2e/realnode/run --perf), sourced by
# e2e/realnode/inside: `kubectl logs -f` throughput and `kubectl exec`
# round-trip latency, once per pass (bare kubelet, then kubelet-guard), so
# that bench/run can state them as ratios. Appends one JSON object per
# measurement to $REALNODE_PERF_OUT:
#
#   {"pass": "baseline", "what": "logs_follow", "bytes": B, "secs": [s, ...]}
#   {"pass": "baseline", "what": "exec", "ms": [ms, ...]}
#
# Everything runs inside the run's network namespace, like the scenarios.

# Bytes the flood pod writes (under the kubelet's containerLogMaxSize, so the
# whole log is one file that `kubectl logs` reads).
PERF_LOG_BYTES=${PERF_LOG_BYTES:-$((64 << 20))}
PERF_LOG_REPS=${PERF_LOG_REPS:-5}
PERF_EXEC_REPS=${PERF_EXEC_REPS:-30}

# perf_workloads: the flood pod (writes PERF_LOG_BYTES of 1,000-byte lines,
# then exits: a finished container, so `kubectl logs -f` ends at its end).
perf_workloads() {
	local line
	line=$(printf 'x%.0s' $(seq 999))
	kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: flood, namespace: $NS}
spec:
  automountServiceAccountToken: false
  enableServiceLinks: false
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: registry.local/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "yes $line | head -c $PERF_LOG_BYTES"]
YAML
	wait_until "flood pod finished" 120 bash -c "[[ \$(kubectl -n $NS get pod flood -o jsonpath='{.status.phase}') == Succeeded ]]"
}

# perf_pass LABEL: the measurements against whatever answers <node-ip>:10250.
perf_pass() {
	local label=$1 i t0 t1 bytes secs=() ms=()
	for ((i = 0; i < PERF_LOG_REPS; i++)); do
		t0=$(date +%s%N)
		bytes=$(timeout 120 kubectl -n "$NS" logs -f flood | wc -c) || return 1
		t1=$(date +%s%N)
		((bytes >= PERF_LOG_BYTES)) || {
			echo "logs -f gave $bytes bytes, want $PERF_LOG_BYTES" >&2
			return 1
		}
		secs+=("$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.4f", d / 1e9 }')")
	done
	for ((i = 0; i < PERF_EXEC_REPS; i++)); do
		t0=$(date +%s%N)
		timeout 30 kubectl -n "$NS" exec logger -- true || return 1
		t1=$(date +%s%N)
		ms+=("$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.2f", d / 1e6 }')")
	done
	local IFS=,
	printf '{"pass": "%s", "what": "logs_follow", "bytes": %s, "secs": [%s]}\n' "$label" "$bytes" "${secs[*]}" >>"$REALNODE_PERF_OUT"
	printf '{"pass": "%s", "what": "exec", "ms": [%s]}\n' "$label" "${ms[*]}" >>"$REALNODE_PERF_OUT"
}
