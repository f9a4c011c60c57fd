{{/* The prefix of every object's name: the release name, with "-sluice"
when the release name does not already say sluice. */}}
{{- define "sluice.fullname" -}}
{{- if contains "sluice" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-sluice" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of a component's objects: sluice.fullname + "-" + component. */}}
{{- define "sluice.name" -}}
{{- printf "%s-%s" (include "sluice.fullname" .root) .component -}}
{{- end -}}

{{/* Selector labels of a component; never changed by an upgrade (a
Deployment's selector is immutable). */}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: sluice-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* Every label of a component's objects and pods. */}}
{{- define "sluice.labels" -}}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: sluice
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* An image of Sluice's: registry/name:tag, the tag defaulting to appVersion. */}}
{{- define "sluice.image" -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .name (default .root.Chart.AppVersion .root.Values.image.tag) -}}
{{- end -}}

{{/* The NATS URL every part connects to. The bundled server is named by
its Service's cluster DNS name with the namespace, so dedicated runtimes in
functions' namespaces reach it too. */}}
{{- define "sluice.natsUrl" -}}
{{- if eq .Values.nats.mode "external" -}}
{{- required "nats.external.url is required when nats.mode is external" .Values.nats.external.url -}}
{{- else -}}
{{- printf "nats://%s.%s.svc:4222" (include "sluice.name" (dict "root" . "component" "nats")) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The gateway's in-cluster base URL. */}}
{{- define "sluice.gatewayUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "sluice.name" (dict "root" . "component" "gateway")) .Release.Namespace .Values.gateway.service.port -}}
{{- end -}}

{{/* The restricted Pod Security Standard: the pod's part. Sluice's images
run as 65532. */}}
{{- define "sluice.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .user | default 65532 }}
runAsGroup: {{ .user | default 65532 }}
{{- with .fsGroup }}
fsGroup: {{ . }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The restricted Pod Security Standard: each container's part. */}}
{{- define "sluice.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "sluice.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* HTTP probes on the container port named admin. */}}
{{- define "sluice.probes" -}}
readinessProbe:
  httpGet: { path: /readyz, port: admin }
  periodSeconds: 5
livenessProbe:
  httpGet: { path: /healthz, port: admin }
  periodSeconds: 10
  failureThreshold: 6
{{- end -}}

{{- /* Egress every part needs: DNS, and NATS (the bundled server's pods,
or the ports of nats.external.url anywhere). */ -}}
{{- define "sluice.egressBase" -}}
- ports:
    - { port: 53, protocol: UDP }
    - { port: 53, protocol: TCP }
{{- if eq .Values.nats.mode "bundled" }}
- to:
    - podSelector:
        matchLabels:
          {{- include "sluice.selectorLabels" (dict "root" . "component" "nats") | nindent 10 }}
  ports:
    - { port: 4222, protocol: TCP }
{{- else }}
{{- $ports := list }}
{{- range regexFindAll ":[0-9]+" .Values.nats.external.url -1 }}
{{- $ports = append $ports (trimPrefix ":" .) }}
{{- end }}
- ports:
    {{- range ($ports | default (list "4222") | uniq) }}
    - { port: {{ . }}, protocol: TCP }
    {{- end }}
{{- end }}
{{- end }}
{{- /* Ingress to a component's admin port from whoever scrapes it. */ -}}
{{- define "sluice.metricsIngress" -}}
{{- if .from }}
- from:
    {{- toYaml .from | nindent 4 }}
  ports:
    - { port: {{ .port }}, protocol: TCP }
{{- end }}
{{- end }}

{{/*
The egress guard's lists as flags: --<prefix>egress-allow and
--<prefix>egress-deny, one per entry (prefix "runtime-" for the operator,
which passes them on to dedicated runtimes).
*/}}
{{- define "sluice.egressArgs" -}}
{{- range .root.Values.egress.allow }}
- --{{ $.prefix }}egress-allow={{ . }}
{{- end }}
{{- range .root.Values.egress.deny }}
- --{{ $.prefix }}egress-deny={{ . }}
{{- end }}
{{- end }}
