{{/*
Named templates, also for parent charts that inject the sidecar into their own pods.

Every template takes a context with two fields:
  .Values   this chart's values
  .Release  the release
Standalone (this chart's own templates) passes the root context `.`. A parent chart that lists
cdc-cache under `dependencies` passes its `cdc-cache:` values, which Helm has already merged with
this chart's defaults:

  {{- $cdc := dict "Values" (index .Values "cdc-cache") "Release" .Release }}
  {{- include "cdc-cache.initContainers" $cdc | nindent 8 }}

(`index` because the key contains a dash.) None of the templates read .Chart or .Files, which in
a parent would describe the parent; cdc-cache.labels adds chart labels only when .Chart is given.
*/}}

{{/* Name of the standalone resources: <release>-cdc-cache, at most 63 characters. */}}
{{- define "cdc-cache.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "cdc-cache" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-cdc-cache" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Labels every pod carrying this release's sidecar must have: the PodMonitor selects on them.
A parent chart adds them to its pod template's labels.
*/}}
{{- define "cdc-cache.podLabels" -}}
cdc-cache/instance: {{ .Release.Name | quote }}
{{- end -}}

{{/* Selector of the standalone Deployment. */}}
{{- define "cdc-cache.selectorLabels" -}}
app.kubernetes.io/name: cdc-cache
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{/* Metadata labels of this chart's objects. */}}
{{- define "cdc-cache.labels" -}}
{{ include "cdc-cache.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service | default "Helm" | quote }}
{{- with .Chart }}
helm.sh/chart: {{ printf "%s-%s" .Name .Version | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/version: {{ .AppVersion | quote }}
{{- end }}
{{- end -}}

{{- define "cdc-cache.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/*
CDC_CACHE_TOPICS: TOPIC[=TABLE][:FORMAT] joined by commas. Duplicates fail here, at install,
rather than as a crash-looping sidecar.
*/}}
{{- define "cdc-cache.topics" -}}
{{- $specs := list -}}
{{- $topics := dict -}}
{{- $tables := dict -}}
{{- range required "topics: list at least one topic to cache" .Values.topics -}}
{{- $table := .table | default .topic -}}
{{- if hasKey $topics .topic -}}
{{- fail (printf "topics: topic %q is listed twice" .topic) -}}
{{- end -}}
{{- if hasKey $tables $table -}}
{{- fail (printf "topics: table name %q is used twice" $table) -}}
{{- end -}}
{{- $_ := set $topics .topic true -}}
{{- $_ = set $tables $table true -}}
{{- $spec := .topic -}}
{{- with .table }}{{ $spec = printf "%s=%s" $spec . }}{{ end -}}
{{- with .format }}{{ $spec = printf "%s:%s" $spec . }}{{ end -}}
{{- $specs = append $specs $spec -}}
{{- end -}}
{{- join "," $specs -}}
{{- end -}}

{{/* The env var carrying one librdkafka property: sasl.password -> CDC_CACHE_KAFKA_SASL_PASSWORD. */}}
{{- define "cdc-cache.kafkaEnvName" -}}
CDC_CACHE_KAFKA_{{ . | replace "." "_" | upper }}
{{- end -}}

{{/* Where the TLS Secret is mounted in the sidecar. */}}
{{- define "cdc-cache.tlsDir" -}}
/etc/cdc-cache/tls
{{- end -}}

{{/* librdkafka file locations implied by kafka.tls, as a YAML map (option -> path). */}}
{{- define "cdc-cache.tlsOptions" -}}
{{- $tls := .Values.kafka.tls -}}
{{- if $tls.enabled -}}
{{- $dir := include "cdc-cache.tlsDir" . -}}
{{- with $tls.caKey }}
ssl.ca.location: {{ printf "%s/ca.crt" $dir }}
{{- end }}
{{- with $tls.certKey }}
ssl.certificate.location: {{ printf "%s/tls.crt" $dir }}
{{- end }}
{{- with $tls.keyKey }}
ssl.key.location: {{ printf "%s/tls.key" $dir }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* The gRPC address for the app: 127.0.0.1:50051 or unix:/path (both valid gRPC targets). */}}
{{- define "cdc-cache.grpcAddress" -}}
{{ .Values.grpcListen }}
{{- end -}}

{{/* Directory of the unix socket, or nothing when gRPC is on TCP. */}}
{{- define "cdc-cache.socketDir" -}}
{{- if hasPrefix "unix:" .Values.grpcListen -}}
{{ trimPrefix "unix:" .Values.grpcListen | dir }}
{{- end -}}
{{- end -}}

{{/*
Refuses combinations the schema cannot express. Called by cdc-cache.container, so every mode
checks the same way.
*/}}
{{- define "cdc-cache.validate" -}}
{{- $kafka := .Values.kafka -}}
{{- $_ := required "kafka.brokers: set the Kafka bootstrap servers (host:port,host:port)" $kafka.brokers -}}
{{- /* The binary refuses these too; failing here names the value before anything is deployed. */ -}}
{{- $reserved := dict
  "bootstrap.servers" "use kafka.brokers"
  "enable.partition.eof" "readiness depends on end-of-partition events"
  "enable.auto.commit" "the log is the state; cdc-cache never commits offsets"
  "enable.auto.offset.store" "the log is the state; cdc-cache never commits offsets"
  "auto.offset.reset" "every partition is read from its beginning"
  "isolation.level" "aborted transactions must never reach the cache"
  "options" "not a librdkafka property (CDC_CACHE_KAFKA_OPTIONS is the comma-separated list)" -}}
{{- $all := keys $kafka.options -}}
{{- range $kafka.secretOptions }}{{ $all = append $all .option }}{{ end -}}
{{- range $all -}}
{{- if hasKey $reserved . -}}
{{- fail (printf "kafka option %s: set by cdc-cache itself (%s)" . (get $reserved .)) -}}
{{- end -}}
{{- end -}}
{{- range $option, $_ := $kafka.options -}}
{{- if regexMatch "password|secret|^ssl\\.key\\.pem$|^sasl\\.oauthbearer\\.config$" $option -}}
{{- fail (printf "kafka.options.%s: a secret must not be inlined in values; move it to kafka.secretOptions (option, secretName, secretKey)" $option) -}}
{{- end -}}
{{- end -}}
{{- range .Values.app.ports -}}
{{- if eq (.name | default "") "metrics" -}}
{{- fail "app.ports: the port name metrics is taken by the sidecar's admin port" -}}
{{- end -}}
{{- end -}}
{{- $secret := dict -}}
{{- range $kafka.secretOptions -}}
{{- if hasKey $kafka.options .option -}}
{{- fail (printf "kafka option %s: in both kafka.options and kafka.secretOptions; keep the secretOptions entry" .option) -}}
{{- end -}}
{{- if hasKey $secret .option -}}
{{- fail (printf "kafka.secretOptions: %s is listed twice" .option) -}}
{{- end -}}
{{- $_ := set $secret .option true -}}
{{- end -}}
{{- if $kafka.tls.enabled -}}
{{- $_ := required "kafka.tls.secretName: name the Secret holding the TLS files (or set kafka.tls.enabled: false)" $kafka.tls.secretName -}}
{{- if and (empty $kafka.tls.caKey) (empty $kafka.tls.certKey) -}}
{{- fail "kafka.tls: enabled but caKey and certKey are both empty; nothing to mount" -}}
{{- end -}}
{{- if ne (empty $kafka.tls.certKey) (empty $kafka.tls.keyKey) -}}
{{- fail "kafka.tls: certKey and keyKey go together (client certificate and its private key)" -}}
{{- end -}}
{{- $protocol := get $kafka.options "security.protocol" | toString | lower -}}
{{- if not (has $protocol (list "ssl" "sasl_ssl")) -}}
{{- fail "kafka.tls: enabled, so set kafka.options security.protocol to SSL or SASL_SSL (librdkafka ignores the files otherwise)" -}}
{{- end -}}
{{- range $option, $_ := include "cdc-cache.tlsOptions" . | fromYaml -}}
{{- if or (hasKey $kafka.options $option) (hasKey $secret $option) -}}
{{- fail (printf "kafka option %s: set by kafka.tls; remove it from kafka.options and kafka.secretOptions" $option) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The sidecar container, as one list item. With nativeSidecar it carries restartPolicy: Always and
belongs in initContainers; otherwise in containers. Parent charts normally use the two wrappers
below, which pick the right list.
*/}}
{{- define "cdc-cache.container" -}}
{{- include "cdc-cache.validate" . -}}
{{- $v := .Values -}}
{{- $port := int $v.admin.port -}}
{{- $tlsOptions := include "cdc-cache.tlsOptions" . | fromYaml -}}
{{- $socketDir := include "cdc-cache.socketDir" . -}}
- name: cdc-cache
  image: {{ include "cdc-cache.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $v.nativeSidecar }}
  # A native sidecar: kubelet starts it before the app, waits for its startup probe, restarts it
  # on exit and stops it after the app at pod deletion.
  restartPolicy: Always
  {{- end }}
  args: ["serve"]
  env:
    - name: CDC_CACHE_BROKERS
      value: {{ $v.kafka.brokers | quote }}
    - name: CDC_CACHE_TOPICS
      value: {{ include "cdc-cache.topics" . | quote }}
    - name: CDC_CACHE_FORMAT
      value: {{ $v.format | quote }}
    - name: CDC_CACHE_GRPC_LISTEN
      value: {{ $v.grpcListen | quote }}
    # The one port on the pod network: probes and Prometheus.
    - name: CDC_CACHE_METRICS_LISTEN
      value: {{ printf "%s:%d" $v.admin.bindAddress $port | quote }}
    - name: CDC_CACHE_MAX_MULTIGET_KEYS
      value: {{ $v.maxMultigetKeys | int64 | toString | quote }}
    - name: CDC_CACHE_GRPC_MAX_MESSAGE_BYTES
      value: {{ $v.grpcMaxMessageBytes | int64 | toString | quote }}
    - name: CDC_CACHE_SHUTDOWN_GRACE
      value: {{ $v.shutdownGrace | quote }}
    - name: CDC_CACHE_PARTITION_DISCOVERY_INTERVAL
      value: {{ $v.partitionDiscoveryInterval | quote }}
    - name: CDC_CACHE_ON_DECODE_ERROR
      value: {{ $v.onDecodeError | quote }}
    - name: CDC_CACHE_LOG_FORMAT
      value: {{ $v.logFormat | quote }}
    {{- with $v.logFilter }}
    - name: RUST_LOG
      value: {{ . | quote }}
    {{- end }}
    {{- range $option, $value := $v.kafka.options }}
    - name: {{ include "cdc-cache.kafkaEnvName" $option }}
      value: {{ $value | toString | quote }}
    {{- end }}
    {{- range $option, $path := $tlsOptions }}
    - name: {{ include "cdc-cache.kafkaEnvName" $option }}
      value: {{ $path | quote }}
    {{- end }}
    {{- range $v.kafka.secretOptions }}
    - name: {{ include "cdc-cache.kafkaEnvName" .option }}
      valueFrom:
        secretKeyRef:
          name: {{ .secretName | quote }}
          key: {{ .secretKey | quote }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    # Named so the PodMonitor can find it; the gRPC cache port stays on loopback and unlisted.
    - name: metrics
      containerPort: {{ $port }}
      protocol: TCP
  {{- if $v.nativeSidecar }}
  startupProbe:
    grpc:
      port: {{ $port }}
      service: ""
    periodSeconds: {{ $v.probes.startup.periodSeconds }}
    timeoutSeconds: {{ $v.probes.startup.timeoutSeconds }}
    failureThreshold: {{ $v.probes.startup.failureThreshold }}
  {{- end }}
  readinessProbe:
    grpc:
      port: {{ $port }}
      service: ""
    periodSeconds: {{ $v.probes.readiness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.readiness.failureThreshold }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $port }}
    initialDelaySeconds: {{ $v.probes.liveness.initialDelaySeconds }}
    periodSeconds: {{ $v.probes.liveness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.liveness.failureThreshold }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  # On a crash the last log lines show in `kubectl describe pod`.
  terminationMessagePolicy: FallbackToLogsOnError
  {{- if or $v.kafka.tls.enabled $socketDir }}
  volumeMounts:
    {{- if $v.kafka.tls.enabled }}
    - name: cdc-cache-tls
      mountPath: {{ include "cdc-cache.tlsDir" . }}
      readOnly: true
    {{- end }}
    {{- with $socketDir }}
    - name: cdc-cache-socket
      mountPath: {{ . }}
    {{- end }}
  {{- end }}
{{- end -}}

{{/* The sidecar for initContainers: rendered only when nativeSidecar is true. */}}
{{- define "cdc-cache.initContainers" -}}
{{- if .Values.nativeSidecar -}}
{{ include "cdc-cache.container" . }}
{{- end -}}
{{- end -}}

{{/* The sidecar for containers: rendered only when nativeSidecar is false. */}}
{{- define "cdc-cache.containers" -}}
{{- if not .Values.nativeSidecar -}}
{{ include "cdc-cache.container" . }}
{{- end -}}
{{- end -}}

{{/* Pod volumes the sidecar needs, as list items; nothing when it needs none. */}}
{{- define "cdc-cache.volumes" -}}
{{- $tls := .Values.kafka.tls -}}
{{- if $tls.enabled }}
- name: cdc-cache-tls
  secret:
    secretName: {{ $tls.secretName | quote }}
    # Readable by any user because the files are root-owned and the sidecar runs as 65532
    # without relying on the pod's fsGroup (a parent chart may not set one). The volume is
    # mounted into the sidecar only.
    defaultMode: 0444
    # Fixed file names, so the librdkafka options need not follow the Secret's key names.
    items:
      {{- with $tls.caKey }}
      - key: {{ . | quote }}
        path: ca.crt
      {{- end }}
      {{- with $tls.certKey }}
      - key: {{ . | quote }}
        path: tls.crt
      {{- end }}
      {{- with $tls.keyKey }}
      - key: {{ . | quote }}
        path: tls.key
      {{- end }}
{{- end }}
{{- if include "cdc-cache.socketDir" . }}
# The unix socket lives here: the root filesystem is read-only, and the app mounts it too.
- name: cdc-cache-socket
  emptyDir:
    sizeLimit: 1Mi
{{- end }}
{{- end -}}

{{/* Mounts the app container needs to reach the cache (the unix socket directory, if any). */}}
{{- define "cdc-cache.appVolumeMounts" -}}
{{- with include "cdc-cache.socketDir" . }}
- name: cdc-cache-socket
  mountPath: {{ . }}
{{- end }}
{{- end -}}

{{/* Env for the app container: CDC_CACHE_ADDR, where to dial the cache. */}}
{{- define "cdc-cache.appEnv" -}}
- name: CDC_CACHE_ADDR
  value: {{ include "cdc-cache.grpcAddress" . | quote }}
{{- end -}}

{{/* The standalone pod's ServiceAccount. */}}
{{- define "cdc-cache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "cdc-cache.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}
