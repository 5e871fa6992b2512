{{- define "otako.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "otako.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Component names leave room for the suffixes a Deployment adds to pod names. */}}
{{- define "otako.gateway.fullname" -}}
{{- printf "%s-gateway" (include "otako.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "otako.backendShim.fullname" -}}
{{- printf "%s-backend-shim" (include "otako.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "otako.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "otako.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: otako
{{- end }}

{{/* Selector labels of one component; call with (dict "root" $ "component" "gateway"). */}}
{{- define "otako.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otako.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "otako.secretName" -}}
{{- default (printf "%s-secrets" (include "otako.fullname" .)) .Values.existingSecret }}
{{- end }}

{{- define "otako.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Settings both binaries read. Secret ones only ever by reference. */}}
{{- define "otako.commonEnv" -}}
- name: OTAKO_TOKEN_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "otako.secretName" . }}
      key: {{ .Values.secretKeys.tokenSecret }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "otako.secretName" . }}
      key: {{ .Values.secretKeys.databaseUrl }}
- name: OTAKO_NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "otako.secretName" . }}
      key: {{ .Values.secretKeys.natsUrl }}
- name: OTAKO_LOG_JSON
  value: {{ ternary "1" "0" .Values.logJson | quote }}
{{- with .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.otel.protocol }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{- define "otako.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
automountServiceAccountToken: false
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The pod must outlive the drain window, or the kubelet kills it while sessions are
still being told to reconnect.
*/}}
{{- define "otako.gateway.terminationGracePeriodSeconds" -}}
{{- $g := .Values.gateway }}
{{- $drainSeconds := divf $g.drainWindowMs 1000 | ceil | int }}
{{- if kindIs "invalid" $g.terminationGracePeriodSeconds }}
{{- add $drainSeconds $g.drainMarginSeconds }}
{{- else if le (int $g.terminationGracePeriodSeconds) $drainSeconds }}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must exceed the drain window (%d s from gateway.drainWindowMs)" (int $g.terminationGracePeriodSeconds) $drainSeconds) }}
{{- else }}
{{- int $g.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
Rolls the pods when a chart-made Secret's content changes. Hashes the inputs, not the
rendered Secret, whose generated token differs on every offline render.
*/}}
{{- define "otako.secretChecksum" -}}
{{- list .Values.tokenSecret .Values.database.url .Values.nats.url .Values.secretKeys | toJson | sha256sum }}
{{- end }}

{{/* Egress rules of an Otako pod; call with (dict "np" .Values.networkPolicy "nats" true|false). */}}
{{- define "otako.networkPolicy.egress" -}}
{{- $np := .np }}
{{- if .nats }}
- to:
    {{- toYaml $np.nats.to | nindent 4 }}
  ports:
    - port: {{ $np.nats.port }}
      protocol: TCP
{{- end }}
- to:
    {{- toYaml $np.postgresql.to | nindent 4 }}
  ports:
    - port: {{ $np.postgresql.port }}
      protocol: TCP
{{- if $np.dns.enabled }}
- to:
    {{- toYaml $np.dns.to | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}
