# shellcheck shell=bash
# kubelet-guard on the real node, as docs/deploy.md tells an operator to put it
# there; sourced by e2e/realnode/inside.

GW_NS=kubelet-guard
GW_OVERLAY=${GW_OVERLAY:-$SRC/overlay}

# gateway_apply: step 1 and 2 of docs/deploy.md "Rollout" — the kustomize
# base (through e2e/realnode/overlay) and the gateway's kubelet client
# certificate. No node is enrolled yet, so no pod runs.
gateway_apply() {
	if [[ -n ${REALNODE_HELM:-} ]]; then helm_install_gateway; else kubectl apply -k "$GW_OVERLAY" >/dev/null; fi
	kubectl -n "$GW_NS" create secret tls kubelet-guard-kubelet-client \
		--cert "$D/pki/kubelet-guard-client.crt" --key "$D/pki/kubelet-guard-client.key" >/dev/null
}

# approver: what an operator's CSR approver does for the gateway — approve
# pending kubernetes.io/kubelet-serving requests made by the gateway's
# ServiceAccount (docs/deploy.md, "Approval"). kube-controller-manager signs.
approver() {
	local requester=system:serviceaccount:$GW_NS:kubelet-guard name
	while true; do
		for name in $(kubectl get csr -o jsonpath="{range .items[?(@.spec.signerName==\"kubernetes.io/kubelet-serving\")]}{.metadata.name} {.spec.username} {.status.conditions[*].type}{\"\\n\"}{end}" 2>/dev/null |
			awk -v r="$requester" '$2 == r && NF == 2 {print $1}'); do
			kubectl certificate approve "$name" >/dev/null 2>&1 && echo "$(date +%T) approved $name"
		done
		sleep 1
	done
}

gateway_pod() {
	kubectl -n "$GW_NS" get pod -l app.kubernetes.io/name=kubelet-guard --field-selector "spec.nodeName=$NODE" \
		-o jsonpath='{range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{"\n"}{end}' | awk 'NF == 1 {print $1; exit}'
}

gateway_ready() {
	local pod
	pod=$(gateway_pod)
	[[ -n $pod && $(kubectl -n "$GW_NS" get pod "$pod" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

# enrol: step 3 of docs/deploy.md "Rollout" on this node: label it, switch
# the kubelet to loopback with the shipped drop-in, restart the kubelet,
# skip the pod's crash-loop back-off, wait for Ready.
sc_enrol() {
	kubectl label node "$NODE" kubelet-guard/enabled=true >/dev/null || fail "label" || return
	wait_until "gateway pod scheduled" 60 test -n "$(gateway_pod)" || fail "no gateway pod scheduled" || return
	cp "$ROOT/manifests/node/90-kubelet-guard.conf" "$D/kubelet/conf.d/"
	node_kubelet_stop
	node_kubelet_start || fail "kubelet did not come back with the drop-in" || return
	kubectl -n "$GW_NS" delete pod --field-selector "spec.nodeName=$NODE" --wait=false >/dev/null
	wait_until "gateway pod Ready" 120 gateway_ready || fail "gateway pod not Ready: $(kubectl -n "$GW_NS" get pod -o wide 2>&1 | tail -n +2)" || return
}

# The kubelet now listens on loopback only and the gateway holds <node-ip>:10250.
sc_listeners() {
	local l
	l=$(ss -Hltnp 'sport = :10250')
	grep -q '127.0.0.1:10250 .*"kubelet"' <<<"$l" || fail "kubelet not on 127.0.0.1:10250: $l" || return
	grep -q "$NODE_IP:10250 .*\"kubelet-guard\"" <<<"$l" || fail "kubelet-guard not on $NODE_IP:10250: $l" || return
	if grep -q '0.0.0.0:10250\|\*:10250' <<<"$l"; then
		fail "a wildcard listener on 10250: $l"
		return
	fi
}

# The image as the DaemonSet runs it: user 65532, no shell.
sc_image_shape() {
	local pod uid
	pod=$(gateway_pod)
	uid=$(kubectl -n "$GW_NS" get pod "$pod" -o jsonpath='{.spec.securityContext.runAsUser}')
	[[ $uid == 65532 ]] || fail "runAsUser $uid" || return
	if kubectl -n "$GW_NS" exec "$pod" -- /bin/sh -c true >/dev/null 2>&1; then
		fail "the image has a shell"
		return
	fi
	grep -q "^Uid:.*65532" "/proc/$(pgrep -xo kubelet-guard)/status" || fail "the process does not run as 65532" || return
}

# The gateway's access log names the apiserver's client certificate: the TLS
# session is apiserver ↔ kubelet-guard, authenticated end to end. Arguments
# go to kubectl logs (--since-time=...).
sc_access_log_identity() {
	local log
	log=$(kubectl -n "$GW_NS" logs "$(gateway_pod)" "$@") || fail "kubectl logs of the gateway pod" || return
	# One grep: with pipefail, `grep | grep -q` fails when the first one gets
	# SIGPIPE on a long log.
	grep -q '"user":"kube-apiserver-kubelet-client",.*"decision":"allowed"' <<<"$log" ||
		fail "no allowed request from kube-apiserver-kubelet-client in the access log: $(tail -n 3 <<<"$log")"
}

# The serving certificate the apiserver sees comes from the cluster's signer.
serving_serial() {
	openssl s_client -connect "$NODE_IP:10250" -servername "$NODE_IP" </dev/null 2>/dev/null | openssl x509 -noout -serial 2>/dev/null
}

sc_serving_cert_from_signer() {
	local subject
	subject=$(openssl s_client -connect "$NODE_IP:10250" -CAfile "$D/pki/ca.crt" -verify_return_error -verify_ip "$NODE_IP" </dev/null 2>/dev/null |
		openssl x509 -noout -subject -ext subjectAltName 2>/dev/null) || fail "no verified certificate for IP $NODE_IP" || return
	grep -q "CN = system:node:$NODE" <<<"$subject" && grep -q "IP Address:$NODE_IP" <<<"$subject" ||
		fail "unexpected certificate: $subject" || return
	# Not `kubectl | grep -q` under pipefail: kubectl gets SIGPIPE on the
	# certificates that follow the first match.
	local csrs
	csrs=$(kubectl get csr -o jsonpath='{range .items[*]}{.spec.username} {.status.certificate}{"\n"}{end}') || fail "kubectl get csr" || return
	grep -q "^system:serviceaccount:$GW_NS:kubelet-guard ." <<<"$csrs" || fail "no issued CSR from the gateway's ServiceAccount" || return
}

# kubectl -n kubelet-guard rollout restart while a kubectl logs -f runs: the
# stream ends cleanly when the old pod drains, and the node answers again
# once the new pod is Ready.
sc_rollout_restart() {
	local f=$D/follow-rollout pid t0 ended ready
	pid=$(follow_ticker "$f") || fail "logs -f did not start" || return
	t0=$SECONDS
	kubectl -n "$GW_NS" rollout restart daemonset/kubelet-guard >/dev/null || fail "rollout restart" || return
	# --shutdown-grace-period=30s in the DaemonSet: the stream ends by then.
	wait_until "logs -f to end" 60 test -e "$f.rc" || fail "logs -f still running 60 s after the restart" || return
	ended=$((SECONDS - t0))
	[[ $(cat "$f.rc") == 0 ]] || fail "logs -f exited $(cat "$f.rc"): $(head -c 200 "$f.err")" || return
	kubectl -n "$GW_NS" rollout status daemonset/kubelet-guard --timeout=180s >/dev/null || fail "rollout did not finish" || return
	ready=$((SECONDS - t0))
	local out
	out=$(timeout 30 kubectl -n "$NS" exec web -- echo after-restart 2>&1) || fail "exec after the restart: $out" || return
	[[ $out == after-restart ]] || fail "exec after the restart printed: $out" || return
	out=$(timeout 30 kubectl -n "$NS" logs logger --tail=1 2>&1) || fail "logs after the restart: $out" || return
	[[ $out == "line 50" ]] || fail "logs after the restart printed: $out" || return
	echo "rollout restart: logs -f ended with exit 0 after ${ended} s ($(wc -l <"$f") lines); new pod Ready after ${ready} s; exec and logs answered then" >>"$D/transcript"
}

# The serving certificate rotates through kube-controller-manager's signer
# (certificates live CERT_DURATION; the gateway renews at 70–90 % of the
# lifetime, like the kubelet), and a kubectl logs -f opened before the swap
# keeps streaming after it.
sc_cert_rotation() {
	local f=$D/follow-rotation pid before after end t0=$SECONDS
	before=$(serving_serial)
	[[ -n $before ]] || fail "no serving certificate" || return
	pid=$(follow_ticker "$f") || fail "logs -f did not start" || return
	end=$((SECONDS + ${CERT_DURATION%s} + 60))
	after=$before
	while [[ -z $after || $after == "$before" ]]; do
		((SECONDS < end)) || fail "serving certificate not rotated within $((${CERT_DURATION%s} + 60)) s" || return
		sleep 1
		after=$(serving_serial)
	done
	lines_grow "$f" 10 20 || fail "logs -f stopped after the swap" || return
	[[ ! -e $f.rc ]] || fail "logs -f exited at the swap: $(head -c 200 "$f.err")" || return
	stop_follow "$pid"
	echo "serving certificate ${before#serial=} -> ${after#serial=} after $((SECONDS - t0)) s of waiting; logs -f kept streaming; $(grep -c approved "$D/logs/approver.log") CSRs approved in the run so far" >>"$D/transcript"
}
