# shellcheck shell=bash
# e2e/realnode/run --konnectivity: the apiserver reaches the node only through
# Konnectivity (apiserver-network-proxy v0.36.0). Sourced by
# e2e/realnode/inside, which runs in the node's network namespace; the control
# plane runs in $CP_NETNS (node.sh, cp_pidfile).
#
#   konn_pki               konnectivity-server's agent-facing certificate and
#                          its client certificate towards the apiserver
#   konn_server_start MODE konnectivity-server (grpc | http-connect) on a unix
#                          socket, and the apiserver's egress selector file
#   konn_agent_start       the agent's ServiceAccount token and the agent
#   konn_switch MODE       restart server and apiserver in another mode
#
# Agent authentication as the Kubernetes docs deploy it: a ServiceAccount
# token with the audience system:konnectivity-server, which the server checks
# with a TokenReview under an identity bound to system:auth-delegator.

KBIN=${KBIN:-}
KONN_DIR=$D/konnectivity
KONN_SOCKET=$KONN_DIR/konnectivity-server.socket
KONN_AGENT_PORT=8132
KONN_AUDIENCE=system:konnectivity-server

konn_pki() {
	local p=$D/pki
	mkdir -p "$KONN_DIR"
	# cert is node_pki's helper (same CA).
	cert konnectivity-server-tls /CN=konnectivity-server \
		"subjectAltName=IP:$API_IP\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature"
	cert konnectivity-server /CN=system:konnectivity-server 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature'
	kubeconfig konnectivity-server
	# A CA that signed nothing here: the apiserver, told to trust only it,
	# must refuse the gateway's certificate through the tunnel.
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$p/other-ca.key" -out "$p/other-ca.crt" \
		-days 2 -subj /CN=some-other-ca 2>/dev/null
}

# konn_egress MODE: the EgressSelectorConfiguration for kube-apiserver.
konn_egress() {
	local proto=GRPC
	[[ $1 == http-connect ]] && proto=HTTPConnect
	cat >"$KONN_DIR/egress-$1.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
# Everything the apiserver dials in the cluster (nodes, pods, services).
- name: cluster
  connection:
    proxyProtocol: $proto
    transport:
      uds:
        udsName: $KONN_SOCKET
- name: controlplane
  connection: {proxyProtocol: Direct}
- name: etcd
  connection: {proxyProtocol: Direct}
EOF
	APISERVER_EXTRA=(--egress-selector-config-file "$KONN_DIR/egress-$1.yaml")
}

konn_server_start() {
	KONN_MODE=$1
	konn_egress "$1"
	cp_pidfile konnectivity-server "$KBIN/konnectivity-server" --mode "$1" \
		--uds-name "$KONN_SOCKET" --delete-existing-uds-file --server-port 0 \
		--cluster-cert "$D/pki/konnectivity-server-tls.crt" --cluster-key "$D/pki/konnectivity-server-tls.key" \
		--agent-bind-address "$API_IP" --agent-port "$KONN_AGENT_PORT" \
		--health-bind-address 127.0.0.1 --health-port 8133 --admin-bind-address 127.0.0.1 --admin-port 8134 \
		--agent-namespace kube-system --agent-service-account konnectivity-agent \
		--authentication-audience "$KONN_AUDIENCE" --kubeconfig "$D/konnectivity-server.kubeconfig" \
		--proxy-strategies destHost,default --v 1
	wait_until "konnectivity-server socket" 20 test -S "$KONN_SOCKET"
}

konn_agent_start() {
	kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: konnectivity-agent, namespace: kube-system}
---
# The server reviews agent tokens (TokenReview) as system:konnectivity-server.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: system:konnectivity-server}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:auth-delegator}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: system:konnectivity-server}]
EOF
	(umask 077 && kubectl -n kube-system create token konnectivity-agent --audience "$KONN_AUDIENCE" --duration 2h >"$KONN_DIR/agent.token")
	pidfile konnectivity-agent "$KBIN/konnectivity-agent" --ca-cert "$D/pki/ca.crt" \
		--proxy-server-host "$API_IP" --proxy-server-port "$KONN_AGENT_PORT" \
		--service-account-token-path "$KONN_DIR/agent.token" --agent-identifiers "ipv4=$NODE_IP" \
		--health-server-host 127.0.0.1 --health-server-port 8093 --admin-bind-address 127.0.0.1 --admin-server-port 8094 --v 1
	konn_wait_tunnel
}

# The tunnel carries the apiserver's calls to the node.
konn_wait_tunnel() {
	wait_until "the apiserver reaching the node through Konnectivity" 60 \
		kubectl get --raw "/api/v1/nodes/$NODE/proxy/healthz"
}

# konn_switch MODE: konnectivity-server in MODE, kube-apiserver with the
# matching egress selector; the agent reconnects by itself.
konn_switch() {
	stop_pid kube-apiserver
	stop_pid konnectivity-server
	konn_server_start "$1"
	node_apiserver_start
	konn_wait_tunnel
}

# ------------------------------------------------------------- scenarios --
# sc_konn_mode MODE: the running server and apiserver are in MODE, and the
# tunnel answers.
sc_konn_mode() {
	local proto=GRPC
	[[ $1 == http-connect ]] && proto=HTTPConnect
	local server api
	server=$(tr '\0' ' ' <"/proc/$(cat "$D/pids/konnectivity-server")/cmdline")
	api=$(tr '\0' ' ' <"/proc/$(cat "$D/pids/kube-apiserver")/cmdline")
	[[ $server == *" --mode $1 "* ]] || fail "konnectivity-server not in mode $1" || return
	[[ $api == *" --egress-selector-config-file $KONN_DIR/egress-$1.yaml"* ]] ||
		fail "kube-apiserver not started with egress-$1.yaml" || return
	grep -q "proxyProtocol: $proto\$" "$KONN_DIR/egress-$1.yaml" || fail "egress-$1.yaml is not $proto" || return
	kubectl get --raw "/api/v1/nodes/$NODE/proxy/healthz" >/dev/null || fail "no answer through the tunnel" || return
}

# The node's firewall (e2e/realnode/run) drops new connections from the
# control plane's namespace to :10250: a direct dial times out, while the
# node's other ports answer (refused: reachable, nothing listens) and the
# node itself reaches its own :10250.
sc_direct_dial_blocked() {
	local rc=0
	nsenter --net="$CP_NETNS" curl -sk -o /dev/null --connect-timeout 3 "https://$NODE_IP:10250/healthz" || rc=$?
	[[ $rc == 28 ]] || fail "control plane → $NODE_IP:10250: curl exit $rc, want 28 (connect timeout)" || return
	rc=0
	nsenter --net="$CP_NETNS" curl -s -o /dev/null --connect-timeout 3 "http://$NODE_IP:10249/" || rc=$?
	[[ $rc == 7 ]] || fail "control plane → $NODE_IP:10249: curl exit $rc, want 7 (refused: the node is reachable)" || return
	local code
	code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "https://$NODE_IP:10250/healthz")
	[[ $code == 401 ]] || fail "node → its own $NODE_IP:10250: HTTP $code, want 401" || return
}

# The apiserver verifies the certificate that answers through the tunnel:
# told to trust another CA, it refuses kubelet-guard's; restored, it accepts.
sc_refuses_foreign_ca() {
	local out rc=0
	stop_pid kube-apiserver
	KUBELET_CA=$D/pki/other-ca.crt node_apiserver_start || fail "apiserver with another kubelet CA did not start" || return
	out=$(timeout 30 kubectl -n "$NS" logs logger --tail=1 2>&1) || rc=$?
	echo "apiserver with --kubelet-certificate-authority=other-ca.crt, kubectl logs through $KONN_MODE: exit $rc: $out" >>"$D/transcript"
	stop_pid kube-apiserver
	node_apiserver_start || fail "apiserver with the cluster CA did not come back" || return
	[[ $rc != 0 ]] || fail "kubectl logs succeeded with a foreign kubelet CA: $out" || return
	grep -qi 'x509\|certificate' <<<"$out" || fail "not a certificate error: ${out:0:300}" || return
	konn_wait_tunnel || fail "no tunnel after the restore" || return
	out=$(timeout 30 kubectl -n "$NS" logs logger --tail=1 2>&1) || fail "kubectl logs after the restore: $out" || return
	[[ $out == "line 50" ]] || fail "kubectl logs after the restore printed: $out" || return
}

# konn_overlay: e2e/realnode/overlay with the gateway's in-cluster apiserver
# address moved to the control plane's namespace (gateway.sh applies
# $GW_OVERLAY).
konn_overlay() {
	mkdir -p "$D/overlay"
	cat >"$D/overlay/kustomization.yaml" <<EOF2
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$D/overlay" "$SRC/overlay")
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata: {name: kubelet-guard, namespace: $GW_NS}
      spec:
        template:
          spec:
            containers:
              - name: kubelet-guard
                env:
                  - {name: KUBERNETES_SERVICE_HOST, value: "$API_IP"}
EOF2
	GW_OVERLAY=$D/overlay
}

# The apiserver's requests reach kubelet-guard from the agent, on the node
# (peer = the node's own address), never from the control plane's address:
# the peer IP says nothing about who is calling.
sc_access_log_via_agent() {
	local log peers
	log=$(kubectl -n "$GW_NS" logs "$(gateway_pod)" "$@") || fail "kubectl logs of the gateway pod" || return
	peers=$(grep '"user":"kube-apiserver-kubelet-client"' <<<"$log" | sed -n 's/.*"peer":"\([^"]*\):[0-9]*".*/\1/p' | sort | uniq -c)
	[[ -n $peers ]] || fail "no request from kube-apiserver-kubelet-client" || return
	[[ $(awk '{print $2}' <<<"$peers") == "$NODE_IP" ]] || fail "peers of the apiserver's requests: $peers" || return
	echo "$KONN_MODE: the apiserver's requests arrived from $(xargs <<<"$peers") (count, peer)" >>"$D/transcript"
}
