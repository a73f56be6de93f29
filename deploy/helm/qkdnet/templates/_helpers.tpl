{{/* The release's name prefix. */}}
{{- define "qkdnet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "qkdnet.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "qkdnet.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "qkdnet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* Controller names: the StatefulSet, its headless (peer) Service, and the domain of its Pods. */}}
{{- define "qkdnet.controller" -}}
{{ include "qkdnet.fullname" . }}-controller
{{- end -}}
{{- define "qkdnet.controllerPeers" -}}
{{ include "qkdnet.controller" . }}-peers
{{- end -}}
{{- define "qkdnet.controllerDomain" -}}
{{ include "qkdnet.controllerPeers" . }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}
{{- end -}}
{{- define "qkdnet.controllerSecretPrefix" -}}
{{ .Values.controller.tls.secretPrefix | default (include "qkdnet.controller" .) }}
{{- end -}}

{{/* The gRPC addresses of every replica, comma-separated: the agents' controllers and the replicas' --join. */}}
{{- define "qkdnet.controllerAddrs" -}}
{{- $c := include "qkdnet.controller" . -}}
{{- $d := include "qkdnet.controllerDomain" . -}}
{{- $addrs := list -}}
{{- range $i := until (int .Values.controller.replicas) -}}
{{- $addrs = append $addrs (printf "%s-%d.%s:%d" $c $i $d (int $.Values.controller.ports.grpc)) -}}
{{- end -}}
{{- join "," $addrs -}}
{{- end -}}

{{/* Agent names. "qkdnet.agent" takes (list $ node). */}}
{{- define "qkdnet.agent" -}}
{{- $root := index . 0 -}}
{{- $node := index . 1 -}}
{{- $label := $node.id | lower | replace "_" "-" | replace "." "-" -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $label) -}}
{{- fail (printf "topology node %q cannot name a Kubernetes object" $node.id) -}}
{{- end -}}
{{ include "qkdnet.fullname" $root }}-agent-{{ $label }}
{{- end -}}
{{- define "qkdnet.agentPeers" -}}
{{ include "qkdnet.fullname" . }}-agent-peers
{{- end -}}

{{/* The security settings every container gets (the invariants the chart tests hold). */}}
{{- define "qkdnet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "qkdnet.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}
