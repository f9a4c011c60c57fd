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

{{/* The labels of a component's pod template: only what never changes
with the chart's version, so that an upgrade to a new chart rolls no pod
whose spec is otherwise unchanged (the NATS server's above all). */}}
{{- define "sluice.podLabels" -}}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: sluice
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

{{/* The gateway's in-cluster base URL: https with gateway.tls.secretName. */}}
{{- define "sluice.gatewayUrl" -}}
{{- printf "%s://%s.%s.svc:%v" (ternary "https" "http" (ne .Values.gateway.tls.secretName "")) (include "sluice.name" (dict "root" . "component" "gateway")) .Release.Namespace .Values.gateway.service.port -}}
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
{{- /* The NATS credentials and TLS of one part (.component: gateway,
events (the gateway's event bridge), runtime or operator): each secret is
a file from a Secret volume (never an argument or a plain variable) or,
with .fromEnv (the runtime pool, whose pods start on a request's path and
would wait ~300 ms for any volume), an environment variable filled from the
Secret (secretKeyRef) and named by a flag; TLS files stay mounted. Each part
reads its own Secret, so each is its own NATS user with its own
permissions (files/nats-permissions.conf). The bundled server's Secrets are
the chart's own (templates/nats-auth.yaml); an external server's are named
in nats.external.auth.secrets (events optional: without it the bridge
shares the gateway's user). Four pieces, each empty without them:
natsArgs, natsEnv, natsVolumeMounts and natsVolumes. */ -}}
{{- define "sluice.natsAuthSecret" -}}
{{- include "sluice.name" (dict "root" .root "component" (printf "nats-%s" .component)) -}}
{{- end -}}
{{- define "sluice.natsSecurity" -}}
{{- $external := .root.Values.nats.external -}}
{{- $on := eq .root.Values.nats.mode "external" -}}
{{- $method := ternary $external.auth.method "none" $on -}}
{{- $secret := "" -}}
{{- if and (not $on) .root.Values.nats.bundled.auth.enabled -}}
{{- $method = "userPassword" -}}
{{- $secret = include "sluice.natsAuthSecret" . -}}
{{- else if and (eq .component "events") (ne $method "none") -}}
{{- $secret = index $external.auth.secrets "events" | default "" -}}
{{- if not $secret }}{{ $method = "none" }}{{ end -}}
{{- if and $secret (eq $method "token") -}}
{{- fail "nats.external.auth.secrets.events needs userPassword, nkey or creds: the event bridge has no token flag" -}}
{{- end -}}
{{- else if ne $method "none" -}}
{{- $secret = required (printf "nats.external.auth.secrets.%s is required when nats.external.auth.method is %s" .component $method) (index $external.auth.secrets .component) -}}
{{- end -}}
{{- $ca := ternary $external.tls.caSecret "" $on -}}
{{- $client := ternary $external.tls.clientCertSecret "" $on -}}
{{- dict "method" $method "secret" $secret "ca" $ca "client" $client "required" (and $on $external.tls.required) | toJson -}}
{{- end -}}

{{- define "sluice.natsArgs" -}}
{{- $s := include "sluice.natsSecurity" . | fromJson -}}
{{- $file := dict "userPassword" "password-file=/etc/sluice/nats-auth/password" "token" "token-file=/etc/sluice/nats-auth/token" "nkey" "nkey-file=/etc/sluice/nats-auth/nkey" "creds" "creds-file=/etc/sluice/nats-auth/creds" -}}
{{- if ne $s.method "none" }}
{{- if .fromEnv }}
- --nats-{{ include "sluice.natsSecretKey" $s.method }}-env={{ include "sluice.natsSecretVar" $s.method }}
{{- else }}
- --nats-{{ index $file $s.method }}
{{- end }}
{{- end }}
{{- if $s.ca }}
- --nats-ca-file=/etc/sluice/nats-ca/ca.crt
{{- end }}
{{- if $s.client }}
- --nats-cert-file=/etc/sluice/nats-client/tls.crt
- --nats-key-file=/etc/sluice/nats-client/tls.key
{{- end }}
{{- if $s.required }}
- --nats-tls-required
{{- end }}
{{- end -}}

{{- define "sluice.natsEnv" -}}
{{- $s := include "sluice.natsSecurity" . | fromJson -}}
{{- if eq $s.method "userPassword" }}
- name: SLUICE_NATS_USER
  valueFrom: { secretKeyRef: { name: {{ $s.secret }}, key: user } }
{{- end }}
{{- if and .fromEnv (ne $s.method "none") }}
- name: {{ include "sluice.natsSecretVar" $s.method }}
  valueFrom: { secretKeyRef: { name: {{ $s.secret }}, key: {{ include "sluice.natsSecretKey" $s.method }} } }
{{- end }}
{{- end -}}

{{- /* The Secret key (and flag stem) of an auth method's secret, and the
environment variable a runtime takes it from when .fromEnv. */ -}}
{{- define "sluice.natsSecretKey" -}}
{{- index (dict "userPassword" "password" "token" "token" "nkey" "nkey" "creds" "creds") . -}}
{{- end -}}
{{- define "sluice.natsSecretVar" -}}
{{- printf "SLUICE_NATS_%s" (include "sluice.natsSecretKey" . | upper) -}}
{{- end -}}

{{- define "sluice.natsVolumeMounts" -}}
{{- $s := include "sluice.natsSecurity" . | fromJson -}}
{{- if and (ne $s.method "none") (not .fromEnv) }}
- { name: nats-auth, mountPath: /etc/sluice/nats-auth, readOnly: true }
{{- end }}
{{- if $s.ca }}
- { name: nats-ca, mountPath: /etc/sluice/nats-ca, readOnly: true }
{{- end }}
{{- if $s.client }}
- { name: nats-client, mountPath: /etc/sluice/nats-client, readOnly: true }
{{- end }}
{{- end -}}

{{- define "sluice.natsVolumes" -}}
{{- $s := include "sluice.natsSecurity" . | fromJson -}}
{{- if and (ne $s.method "none") (not .fromEnv) }}
- name: nats-auth
  secret: { secretName: {{ $s.secret }} }
{{- end }}
{{- if $s.ca }}
- name: nats-ca
  secret: { secretName: {{ $s.ca }}, items: [ { key: ca.crt, path: ca.crt } ] }
{{- end }}
{{- if $s.client }}
- name: nats-client
  secret: { secretName: {{ $s.client }} }
{{- end }}
{{- end -}}

{{- /* The gateway's event bridge as its own NATS user (the events set):
flags, environment, mount and volume, each empty when it has none. */ -}}
{{- define "sluice.eventsNatsArgs" -}}
{{- $s := include "sluice.natsSecurity" (dict "root" . "component" "events") | fromJson -}}
{{- $file := dict "userPassword" "password-file=/etc/sluice/nats-events/password" "nkey" "nkey-file=/etc/sluice/nats-events/nkey" "creds" "creds-file=/etc/sluice/nats-events/creds" -}}
{{- if ne $s.method "none" }}
- --events-nats-{{ index $file $s.method }}
{{- end }}
{{- end -}}
{{- define "sluice.eventsNatsEnv" -}}
{{- $s := include "sluice.natsSecurity" (dict "root" . "component" "events") | fromJson -}}
{{- if eq $s.method "userPassword" }}
- name: SLUICE_EVENTS_NATS_USER
  valueFrom: { secretKeyRef: { name: {{ $s.secret }}, key: user } }
{{- end }}
{{- end -}}
{{- define "sluice.eventsNatsVolumeMounts" -}}
{{- $s := include "sluice.natsSecurity" (dict "root" . "component" "events") | fromJson -}}
{{- if ne $s.method "none" }}
- { name: nats-events, mountPath: /etc/sluice/nats-events, readOnly: true }
{{- end }}
{{- end -}}
{{- define "sluice.eventsNatsVolumes" -}}
{{- $s := include "sluice.natsSecurity" (dict "root" . "component" "events") | fromJson -}}
{{- if ne $s.method "none" }}
- name: nats-events
  secret: { secretName: {{ $s.secret }} }
{{- end }}
{{- end -}}

{{- /* The operator's flags that give dedicated runtimes the runtime's NATS
Secrets: the same names, looked up in each function's namespace. */ -}}
{{- define "sluice.dedicatedRuntimeNatsArgs" -}}
{{- $s := include "sluice.natsSecurity" (dict "root" . "component" "runtime") | fromJson -}}
{{- if ne $s.method "none" }}
- --runtime-nats-auth={{ $s.method }}
- --runtime-nats-secret={{ $s.secret }}
{{- end }}
{{- with $s.ca }}
- --runtime-nats-ca-secret={{ . }}
{{- end }}
{{- with $s.client }}
- --runtime-nats-client-cert-secret={{ . }}
{{- end }}
{{- if $s.required }}
- --runtime-nats-tls-required
{{- end }}
{{- end -}}

{{/*
Bytes of a size written NN, NNKi, NNMi, NNGi or NNTi (the schema's
patterns for the values it is used on).
*/}}
{{- define "sluice.bytes" -}}
{{- $n := regexFind "^[0-9]+" . | int64 -}}
{{- $unit := regexReplaceAll "^[0-9]+" . "" -}}
{{- $scale := get (dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776) $unit -}}
{{- if not $scale }}{{ fail (printf "%q: expected digits with Ki, Mi, Gi or Ti" .) }}{{ end -}}
{{- mul $n $scale -}}
{{- end -}}

{{/*
The operator's flags for the NATS layout it owns.
*/}}
{{- define "sluice.layoutArgs" -}}
{{- $layout := .Values.nats.layout -}}
{{- $replicas := $layout.replicas -}}
{{- if eq .Values.nats.mode "bundled" -}}
{{- $replicas = min 3 (int .Values.nats.bundled.replicas) -}}
{{- end -}}
- --async-deadline={{ .Values.gateway.asyncDeadline }}
- --max-queue-depth={{ .Values.gateway.maxQueueDepth }}
- --duplicate-window={{ $layout.duplicateWindow }}
- --dead-letters-per-function={{ $layout.deadLettersPerFunction }}
- --invocations-max-bytes={{ $layout.maxBytes.invocations }}
- --dead-letters-max-bytes={{ $layout.maxBytes.deadLetters }}
- --results-max-bytes={{ $layout.maxBytes.results }}
- --functions-max-bytes={{ $layout.maxBytes.functions }}
- --modules-max-bytes={{ $layout.maxBytes.modules }}
- --artifacts-max-bytes={{ $layout.maxBytes.artifacts }}
- --logs-max-bytes={{ $layout.maxBytes.logs }}
- --logs-per-function={{ $layout.logsPerFunction }}
- --logs-max-age={{ $layout.logsMaxAge }}
- --stream-replicas={{ $replicas }}
{{- end -}}
