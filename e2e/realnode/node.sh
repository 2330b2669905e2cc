# shellcheck shell=bash
# The one-node cluster of e2e/realnode, sourced by e2e/realnode/inside (which
# runs inside the run's network namespace). Functions only; state under $D.
#
#   node_pki                 one CA for everything, as kubeadm does
#   node_images              pause + busybox test images (docker-archive)
#   node_containerd          containerd (CRI) + CNI bridge rn0, 10.244.0.0/24
#   node_control_plane       etcd, kube-apiserver, kube-controller-manager, kube-scheduler
#   node_kubelet_start       the real kubelet (config + drop-ins in $D/kubelet/conf.d)
#   node_kubelet_stop
#   node_down                stop everything, release every mount and link
#
# Needs $BIN (kubelet, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, crireset), $D (work dir), $SRC (this folder).
#
# One namespace by default: the control plane and the node share it, and the
# apiserver is reached at the node IP. With CP_NETNS set (e2e/realnode/run
# --konnectivity), etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler run in that network namespace instead (cp_pidfile), and
# API_IP is the control plane's address there.

NODE=realnode
NODE_IP=10.250.0.1
API_IP=${API_IP:-$NODE_IP}
CP_NETNS=${CP_NETNS:-}
# Extra kube-apiserver flags (--egress-selector-config-file), and the CA it
# verifies kubelet serving certificates with (default: the cluster CA).
APISERVER_EXTRA=()
KUBELET_CA=${KUBELET_CA:-}
API_PORT=6443
POD_CIDR=10.244.0.0/24

# pidfile NAME CMD...: start CMD in the background, log to $D/logs/NAME.log.
pidfile() {
	local name=$1
	shift
	"$@" >"$D/logs/$name.log" 2>&1 &
	echo $! >"$D/pids/$name"
}

# cp_pidfile NAME CMD...: pidfile, in the control plane's network namespace.
# nsenter --net execs CMD without forking, so the pid is CMD's.
cp_pidfile() {
	local name=$1 pre=()
	shift
	[[ -z $CP_NETNS ]] || pre=(nsenter "--net=$CP_NETNS")
	pidfile "$name" "${pre[@]}" "$@"
}

# stop_pid NAME: TERM, 5 s, KILL.
stop_pid() {
	local f=$D/pids/$1 pid
	[[ -f $f ]] || return 0
	pid=$(cat "$f")
	rm -f "$f"
	kill "$pid" 2>/dev/null || return 0
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
}

# wait_until DESC SECONDS CMD...: poll CMD every 0.2 s.
wait_until() {
	local desc=$1 secs=$2 end=$((SECONDS + $2))
	shift 2
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= end)); then
			echo "timed out after $secs s waiting for $desc" >&2
			return 1
		fi
		sleep 0.2
	done
}

# kubeconfig NAME: $D/NAME.kubeconfig for the client certificate pki/NAME.
kubeconfig() {
	cat >"$D/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://$API_IP:$API_PORT", certificate-authority: $D/pki/ca.crt}}]
users: [{name: u, user: {client-certificate: $D/pki/$1.crt, client-key: $D/pki/$1.key}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
EOF
}

node_pki() {
	local p=$D/pki
	mkdir -p "$p"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$p/ca.key" -out "$p/ca.crt" \
		-days 2 -subj /CN=realnode-ca 2>/dev/null
	# cert NAME SUBJECT EXTENSIONS
	cert() {
		openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$p/$1.key" -out "$p/$1.csr" -subj "$2" 2>/dev/null
		printf '%b' "$3" >"$p/$1.ext"
		openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -out "$p/$1.crt" \
			-days 2 -extfile "$p/$1.ext" 2>/dev/null
	}
	local client='extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature'
	local api_sans=IP:$NODE_IP
	[[ $API_IP == "$NODE_IP" ]] || api_sans+=,IP:$API_IP
	cert apiserver /CN=kube-apiserver "subjectAltName=$api_sans,IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature"
	# The kubelet's own serving certificate: IP SANs for the node IP (the
	# apiserver's dial in the baseline) and loopback.
	cert kubelet "/O=system:nodes/CN=system:node:$NODE" "subjectAltName=IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature"
	cert kubelet-client "/O=system:nodes/CN=system:node:$NODE" "$client"
	# kubeadm's name for the apiserver's kubelet client: the CN the shipped
	# ConfigMap's static rule names.
	cert apiserver-kubelet-client /O=system:masters/CN=kube-apiserver-kubelet-client "$client"
	cert admin /O=system:masters/CN=admin "$client"
	cert controller-manager /CN=system:kube-controller-manager "$client"
	cert scheduler /CN=system:kube-scheduler "$client"
	# The gateway's credential towards the kubelet (manifests/kubelet-client-rbac.yaml).
	cert kubelet-guard-client /CN=kubelet-guard "$client"
	openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
	openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
	kubeconfig admin
	kubeconfig kubelet-client
	kubeconfig controller-manager
	kubeconfig scheduler
}

node_images() {
	local i=$D/images
	mkdir -p "$i"
	gcc -Os -static -o "$i/pause" "$SRC/images/pause.c"
	gcc -Os -static -o "$i/ttysize" "$SRC/images/ttysize.c"
	python3 "$ROOT/image/build.py" "$i/pause.tar" registry.local/pause:1 --entrypoint '["/pause"]' "$i/pause=/pause" >/dev/null
	local links=() a
	for a in $(busybox --list); do [[ $a == busybox ]] || links+=(--link "bin/$a=busybox"); done
	python3 "$ROOT/image/build.py" "$i/busybox.tar" registry.local/busybox:1 --cmd '["sh"]' \
		--dir tmp --dir root --dir proc --dir sys --dir dev \
		--text $'etc/passwd=root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
		--text $'etc/group=root:x:0:\nnogroup:x:65534:\n' \
		/bin/busybox=bin/busybox "$i/ttysize=bin/ttysize" "${links[@]}" >/dev/null
}

node_containerd() {
	local c=$D/containerd
	mkdir -p "$c" "$D/cni/net.d" "$D/cni/ipam"
	# restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, and runc fails
	# to set the sandboxes' -998 OOM score without it.
	containerd config default | sed \
		-e "s#^root = .*#root = \"$c/root\"#" -e "s#^state = .*#state = \"$c/state\"#" \
		-e "s#address = \"/run/containerd/containerd.sock\"#address = \"$c/containerd.sock\"#" \
		-e 's#sandbox_image = .*#sandbox_image = "registry.local/pause:1"#' \
		-e 's#restrict_oom_score_adj = false#restrict_oom_score_adj = true#' \
		-e 's#netns_mounts_under_state_dir = false#netns_mounts_under_state_dir = true#' \
		-e 's#bin_dir = "/opt/cni/bin"#bin_dir = "/usr/lib/cni"#' \
		-e "s#conf_dir = \"/etc/cni/net.d\"#conf_dir = \"$D/cni/net.d\"#" \
		-e "s#path = \"/opt/containerd\"#path = \"$c/opt\"#" \
		-e "s#^            Root = \"\"#            Root = \"$c/runc\"#" >"$c/config.toml"
	cat >"$D/cni/net.d/10-realnode.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "realnode", "plugins": [
  {"type": "bridge", "bridge": "rn0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$D/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
EOF
	pidfile containerd containerd --config "$c/config.toml"
	wait_until containerd 20 test -S "$c/containerd.sock"
	export CONTAINERD_ADDRESS=$c/containerd.sock
	local t
	for t in "$D"/images/*.tar; do ctr -n k8s.io images import "$t" >/dev/null; done
}

node_control_plane() {
	local p=$D/pki
	# The kubelet refuses a loopback node IP, and this kernel has no dummy
	# driver: the node IP lives on this namespace's lo (with --konnectivity,
	# on the node's end of the veth, set up by e2e/realnode/run).
	[[ -n $CP_NETNS ]] || ip addr add "$NODE_IP/32" dev lo 2>/dev/null || true
	cp_pidfile etcd etcd --name "$NODE" --data-dir "$D/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster "$NODE=http://127.0.0.1:2380" --unsafe-no-fsync
	node_apiserver_start
	# The DaemonSet controller, the kubelet-serving CSR signer (the cluster CA,
	# CERT_DURATION per certificate so rotation happens within the run), the
	# kube-root-ca.crt publisher and the ServiceAccount controllers.
	cp_pidfile kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$D/controller-manager.kubeconfig" \
		--authentication-kubeconfig "$D/controller-manager.kubeconfig" --authorization-kubeconfig "$D/controller-manager.kubeconfig" \
		--bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
		--cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" \
		--cluster-signing-duration "$CERT_DURATION" --root-ca-file "$p/ca.crt" \
		--service-account-private-key-file "$p/sa.key"
	cp_pidfile kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$D/scheduler.kubeconfig" \
		--authentication-kubeconfig "$D/scheduler.kubeconfig" --authorization-kubeconfig "$D/scheduler.kubeconfig" \
		--bind-address 127.0.0.1 --leader-elect=false
}

# node_apiserver_start: kube-apiserver with APISERVER_EXTRA and KUBELET_CA;
# also how --konnectivity restarts it (stop_pid kube-apiserver first).
node_apiserver_start() {
	local p=$D/pki
	# --kubelet-certificate-authority: the apiserver verifies whatever answers
	# <node-ip>:10250 — the kubelet in the baseline, kubelet-guard after.
	# Admission defaults (ServiceAccount included) plus NodeRestriction.
	cp_pidfile kube-apiserver "$BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
		--bind-address 0.0.0.0 --advertise-address "$API_IP" --secure-port "$API_PORT" \
		--cert-dir "$D/apiserver-certs" --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
		--client-ca-file "$p/ca.crt" --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
		--service-account-issuer https://kubernetes.default.svc --service-cluster-ip-range 10.96.0.0/12 \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--kubelet-client-certificate "$p/apiserver-kubelet-client.crt" --kubelet-client-key "$p/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority "${KUBELET_CA:-$p/ca.crt}" --kubelet-preferred-address-types InternalIP \
		"${APISERVER_EXTRA[@]}"
	wait_until kube-apiserver 90 kubectl get --raw /readyz
}

# node_kubelet_start: the kubelet as a node's kubeadm-like config describes
# it, plus every drop-in in $D/kubelet/conf.d (the harness installs
# manifests/node/90-kubelet-guard.conf there to enrol the node).
node_kubelet_start() {
	local k=$D/kubelet p=$D/pki
	mkdir -p "$k/manifests" "$k/root" "$k/pod-logs" "$k/conf.d"
	cat >"$k/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 0.0.0.0
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
staticPodPath: $k/manifests
fileCheckFrequency: 5s
podLogsDir: $k/pod-logs
volumePluginDir: $k/volume-plugins
tlsCertFile: $p/kubelet.crt
tlsPrivateKeyFile: $p/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $p/ca.crt}
authorization:
  mode: Webhook
  # The kubelet caches a denial for 30 s by default; the scenarios change RBAC.
  webhook: {cacheAuthorizedTTL: 1s, cacheUnauthorizedTTL: 1s}
# What this VM needs: no cgroup QoS hierarchy, no swap check, cgroup v1.
cgroupsPerQOS: false
# "none", not []: with --config-dir an empty list reads as unset and
# defaults to ["pods"], which needs cgroupsPerQOS.
enforceNodeAllocatable: ["none"]
failSwapOn: false
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$D/containerd/containerd.sock
imageServiceEndpoint: unix://$D/containerd/containerd.sock
resolvConf: ""
# One log file for the --perf flood pod's 64 MiB (kubectl logs reads the newest file only).
containerLogMaxSize: 100Mi
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}
EOF
	pidfile kubelet "$BIN/kubelet" --config "$k/config.yaml" --config-dir "$k/conf.d" --root-dir "$k/root" \
		--kubeconfig "$D/kubelet-client.kubeconfig" --hostname-override "$NODE" --node-ip "$NODE_IP" --v=2
	wait_until "kubelet healthz" 60 curl -sf http://127.0.0.1:10248/healthz
}

node_kubelet_stop() {
	stop_pid kubelet
}

# node_down: idempotent; also run by the outer script if this one died.
node_down() {
	local name
	for name in approver konnectivity-agent kubelet prometheus; do stop_pid "$name"; done
	# Sandboxes first: CNI DEL, netns, shm and rootfs mounts go with
	# StopPodSandbox/RemovePodSandbox, which need containerd running.
	if [[ -S $D/containerd/containerd.sock ]] && [[ -f $D/pids/containerd ]]; then
		timeout 120 "$BIN/crireset" -socket "$D/containerd/containerd.sock" >"$D/logs/crireset.log" 2>&1 || true
	fi
	# A sandbox the kubelet was still creating when it stopped is not listed
	# yet: its shim outlives containerd. Stop the shims of this run's socket.
	pkill -f "containerd-shim-runc-v2 .*-address $D/containerd/containerd.sock" 2>/dev/null || true
	for name in containerd kube-scheduler kube-controller-manager kube-apiserver konnectivity-server etcd; do stop_pid "$name"; done
	# The kubelet bind-mounts its root dir onto itself (rshared).
	awk -v d="$D/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
	# What the kubelet writes outside its root dir.
	find /var/log/containers -maxdepth 1 -lname "$D/*" -delete 2>/dev/null || true
	rm -f /var/lib/kubelet/device-plugins/kubelet.sock
	ip link del rn0 2>/dev/null || true
	ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
}
