# shellcheck shell=bash
# Scenarios of e2e/realnode, sourced by e2e/realnode/inside. Each sc_* runs
# with `if`, so `set -e` does not apply: every step checks itself, prints a
# short reason and returns non-zero on failure. What a scenario observed goes
# to $OUT/<pass>/<scenario> so that the two passes can be compared.

NS=e2e

passed=0
failed=0

# check NAME CMD...: run one scenario, print PASS/FAIL, count it.
check() {
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then
		echo "PASS $name"
		passed=$((passed + 1))
	else
		out=${out//$'\n'/ | }
		echo "FAIL $name (${out:0:400})"
		failed=$((failed + 1))
	fi
}

# saw NAME: what the scenario observed, from stdin, for the pass comparison.
saw() {
	cat >"$OUT/$PASS_LABEL/$1"
}

fail() {
	echo "$*"
	return 1
}

# ------------------------------------------------------------ workloads --
workloads() {
	kubectl create namespace "$NS" >/dev/null
	# ServiceAccount admission needs the namespace's default ServiceAccount,
	# which kube-controller-manager creates a moment later.
	wait_until "serviceaccount $NS/default" 60 kubectl -n "$NS" get serviceaccount default
	{
		pod_yaml web 'mkdir -p /www && head -c 10485760 /dev/urandom > /www/big && echo ready && exec httpd -f -v -p 8080 -h /www'
		pod_yaml logger 'for i in $(seq 1 50); do echo "line $i"; done; exec sleep 1000000'
		pod_yaml ticker 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.2; done'
		pod_yaml crasher 'echo "crash run"; echo "crash to stderr" >&2; sleep 2; exit 3'
	} | kubectl apply -f - >/dev/null
	kubectl -n "$NS" wait --for=condition=Ready pod/web pod/logger pod/ticker --timeout=120s >/dev/null
	# crasher must have restarted once for --previous.
	wait_until "crasher restarted" 60 bash -c "[[ \$(kubectl -n $NS get pod crasher -o jsonpath='{.status.containerStatuses[0].restartCount}') -ge 1 ]]"
	BIG_SHA=$(kubectl -n "$NS" exec web -- sha256sum /www/big | cut -d' ' -f1)
	head -c $((10 << 20)) /dev/urandom >"$D/blob"
	BLOB_SHA=$(sha256sum <"$D/blob" | cut -d' ' -f1)
}

# pod_yaml NAME SCRIPT [EXTRA-CONTAINER-FIELDS]: a busybox pod in $NS whose
# one container, main, runs `sh -c SCRIPT`.
pod_yaml() {
	cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $NS}
spec:
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: registry.local/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", $(printf '%s' "$2" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')]
${3:-}
EOF
}

# attach_pod NAME: a pod whose main process is `cat` on stdinOnce stdin.
attach_pod() {
	pod_yaml "$1" 'exec cat' $'    stdin: true\n    stdinOnce: true' | kubectl apply -f - >/dev/null
	kubectl -n "$NS" wait --for=condition=Ready "pod/$1" --timeout=60s >/dev/null
}

# Identities that call the node directly, as metrics-server or a user with a
# ServiceAccount token would.
direct_identities() {
	kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: metrics-scraper, namespace: $NS}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: nobody, namespace: $NS}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: proxy-reader, namespace: $NS}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: e2e-metrics-scraper}
rules: [{apiGroups: [""], resources: [nodes/metrics, nodes/stats], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e2e-metrics-scraper}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-metrics-scraper}
subjects: [{kind: ServiceAccount, name: metrics-scraper, namespace: $NS}]
---
# Only "get nodes/proxy": read-only by its name.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: e2e-proxy-reader}
rules: [{apiGroups: [""], resources: [nodes/proxy], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e2e-proxy-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-proxy-reader}
subjects: [{kind: ServiceAccount, name: proxy-reader, namespace: $NS}]
EOF
	SCRAPER_TOKEN=$(kubectl -n "$NS" create token metrics-scraper --duration 2h)
	NOBODY_TOKEN=$(kubectl -n "$NS" create token nobody --duration 2h)
	READER_TOKEN=$(kubectl -n "$NS" create token proxy-reader --duration 2h)
}

# -------------------------------------------------------------- streams --
sc_logs_tail() {
	local out
	out=$(timeout 30 kubectl -n "$NS" logs logger --tail=5 2>&1) || fail "kubectl logs --tail: $out" || return
	[[ $out == "$(printf 'line %s\n' 46 47 48 49 50)" ]] || fail "unexpected output: ${out:0:200}" || return
	saw logs-tail <<<"$out"
}

sc_logs_timestamps() {
	local out
	out=$(timeout 30 kubectl -n "$NS" logs logger --tail=3 --timestamps 2>&1) || fail "kubectl logs --timestamps: $out" || return
	if grep -qvE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\.[0-9]{9}Z line [0-9]+$' <<<"$out"; then
		fail "not RFC3339Nano + message: ${out:0:200}"
		return
	fi
	cut -d' ' -f2- <<<"$out" | saw logs-timestamps
}

sc_logs_previous() {
	local out end=$((SECONDS + 330))
	# The kubelet keeps one dead container per container: while crasher is
	# between a crash and its restart, "previous" names the one before, which
	# is gone ("unable to retrieve container logs"). Ask again until a
	# previous instance exists, as a person would. The crash-loop back-off
	# doubles up to 300 s, and crasher runs 2 s per restart: a late pass may
	# wait that long for its window.
	until out=$(timeout 30 kubectl -n "$NS" logs crasher --previous 2>&1) && grep -qx 'crash run' <<<"$out"; do
		((SECONDS < end)) || fail "kubectl logs --previous: ${out:0:200}" || return
		sleep 0.5
	done
	grep -qx 'crash to stderr' <<<"$out" || fail "unexpected output: ${out:0:200}" || return
	sort <<<"$out" | saw logs-previous
}

# follow_ticker OUTFILE: kubectl logs -f on the ticker pod in the background;
# echoes the pid to stop it with (stop_follow) once the first line arrived.
# Its exit status lands in OUTFILE.rc.
follow_ticker() {
	(
		rc=0
		timeout 600 kubectl -n "$NS" logs -f ticker --tail=1 >"$1" 2>"$1.err" || rc=$?
		echo "$rc" >"$1.rc"
	) </dev/null >/dev/null 2>&1 & # not our stdout: $(follow_ticker) would wait for it
	local pid=$!
	echo "$pid" >>"$D/pids.scenario"
	wait_until "logs -f first line" 30 grep -q '^tick ' "$1" || {
		stop_follow "$pid"
		return 1
	}
	echo "$pid"
}

# stop_follow PID: `timeout` passes the TERM on to kubectl.
stop_follow() {
	pkill -TERM -P "$1" 2>/dev/null || true
}

# lines_grow FILE N SECONDS: N more lines arrive in FILE within SECONDS.
lines_grow() {
	local want=$(($(wc -l <"$1") + $2))
	wait_until "$2 more lines" "$3" bash -c "(( \$(wc -l <'$1') >= $want ))"
}

sc_logs_follow() {
	local f=$D/follow-$PASS_LABEL pid
	pid=$(follow_ticker "$f") || fail "logs -f printed nothing: $(head -c 200 "$f.err")" || return
	lines_grow "$f" 5 20 || fail "logs -f stopped following: $(tail -n 2 "$f")" || return
	[[ ! -e $f.rc ]] || fail "logs -f exited" || return
	stop_follow "$pid"
	# Each line is the next tick: nothing lost or repeated in the stream.
	awk '$1 != "tick" || (NR > 1 && $2 != prev + 1) {bad=1} {prev=$2} END {exit bad}' "$f" ||
		fail "ticks out of order: $(head -c 200 "$f")" || return
	echo "followed" | saw logs-follow
}

# sc_exec MODE: stdin → stdout, stderr, exit code; MODE spdy or websocket
# (kubectl's own switch between the two).
sc_exec() {
	local o=$D/exec-$PASS_LABEL-$1 rc=0
	printf 'to-stdout\n' | KUBECTL_REMOTE_COMMAND_WEBSOCKETS=$(ws "$1") timeout 30 kubectl -n "$NS" exec -i web -- \
		sh -c 'cat; echo to-stderr >&2; exit 7' >"$o.out" 2>"$o.err" || rc=$?
	[[ $rc == 7 ]] || fail "exit code $rc, want 7: $(head -c 200 "$o.err")" || return
	[[ $(cat "$o.out") == to-stdout ]] || fail "stdout: $(head -c 200 "$o.out")" || return
	grep -qx 'to-stderr' "$o.err" || fail "stderr: $(head -c 200 "$o.err")" || return
	printf 'rc=%s\n' "$rc" | cat - "$o.out" | saw "exec-$1"
}

ws() { if [[ $1 == websocket ]]; then echo true; else echo false; fi; }

sc_exec_bulk() {
	local got
	got=$(KUBECTL_REMOTE_COMMAND_WEBSOCKETS=$(ws "$1") timeout 120 kubectl -n "$NS" exec -i web -- cat <"$D/blob" | sha256sum | cut -d' ' -f1)
	[[ $got == "$BLOB_SHA" ]] || fail "10 MiB through cat: sha256 $got, want $BLOB_SHA" || return
	echo "$got" | saw "exec-10MiB-$1"
}

sc_exec_tty() {
	local out
	# script(1) gives kubectl a terminal of a known size. stdin stays open 4 s:
	# containerd closes the pty, losing the output, when stdin closes at once.
	# The sleep lets kubectl's first resize land before ttysize reads it.
	out=$( (sleep 4) | timeout 30 script -qec "stty rows 33 cols 111; kubectl -n $NS exec -it web -- sh -c 'sleep 1; tty; ttysize'" /dev/null 2>&1) ||
		fail "kubectl exec -it: ${out:0:200}" || return
	out=${out//$'\r'/}
	grep -q '^/dev/pts/[0-9]' <<<"$out" || fail "no pty: ${out:0:200}" || return
	grep -qx '33 111' <<<"$out" || fail "terminal size not propagated: ${out:0:200}" || return
	echo "pty 33 111" | saw exec-tty
}

sc_attach() {
	local out word="attach-$RANDOM$RANDOM"
	attach_pod "attach-$PASS_LABEL" || fail "attach pod not ready" || return
	# cat echoes our line; stdin EOF ends it (stdinOnce) and kubectl returns.
	out=$(printf '%s\n' "$word" | timeout 30 kubectl -n "$NS" attach -i "attach-$PASS_LABEL" -c main 2>&1) ||
		fail "kubectl attach: ${out:0:200}" || return
	grep -qx "$word" <<<"$out" || fail "echo not received: ${out:0:200}" || return
	echo "echoed" | saw attach
}

# sc_port_forward MODE: 10 MiB from the pod's httpd through kubectl port-forward.
sc_port_forward() {
	local o=$D/pf-$PASS_LABEL-$1 pid port got
	KUBECTL_PORT_FORWARD_WEBSOCKETS=$(ws "$1") timeout 120 kubectl -n "$NS" port-forward --address 127.0.0.1 pod/web :8080 >"$o" 2>&1 &
	pid=$!
	echo "$pid" >>"$D/pids.scenario"
	wait_until port-forward 30 grep -q 'Forwarding from 127.0.0.1:' "$o" || {
		kill "$pid" 2>/dev/null
		fail "port-forward did not start: $(head -c 200 "$o")"
		return
	}
	port=$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\) .*/\1/p' "$o" | head -n1)
	got=$(curl -sf --max-time 60 "http://127.0.0.1:$port/big" | sha256sum | cut -d' ' -f1)
	kill "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	[[ $got == "$BIG_SHA" ]] || fail "10 MiB through port-forward: sha256 $got, want $BIG_SHA; $(head -c 200 "$o")" || return
	echo "$got" | saw "port-forward-$1"
}

# ------------------------------------------------------ nodes/proxy reads --
# sc_proxy PATH: kubectl get --raw through the apiserver's nodes/proxy; what
# is compared between passes is the shape (the values move).
sc_proxy() {
	local out shape
	out=$(timeout 30 kubectl get --raw "/api/v1/nodes/$NODE/proxy/$1" 2>&1) || fail "get --raw $1: ${out:0:200}" || return
	case $1 in
	pods) shape=$(python3 -c 'import json,sys; print(sorted(p["metadata"]["name"] for p in json.load(sys.stdin)["items"] if p["metadata"]["namespace"] == "e2e" and not p["metadata"]["name"].startswith("attach-")))' <<<"$out") ;;
	stats/summary) shape=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["node"]["nodeName"], sorted(d["node"].keys()))' <<<"$out") ;;
	metrics/resource | metrics/cadvisor) shape=$(grep '^# TYPE' <<<"$out" | sort -u) ;;
	healthz) shape=$out ;;
	configz) shape=$(python3 -c 'import json,sys; d=json.load(sys.stdin)["kubeletconfig"]; print(sorted(k for k in d if k != "address"), d["authentication"]["webhook"]["enabled"])' <<<"$out") ;;
	esac || fail "unexpected body for $1: ${out:0:200}" || return
	[[ -n $shape ]] || fail "empty shape for $1: ${out:0:200}" || return
	case $1 in
	pods) [[ $shape == *"'web'"* ]] || fail "no pod web in /pods" || return ;;
	metrics/resource) grep -q node_cpu_usage_seconds_total <<<"$shape" || fail "no node_cpu_usage_seconds_total" || return ;;
	metrics/cadvisor) grep -q container_cpu_usage_seconds_total <<<"$shape" || fail "no container_cpu_usage_seconds_total" || return ;;
	healthz) [[ $shape == ok ]] || fail "healthz: $shape" || return ;;
	esac
	saw "proxy-${1//\//-}" <<<"$shape"
}

# ---------------------------------------------- straight at <node-ip>:10250 --
# direct TOKEN PATH: HTTP status of a GET with a bearer token, as metrics-server
# scrapes; body to $D/direct.body.
direct() {
	curl -s -o "$D/direct.body" -w '%{http_code}' --max-time 20 --cacert "$D/pki/ca.crt" \
		-H "Authorization: Bearer $1" "https://$NODE_IP:10250$2"
}

sc_token_scrape() {
	local code
	code=$(direct "$SCRAPER_TOKEN" /metrics/resource)
	[[ $code == 200 ]] || fail "metrics-scraper token: $code $(head -c 200 "$D/direct.body")" || return
	grep -q '^node_cpu_usage_seconds_total' "$D/direct.body" || fail "no node_cpu_usage_seconds_total in the scrape" || return
	local denied
	denied=$(direct "$NOBODY_TOKEN" /metrics/resource)
	[[ $denied == 403 ]] || fail "token without RBAC: $denied, want 403" || return
	printf 'scraper %s\nnobody %s\n' "$code" "$denied" | saw token-scrape
}

# ws_exec TOKEN COMMAND...: a WebSocket exec (GET + Upgrade) straight at the
# node, as a user with a bearer token; prints the HTTP status of the answer.
ws_exec() {
	local token=$1
	shift
	python3 - "$NODE_IP" "$D/pki/ca.crt" "$D/ws.body" "$token" "$@" <<'EOF'
import base64, os, socket, ssl, sys, urllib.parse
host, ca, body_file, token, *command = sys.argv[1:]
query = urllib.parse.urlencode([("command", c) for c in command] + [("output", "1"), ("error", "1")])
ctx = ssl.create_default_context(cafile=ca)
with socket.create_connection((host, 10250), timeout=20) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
    s.sendall((f"GET /exec/e2e/web/main?{query} HTTP/1.1\r\nHost: {host}:10250\r\n"
               f"Authorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
               f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
               "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "no-answer"
    print(status)
    # Read until the other side closes: the command has finished by then.
    rest = head.split(b"\r\n\r\n", 1)[-1]
    try:
        while chunk := s.recv(65536):
            rest += chunk
    except (OSError, ssl.SSLError):
        pass
    # The refusal's body, for the transcript (frames of a 101 are not text).
    with open(body_file, "w") as f:
        f.write("" if status == "101" else rest[:300].decode(errors="replace").strip())
EOF
}

# The kubelet's known hole: "get nodes/proxy" authorizes a WebSocket exec
# (GET), which runs a command. The bare kubelet lets it through; kubelet-guard
# (--streaming-authz=strict) asks for "create", like a POST, and refuses.
# WANT is the status expected in this pass; the marker file tells whether the
# command ran.
sc_ws_exec_hole() {
	local want=$1 marker=/tmp/hole-$PASS_LABEL code ran=no
	code=$(ws_exec "$READER_TOKEN" touch "$marker") || fail "ws_exec: $code" || return
	kubectl -n "$NS" exec web -- test -e "$marker" 2>/dev/null && ran=yes
	echo "get-nodes/proxy user, WebSocket exec touch $marker: HTTP $code $(cat "$D/ws.body" 2>/dev/null), command ran: $ran" >>"$D/transcript"
	[[ $code == "$want" ]] || fail "status $code, want $want (command ran: $ran)" || return
	if [[ $want == 101 ]]; then
		[[ $ran == yes ]] || fail "101 but the command did not run" || return
	else
		[[ $ran == no ]] || fail "refused with $code but the command ran" || return
	fi
	echo "$code $ran" | saw ws-exec-hole
}

# The same user over SPDY (POST): the kubelet asks for "create" already.
sc_spdy_exec_refused() {
	local code
	code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 20 --cacert "$D/pki/ca.crt" -X POST \
		-H "Authorization: Bearer $READER_TOKEN" -H 'Connection: Upgrade' -H 'Upgrade: SPDY/3.1' \
		-H 'X-Stream-Protocol-Version: v4.channel.k8s.io' \
		"https://$NODE_IP:10250/exec/$NS/web/main?command=true&output=1")
	[[ $code == 403 ]] || fail "SPDY exec as get-nodes/proxy user: $code, want 403" || return
	echo "$code" | saw spdy-exec-refused
}

# run_pass LABEL HOLE_STATUS: every scenario against whatever answers
# <node-ip>:10250 now.
run_pass() {
	PASS_LABEL=$1
	mkdir -p "$OUT/$1"
	local mode path
	check "$1/logs-tail" sc_logs_tail
	check "$1/logs-timestamps" sc_logs_timestamps
	check "$1/logs-follow" sc_logs_follow
	check "$1/logs-previous" sc_logs_previous
	for mode in spdy websocket; do
		check "$1/exec-$mode" sc_exec "$mode"
		check "$1/exec-10MiB-$mode" sc_exec_bulk "$mode"
		check "$1/port-forward-10MiB-$mode" sc_port_forward "$mode"
	done
	check "$1/exec-tty" sc_exec_tty
	check "$1/attach" sc_attach
	for path in pods stats/summary metrics/resource metrics/cadvisor healthz configz; do
		check "$1/proxy/$path" sc_proxy "$path"
	done
	check "$1/token-scrape-metrics-resource" sc_token_scrape
	check "$1/spdy-exec-refused-for-get-nodes-proxy" sc_spdy_exec_refused
	check "$1/websocket-exec-as-get-nodes-proxy" sc_ws_exec_hole "$2"
}

# compare_passes A B DIFFERENT...: every observation of pass A equals pass B's,
# except the ones named (different by design).
compare_passes() {
	local f name
	for f in "$OUT/$1"/*; do
		name=$(basename "$f")
		if [[ " ${*:3} " == *" $name "* ]]; then
			if cmp -s "$f" "$OUT/$2/$name"; then
				check "compare/$name (differs by design)" fail "same in both passes: $(head -c 100 "$f")"
			else
				check "compare/$name (differs by design)" true
			fi
			continue
		fi
		check "compare/$name" cmp_files "$f" "$OUT/$2/$name"
	done
}

cmp_files() {
	[[ -f $2 ]] || fail "missing in the second pass" || return
	diff -q "$1" "$2" >/dev/null || fail "$(diff "$1" "$2" | head -c 300)"
}
