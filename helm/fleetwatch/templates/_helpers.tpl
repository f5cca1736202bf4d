{{/* Names ---------------------------------------------------------------- */}}

{{- define "fleetwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fleetwatch.fullname" -}}
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

{{- define "fleetwatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A service's resource name: <fullname>-<key>. Context: dict root name svc. */}}
{{- define "fleetwatch.componentName" -}}
{{- printf "%s-%s" (include "fleetwatch.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fleetwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fleetwatch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels ---------------------------------------------------------------- */}}

{{- define "fleetwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleetwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fleetwatch.labels" -}}
helm.sh/chart: {{ include "fleetwatch.chart" . }}
{{ include "fleetwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fleetwatch
{{- end -}}

{{/* Context: dict root name svc. */}}
{{- define "fleetwatch.componentSelectorLabels" -}}
{{ include "fleetwatch.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "fleetwatch.componentLabels" -}}
{{ include "fleetwatch.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* Images ---------------------------------------------------------------- */}}

{{/* Context: dict root image. */}}
{{- define "fleetwatch.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag -}}
{{- if .root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .image $tag -}}
{{- else -}}
{{- printf "%s:%s" .image $tag -}}
{{- end -}}
{{- end -}}

{{/* Config ---------------------------------------------------------------- */}}

{{/* FLEETWATCH_<NAME>__ prefix. Context: dict root name svc. */}}
{{- define "fleetwatch.envPrefix" -}}
{{- printf "FLEETWATCH_%s__" (upper (default .name .svc.configName) | replace "-" "_") -}}
{{- end -}}

{{- define "fleetwatch.credentialsSecret" -}}
{{- printf "%s-credentials" (include "fleetwatch.fullname" .) -}}
{{- end -}}

{{- define "fleetwatch.databaseSecret" -}}
{{- default (include "fleetwatch.credentialsSecret" .) .Values.database.existingSecret -}}
{{- end -}}

{{- define "fleetwatch.mqttSecret" -}}
{{- default (include "fleetwatch.credentialsSecret" .) .Values.mqtt.existingSecret -}}
{{- end -}}

{{/* Whether the MQTT bridge gets a password at all ("true" or ""). */}}
{{- define "fleetwatch.mqttPassword" -}}
{{- if or .Values.mqtt.existingSecret .Values.mqtt.password -}}true{{- end -}}
{{- end -}}

{{- define "fleetwatch.objectStoreSecret" -}}
{{- default (include "fleetwatch.credentialsSecret" .) .Values.objectStore.existingSecret -}}
{{- end -}}

{{/* Whether object store keys are passed at all ("true" or ""). */}}
{{- define "fleetwatch.objectStoreKeys" -}}
{{- if or .Values.objectStore.existingSecret .Values.objectStore.accessKeyId .Values.objectStore.secretAccessKey -}}true{{- end -}}
{{- end -}}

{{/* Whether the chart creates the credentials Secret ("true" or ""). */}}
{{- define "fleetwatch.createCredentials" -}}
{{- $db := not .Values.database.existingSecret -}}
{{- $os := and (not .Values.objectStore.existingSecret) (or .Values.objectStore.accessKeyId .Values.objectStore.secretAccessKey) -}}
{{- $mqtt := and (not .Values.mqtt.existingSecret) .Values.mqtt.password -}}
{{- if or $db $os $mqtt -}}true{{- end -}}
{{- end -}}

{{/*
The config of one service as a dict: the chart's shared settings, then the
service's own `config` on top. Context: dict root name svc. Returns YAML.
*/}}
{{- define "fleetwatch.configDict" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $uses := $svc.uses | default dict -}}
{{- $c := dict -}}
{{- $_ := set $c "log" (dict "format" $root.Values.log.format "level" $root.Values.log.level "otlp_endpoint" $root.Values.log.otlpEndpoint) -}}
{{- $_ := set $c "admin" (dict "listen" (printf "0.0.0.0:%d" (int $svc.adminPort))) -}}
{{- $_ := set $c "kafka" (dict "bootstrap_servers" $root.Values.kafka.bootstrapServers) -}}
{{- range $p := $svc.ports | default list -}}
{{- if $p.listenSection -}}
{{- $_ := set $c $p.listenSection (dict "listen" (printf "0.0.0.0:%d" (int $p.port))) -}}
{{- end -}}
{{- end -}}
{{- if $uses.mqtt -}}
{{- $_ := set $c "mqtt" (dict "host" $root.Values.mqtt.host "port" $root.Values.mqtt.port "username" $root.Values.mqtt.username) -}}
{{- end -}}
{{- if $uses.objectStore -}}
{{- $o := $root.Values.objectStore -}}
{{- $_ := set $c "object_store" (dict "url" $o.url "endpoint" $o.endpoint "region" $o.region "allow_http" $o.allowHttp) -}}
{{- end -}}
{{- $merged := mergeOverwrite $c (deepCopy ($svc.config | default dict)) -}}
{{- toYaml $merged -}}
{{- end -}}

{{/*
A dict rendered as TOML. Scalars and lists of scalars are written with
toJson (valid TOML, and integers stay integers); strings go through `tpl`.
Context: dict root table prefix.
*/}}
{{- define "fleetwatch.toml" -}}
{{- $root := .root -}}
{{- $prefix := .prefix -}}
{{- range $k, $v := .table -}}
{{- if not (kindIs "map" $v) -}}
{{- if kindIs "string" $v }}
{{ include "fleetwatch.tomlKey" $k }} = {{ tpl $v $root | toJson }}
{{- else if kindIs "slice" $v }}
{{- range $v }}{{ if kindIs "map" . }}{{ fail (printf "config %s%s: arrays of tables are not supported" $prefix $k) }}{{ end }}{{ end }}
{{ include "fleetwatch.tomlKey" $k }} = {{ toJson $v }}
{{- else if kindIs "invalid" $v -}}
{{- else }}
{{ include "fleetwatch.tomlKey" $k }} = {{ toJson $v }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $k, $v := .table -}}
{{- if kindIs "map" $v -}}
{{- $name := printf "%s%s" $prefix (include "fleetwatch.tomlKey" $k) }}

[{{ $name }}]
{{- include "fleetwatch.toml" (dict "root" $root "table" $v "prefix" (printf "%s." $name)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A bare TOML key when possible, else a quoted one. */}}
{{- define "fleetwatch.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/* The service's config.toml text. Context: dict root name svc. */}}
{{- define "fleetwatch.configToml" -}}
# fleetwatch-{{ .name }} configuration, rendered by the Helm chart.
# Secrets (database URL, object store keys) come from the environment.
{{- include "fleetwatch.toml" (dict "root" .root "table" (include "fleetwatch.configDict" . | fromYaml) "prefix" "") }}
{{ end -}}

{{/* fleetctl's FLEETCTL_CONFIG text. */}}
{{- define "fleetwatch.fleetctlToml" -}}
{{- $t := .Values.migration.topics -}}
{{- if hasKey $t "replication" -}}
{{- fail "migration.topics.replication is now migration.topics.replicationFactor (with minInsyncReplicas next to it)" -}}
{{- end -}}
{{- /* Topic configs are strings to Kafka; numbers in values become their JSON text. */ -}}
{{- $configs := dict -}}
{{- range $topic, $kv := ($t.configs | default dict) -}}
{{- $c := dict -}}
{{- range $k, $v := $kv -}}
{{- $_ := set $c $k (ternary $v (toJson $v) (kindIs "string" $v)) -}}
{{- end -}}
{{- $_ := set $configs $topic $c -}}
{{- end -}}
# fleetctl topic settings, rendered by the Helm chart.
{{- include "fleetwatch.toml" (dict "root" . "table" (dict "topics" (dict "default_partitions" $t.defaultPartitions "dlq_partitions" $t.dlqPartitions "replication_factor" $t.replicationFactor "min_insync_replicas" $t.minInsyncReplicas "max_message_bytes" $t.maxMessageBytes "frames_max_message_bytes" $t.framesMaxMessageBytes "partitions" ($t.partitions | default dict) "configs" $configs)) "prefix" "") }}
{{ end -}}

{{/* Validation ----------------------------------------------------------- */}}

{{/* Context: dict root name svc. Fails on values that cannot work. */}}
{{- define "fleetwatch.validateService" -}}
{{- $as := .svc.autoscaling | default dict -}}
{{- $mode := default "none" $as.mode -}}
{{- if not (has $mode (list "keda" "hpa" "none")) -}}
{{- fail (printf "services.%s.autoscaling.mode must be keda, hpa or none (got %q)" .name $mode) -}}
{{- end -}}
{{- if and (eq $mode "keda") (empty .svc.consumes) -}}
{{- fail (printf "services.%s.autoscaling.mode=keda needs at least one entry in services.%s.consumes" .name .name) -}}
{{- end -}}
{{- if not .svc.image -}}
{{- fail (printf "services.%s.image is required" .name) -}}
{{- end -}}
{{- if not .svc.adminPort -}}
{{- fail (printf "services.%s.adminPort is required" .name) -}}
{{- end -}}
{{- range .svc.consumes | default list -}}
{{- if or (not .topic) (not .group) -}}
{{- fail (printf "services.%s.consumes entries need both topic and group" $.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
