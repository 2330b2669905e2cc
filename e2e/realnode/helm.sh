# shellcheck shell=bash
# The gateway installed with its Helm chart (charts/kubelet-guard) instead of
# `kubectl apply -k`, as docs/deploy.md "Helm" tells an operator: the
# namespace first, labelled privileged, then `helm install` with the values
# equal to e2e/realnode/overlay (image, serving-csr, the apiserver's address
# for a cluster without kube-proxy). Sourced by e2e/realnode/inside; used
# when REALNODE_HELM names a helm binary (e2e/realnode/run, default mode).

helm_cmd() {
	HELM_CACHE_HOME=$D/helm/cache HELM_CONFIG_HOME=$D/helm/config HELM_DATA_HOME=$D/helm/data \
		"$REALNODE_HELM" "$@"
}

helm_install_gateway() {
	kubectl create namespace "$GW_NS" >/dev/null
	kubectl label namespace "$GW_NS" pod-security.kubernetes.io/enforce=privileged \
		pod-security.kubernetes.io/warn=privileged pod-security.kubernetes.io/audit=privileged >/dev/null
	helm_cmd install kubelet-guard "$ROOT/charts/kubelet-guard" --namespace "$GW_NS" \
		--set image.repository=registry.local/kubelet-guard --set image.tag=e2e \
		--set servingCertSource=csr \
		--set-json 'extraEnv=[{"name":"KUBERNETES_SERVICE_HOST","value":"10.250.0.1"},{"name":"KUBERNETES_SERVICE_PORT","value":"6443"}]' >/dev/null
}

# The release is deployed and owns the DaemonSet that serves the node.
sc_helm_release() {
	local status owner
	status=$(helm_cmd status kubelet-guard --namespace "$GW_NS" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["info"]["status"])') ||
		fail "helm status" || return
	[[ $status == deployed ]] || fail "release status $status" || return
	owner=$(kubectl -n "$GW_NS" get daemonset kubelet-guard -o jsonpath='{.metadata.annotations.meta\.helm\.sh/release-name}')
	[[ $owner == kubelet-guard ]] || fail "the DaemonSet is not the release's: '$owner'" || return
}
