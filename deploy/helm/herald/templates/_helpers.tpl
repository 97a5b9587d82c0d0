{{/* Names and labels shared by every object. */}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "herald.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- end -}}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "gateway"). */}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "herald.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
One secret-sourced variable as an EnvVar: from the user's Secret when existingSecret is set,
else from the chart's Secret (only when a value was given). Required ones fail the render with the
value to set. Arguments: (dict "ctx" $ "env" "HERALD_AMQP_URL" "v" .Values.rabbitmq "valueKey"
"url" "path" "rabbitmq.url" "required" true).
*/}}
{{- define "herald.secretEnv" -}}
{{- $v := .v -}}
{{- if $v.existingSecret }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.existingSecret }}
      key: {{ $v.existingSecretKey }}
{{- else if (index $v .valueKey) }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "herald.fullname" .ctx }}
      key: {{ .env }}
{{- else if .required }}
{{- fail (printf "set %s (or %s's existingSecret): Herald needs %s" .path (.path | splitList "." | first) .env) }}
{{- end }}
{{- end -}}

{{/* The environment both roles share. */}}
{{- define "herald.env" -}}
{{- include "herald.secretEnv" (dict "ctx" . "env" "HERALD_MASTER_KEY" "v" .Values.masterKey "valueKey" "value" "path" "masterKey.value" "required" true) }}
{{- include "herald.secretEnv" (dict "ctx" . "env" "HERALD_CONNECTION_SECRET" "v" .Values.connectionSecret "valueKey" "value" "path" "connectionSecret.value" "required" false) }}
{{- include "herald.secretEnv" (dict "ctx" . "env" "HERALD_AMQP_URL" "v" .Values.rabbitmq "valueKey" "url" "path" "rabbitmq.url" "required" true) }}
{{- include "herald.secretEnv" (dict "ctx" . "env" "HERALD_REDIS_URL" "v" .Values.redis "valueKey" "url" "path" "redis.url" "required" true) }}
{{- include "herald.secretEnv" (dict "ctx" . "env" "HERALD_DATABASE_URL" "v" .Values.postgresql "valueKey" "url" "path" "postgresql.url" "required" true) }}
- name: HERALD_NODE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .Values.dependencyTls }}
{{- if .existingSecret }}
{{- if .caKey }}
- name: HERALD_TLS_CA_FILE
  value: {{ printf "/etc/herald/tls/%s" .caKey | quote }}
{{- end }}
{{- if and .certKey (not .keyKey) }}
{{- fail "dependencyTls.certKey needs dependencyTls.keyKey (the client certificate's private key)" }}
{{- end }}
{{- if .certKey }}
- name: HERALD_TLS_CERT_FILE
  value: {{ printf "/etc/herald/tls/%s" .certKey | quote }}
- name: HERALD_TLS_KEY_FILE
  value: {{ printf "/etc/herald/tls/%s" .keyKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Whether the chart's own Secret has anything to hold. */}}
{{- define "herald.ownSecretNeeded" -}}
{{- $v := .Values -}}
{{- if or (and $v.masterKey.value (not $v.masterKey.existingSecret)) (and $v.connectionSecret.value (not $v.connectionSecret.existingSecret)) (and $v.rabbitmq.url (not $v.rabbitmq.existingSecret)) (and $v.redis.url (not $v.redis.existingSecret)) (and $v.postgresql.url (not $v.postgresql.existingSecret)) -}}
true
{{- end -}}
{{- end -}}

{{/* The dependencies' TLS files (dependencyTls), mounted read-only, for a container. */}}
{{- define "herald.tlsVolumeMounts" -}}
{{- if .Values.dependencyTls.existingSecret }}
volumeMounts:
  - name: dependency-tls
    mountPath: /etc/herald/tls
    readOnly: true
{{- end }}
{{- end -}}

{{/* The Secret behind herald.tlsVolumeMounts, for a pod. */}}
{{- define "herald.tlsVolumes" -}}
{{- if .Values.dependencyTls.existingSecret }}
volumes:
  - name: dependency-tls
    secret:
      secretName: {{ .Values.dependencyTls.existingSecret | quote }}
      defaultMode: 0440
{{- end }}
{{- end -}}
