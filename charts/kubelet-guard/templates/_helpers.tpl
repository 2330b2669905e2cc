{{/* Labels every object carries, as in manifests/. */}}
{{- define "kubelet-guard.labels" -}}
app.kubernetes.io/name: kubelet-guard
{{- end -}}
