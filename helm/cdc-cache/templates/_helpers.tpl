{{/*
Named templates, also for parent charts that inject the sidecar into their own pods.

Every template takes a context with these fields:
  .Values        this chart's values
  .Release       the release
  .Capabilities  the cluster's capabilities (optional; enables the Kubernetes version check)
Standalone (this chart's own templates) passes the root context `.`. A parent chart that lists
cdc-cache under `dependencies` passes its `cdc-cache:` values, which Helm has already merged with
this chart's defaults:

  {{- $cdc := dict "Values" (index .Values "cdc-cache") "Release" .Release "Capabilities" .Capabilities }}

(`index` because the key contains a dash.) None of the templates read .Chart or .Files, which in
a parent would describe the parent; cdc-cache.labels adds chart labels only when .Chart is given.

The one template a parent needs is cdc-cache.inject: it takes the parent's pod template and
returns it with the sidecar, volumes, env, labels, annotations and pod settings merged in. The
smaller templates below it remain for charts that assemble the pod themselves.
*/}}

{{/* ------------------------------------------------------------------------------------------
Names, all derived from instanceName so that two copies of the chart can share a pod.
------------------------------------------------------------------------------------------- */}}

{{- define "cdc-cache.instanceName" -}}
{{- .Values.instanceName | default "cdc-cache" -}}
{{- end -}}

{{/*
Name of the standalone and monitoring objects: <release>-<instanceName>, or the release name alone
when it equals instanceName. Only an exact match shortens: a `contains` or suffix match would give
two copies the same name (release orders-cache with instances orders-cache and cache). Longer than
63 characters: the first 54 and 8 hex of the full name's sha256, so names that differ only past
the cut stay apart.
*/}}
{{- define "cdc-cache.fullname" -}}
{{- $name := include "cdc-cache.instanceName" . -}}
{{- $full := printf "%s-%s" .Release.Name $name -}}
{{- if .Values.fullnameOverride -}}
{{- $full = .Values.fullnameOverride -}}
{{- else if eq .Release.Name $name -}}
{{- $full = .Release.Name -}}
{{- end -}}
{{- if gt (len $full) 63 -}}
{{- printf "%s-%s" ($full | trunc 54 | trimSuffix "-") (sha256sum $full | trunc 8) -}}
{{- else -}}
{{- $full -}}
{{- end -}}
{{- end -}}

{{/*
The admin port's name. Kubernetes allows 15 characters (an IANA service name): <instanceName>-admin
when it fits, else cc-<6 hex of the name's sha256>-admin, short and distinct per instance.
*/}}
{{- define "cdc-cache.adminPortName" -}}
{{- $name := include "cdc-cache.instanceName" . -}}
{{- $port := printf "%s-admin" $name -}}
{{- if and (le (len $port) 15) (not (contains "--" $port)) -}}
{{- $port -}}
{{- else -}}
{{- printf "cc-%s-admin" (sha256sum $name | trunc 6) -}}
{{- end -}}
{{- end -}}

{{/* The app's env var holding the cache address: CDC_CACHE_ADDR for instanceName cdc-cache. */}}
{{- define "cdc-cache.appEnvName" -}}
{{- printf "%s_ADDR" (include "cdc-cache.instanceName" . | upper | replace "-" "_") -}}
{{- end -}}

{{/* The pod label the PodMonitor and the NetworkPolicy select on (key: value on one line). */}}
{{- define "cdc-cache.podLabelKey" -}}
{{- printf "cdc-cache/%s" (include "cdc-cache.instanceName" .) -}}
{{- end -}}

{{/*
Labels every pod carrying this copy of the sidecar must have. cdc-cache.inject adds them; a
parent assembling its own pod adds them to its pod template's labels.
*/}}
{{- define "cdc-cache.podLabels" -}}
{{ include "cdc-cache.podLabelKey" . }}: {{ .Release.Name | quote }}
{{- end -}}

{{/* Selector of the standalone Deployment. */}}
{{- define "cdc-cache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cdc-cache.instanceName" . }}
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

{{/* The Prometheus job of this release's PodMonitor: the operator names it <namespace>/<name>. */}}
{{- define "cdc-cache.monitorJob" -}}
{{- printf "%s/%s" .Release.Namespace (include "cdc-cache.fullname" .) -}}
{{- end -}}

{{- define "cdc-cache.image" -}}
{{- $repository := required "image.repository: set the registry path of the cdc-cache image (build the repository's Dockerfile and push it; no public image is published)" .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{ $repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ $repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
Budgets and durations
------------------------------------------------------------------------------------------- */}}

{{/* A humantime duration (10s, 1m30s, 500ms) in whole milliseconds. */}}
{{- define "cdc-cache.durationMs" -}}
{{- $total := 0 -}}
{{- $perUnit := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 -}}
{{- range regexFindAll `[0-9]+(ns|us|ms|s|m|h|d)` (toString .) -1 -}}
{{- $n := regexFind `^[0-9]+` . | atoi -}}
{{- $unit := regexReplaceAll `^[0-9]+` . "" -}}
{{- if eq $unit "ns" -}}
{{- $total = add $total (div $n 1000000) -}}
{{- else if eq $unit "us" -}}
{{- $total = add $total (div $n 1000) -}}
{{- else -}}
{{- $total = add $total (mul $n (get $perUnit $unit)) -}}
{{- end -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/*
The bootstrap budget in seconds: probes.startup periodSeconds x failureThreshold. The startup
probe, the classic wait hook, the Deployment's progress deadline and the NotReady alert all use it.
*/}}
{{- define "cdc-cache.startupBudgetSeconds" -}}
{{- mul (int64 .Values.probes.startup.periodSeconds) (int64 .Values.probes.startup.failureThreshold) -}}
{{- end -}}

{{/*
progressDeadlineSeconds for a Deployment of pods carrying the sidecar: the bootstrap budget plus
600 s (Kubernetes' own default, for scheduling, image pulls and the app's start), unless
standalone.progressDeadlineSeconds is set. Parent charts put it in their Deployment spec.

Takes one context, or a list of them for a pod carrying several copies of the chart:
  {{ include "cdc-cache.progressDeadlineSeconds" (list $orders $prices) }}
The copies bootstrap one after the other (kubelet starts the next init container only once a
native sidecar's startup probe passes; a classic sidecar's postStart hold likewise delays the
containers after it), so the pod needs the sum of the budgets: sum + 600 s. An explicit
standalone.progressDeadlineSeconds in any of them wins (the largest, if several set one).
*/}}
{{- define "cdc-cache.progressDeadlineSeconds" -}}
{{- $contexts := kindIs "slice" . | ternary . (list .) -}}
{{- if not $contexts -}}
{{- fail "cdc-cache.progressDeadlineSeconds: pass a context, or a list of contexts (one per copy of the chart in the pod)" -}}
{{- end -}}
{{- $explicit := 0 -}}
{{- $budgets := 0 -}}
{{- range $contexts -}}
{{- $explicit = max $explicit (int64 (.Values.standalone.progressDeadlineSeconds | default 0)) -}}
{{- $budgets = add $budgets (include "cdc-cache.startupBudgetSeconds" . | atoi) -}}
{{- end -}}
{{- if gt (int64 $explicit) 0 -}}
{{- $explicit -}}
{{- else -}}
{{- add $budgets 600 -}}
{{- end -}}
{{- end -}}

{{/*
How many pods of a Deployment bootstrap one after the other in a rolling update: replicas
divided by the pods that may be new and unready at once (maxSurge, rounded up, plus
maxUnavailable, rounded down, as Kubernetes resolves percentages), rounded up; 1 for Recreate.
Context: dict "replicas" <n> "strategy" <the Deployment's strategy>.
*/}}
{{- define "cdc-cache.rolloutWaves" -}}
{{- $replicas := int64 .replicas -}}
{{- $strategy := .strategy | default dict -}}
{{- if or (le $replicas 1) (eq (toString ($strategy.type | default "RollingUpdate")) "Recreate") -}}
1
{{- else -}}
{{- $rolling := $strategy.rollingUpdate | default dict -}}
{{- $at := 0 -}}
{{- range $key, $default := dict "maxSurge" "25%" "maxUnavailable" "25%" -}}
{{- $v := toString (hasKey $rolling $key | ternary (get $rolling $key) $default) -}}
{{- if hasSuffix "%" $v -}}
{{- $scaled := mul $replicas (trimSuffix "%" $v | atoi) -}}
{{- $at = add $at (eq $key "maxSurge" | ternary (div (add $scaled 99) 100) (div $scaled 100)) -}}
{{- else -}}
{{- $at = add $at (atoi $v) -}}
{{- end -}}
{{- end -}}
{{- if le $at 0 -}}
{{- $at = 1 -}}
{{- end -}}
{{- div (add $replicas (sub $at 1)) $at -}}
{{- end -}}
{{- end -}}

{{/*
The shortest terminationGracePeriodSeconds the sidecar needs, in milliseconds: shutdownDelay
(classic) + shutdownGrace + 12 s (ingest stops within 10 s, the admin port within 2 s) +
snapshots.shutdownAllowance (the final snapshot, written after ingest stopped).
*/}}
{{- define "cdc-cache.shutdownNeedMs" -}}
{{- include "cdc-cache.shutdownNeed" (dict "ctx" . "delay" (not .Values.nativeSidecar) "text" false) -}}
{{- end -}}

{{/* The grace-period need spelled out for error messages: "shutdownGrace 10s + 12 s (...) ...". */}}
{{- define "cdc-cache.shutdownNeedText" -}}
{{- include "cdc-cache.shutdownNeed" (dict "ctx" . "delay" (not .Values.nativeSidecar) "text" true) -}}
{{- end -}}

{{/*
Both of the above, for the sidecar and for the publisher (which has no app to wait for, so no
shutdownDelay): dict "ctx" <context> "delay" <count shutdownDelay> "text" <spell it out>.
*/}}
{{- define "cdc-cache.shutdownNeed" -}}
{{- $v := .ctx.Values -}}
{{- $snapshots := include "cdc-cache.snapshotDir" .ctx -}}
{{- $need := add (include "cdc-cache.durationMs" $v.shutdownGrace | atoi) 12000 -}}
{{- $parts := list -}}
{{- if .delay -}}
{{- $need = add $need (include "cdc-cache.durationMs" $v.shutdownDelay | atoi) -}}
{{- $parts = append $parts (printf "shutdownDelay %s" $v.shutdownDelay) -}}
{{- end -}}
{{- $parts = append $parts (printf "shutdownGrace %s" $v.shutdownGrace) -}}
{{- $parts = append $parts "12 s (consumers and admin port)" -}}
{{- if $snapshots -}}
{{- $need = add $need (include "cdc-cache.durationMs" $v.snapshots.shutdownAllowance | atoi) -}}
{{- $parts = append $parts (printf "snapshots.shutdownAllowance %s (the final snapshot)" $v.snapshots.shutdownAllowance) -}}
{{- end -}}
{{- if .text -}}
{{- printf "%s = %.1f s" (join " + " $parts) (divf $need 1000) -}}
{{- else -}}
{{- $need -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
Kafka settings
------------------------------------------------------------------------------------------- */}}

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

{{/* CDC_CACHE_PROJECT: TABLE=COLUMN,... for each topic with columns, joined by semicolons. */}}
{{- define "cdc-cache.projections" -}}
{{- $specs := list -}}
{{- range .Values.topics -}}
{{- if .columns -}}
{{- $specs = append $specs (printf "%s=%s" (.table | default .topic) (join "," .columns)) -}}
{{- end -}}
{{- end -}}
{{- join ";" $specs -}}
{{- end -}}

{{/* The env var carrying one librdkafka property: sasl.password -> CDC_CACHE_KAFKA_SASL_PASSWORD. */}}
{{- define "cdc-cache.kafkaEnvName" -}}
CDC_CACHE_KAFKA_{{ . | replace "." "_" | upper }}
{{- end -}}

{{/*
The TCP ports the sidecar connects to, as a JSON list: kafka.ports, or the ports in kafka.brokers.
*/}}
{{- define "cdc-cache.kafkaPorts" -}}
{{- $ports := list -}}
{{- if .Values.kafka.ports -}}
{{- range .Values.kafka.ports }}{{ $ports = append $ports (int64 .) }}{{ end -}}
{{- else -}}
{{- range splitList "," (.Values.kafka.brokers | default "") -}}
{{- with regexFind `[0-9]+$` . }}{{ $ports = append $ports (atoi .) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- $ports | uniq | toJson -}}
{{- end -}}

{{/* Where the TLS files are mounted in the sidecar. */}}
{{- define "cdc-cache.tlsDir" -}}
/etc/cdc-cache/tls
{{- end -}}

{{/* librdkafka file locations implied by kafka.tls, as a YAML map (option -> path). */}}
{{- define "cdc-cache.tlsOptions" -}}
{{- $tls := .Values.kafka.tls -}}
{{- if $tls.enabled -}}
{{- $dir := include "cdc-cache.tlsDir" . -}}
{{- if or $tls.ca.configMapName $tls.ca.secretName }}
ssl.ca.location: {{ printf "%s/ca.crt" $dir }}
{{- end }}
{{- if $tls.clientCert.secretName }}
ssl.certificate.location: {{ printf "%s/tls.crt" $dir }}
ssl.key.location: {{ printf "%s/tls.key" $dir }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
The gRPC address and the unix socket
------------------------------------------------------------------------------------------- */}}

{{/* Directory of the unix socket (a volume of its own), or nothing when gRPC is on TCP. */}}
{{- define "cdc-cache.socketDir" -}}
{{- if eq (toString .Values.grpcListen) "unix" -}}
{{ printf "/var/run/%s" (include "cdc-cache.instanceName" .) }}
{{- end -}}
{{- end -}}

{{/* The gRPC address for the sidecar and the app: 127.0.0.1:50051 or unix:/var/run/<name>/grpc.sock. */}}
{{- define "cdc-cache.grpcAddress" -}}
{{- with include "cdc-cache.socketDir" . -}}
{{ printf "unix:%s/grpc.sock" . }}
{{- else -}}
{{ .Values.grpcListen }}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
Snapshots
------------------------------------------------------------------------------------------- */}}

{{/*
Where the sidecar writes and reads its snapshots (an emptyDir of its own, <instanceName>-snapshots),
or nothing when snapshots are off. Fixed per instance, so two copies in one pod never share it.
*/}}
{{- define "cdc-cache.snapshotDir" -}}
{{- with .Values.snapshots -}}
{{- if .enabled -}}
{{ printf "/var/lib/%s" (include "cdc-cache.instanceName" $) }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
Checks the schema cannot express. Called by cdc-cache.container and cdc-cache.publisherContainer, so
every mode checks the same way.
------------------------------------------------------------------------------------------- */}}
{{- define "cdc-cache.validate" -}}
{{- $v := .Values -}}
{{- $kafka := $v.kafka -}}
{{- $_ := required "kafka.brokers: set the Kafka bootstrap servers (host:port,host:port)" $kafka.brokers -}}
{{- range $v.topics -}}
{{- if and (eq (.format | default $v.format) "avro") (not $v.schemaRegistry.url) -}}
{{- fail (printf "topics: %s is avro, so set schemaRegistry.url (its records name their schema by id)" .topic) -}}
{{- end -}}
{{- end -}}
{{- with $v.schemaRegistry.credentialsSecret -}}
{{- if and (or .userKey .passwordKey .tokenKey) (not .name) -}}
{{- fail "schemaRegistry.credentialsSecret: keys are set but name is empty (the Secret holding them)" -}}
{{- end -}}
{{- if and .name (not (or (and .userKey .passwordKey) .tokenKey)) -}}
{{- fail "schemaRegistry.credentialsSecret: set userKey and passwordKey (basic auth) or tokenKey (bearer token)" -}}
{{- end -}}
{{- if and .tokenKey (or .userKey .passwordKey) -}}
{{- fail "schemaRegistry.credentialsSecret: set userKey and passwordKey, or tokenKey, not both" -}}
{{- end -}}
{{- end -}}
{{- /* The binary refuses these too; failing here names the value before anything is deployed. */ -}}
{{- $reserved := dict
  "bootstrap.servers" "use kafka.brokers"
  "enable.partition.eof" "readiness depends on end-of-partition events"
  "enable.auto.commit" "the log is the state; cdc-cache never commits offsets"
  "enable.auto.offset.store" "the log is the state; cdc-cache never commits offsets"
  "auto.offset.reset" "cdc-cache sets it to error: a position outside the log means the log was reset, and the partition is rebuilt instead of skipped"
  "isolation.level" "aborted transactions must never reach the cache"
  "queued.max.messages.kbytes" "use kafka.prefetchKbytes, which the memory formula counts"
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
{{- $tls := $kafka.tls -}}
{{- if $tls.enabled -}}
{{- if and $tls.ca.configMapName $tls.ca.secretName -}}
{{- fail "kafka.tls.ca: set configMapName or secretName, not both" -}}
{{- end -}}
{{- if not (or $tls.ca.configMapName $tls.ca.secretName $tls.clientCert.secretName) -}}
{{- fail "kafka.tls: enabled but no CA (ca.configMapName or ca.secretName) and no client certificate (clientCert.secretName); nothing to mount" -}}
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
{{- include "cdc-cache.validateBindAddress" . -}}
{{- if $v.publisher.enabled -}}
{{- include "cdc-cache.validatePublisher" . -}}
{{- end -}}
{{- with include "cdc-cache.snapshotDir" . -}}
{{- $dir := . -}}
{{- $interval := include "cdc-cache.durationMs" $v.snapshots.interval | atoi -}}
{{- $maxAge := include "cdc-cache.durationMs" $v.snapshots.maxAge | atoi -}}
{{- if and (gt $interval 0) (ge $interval $maxAge) -}}
{{- fail (printf "snapshots.interval %s is not shorter than snapshots.maxAge %s: every snapshot would be too old to load by the time the next one is written" $v.snapshots.interval $v.snapshots.maxAge) -}}
{{- end -}}
{{- range $v.extraVolumeMounts -}}
{{- if eq (clean (toString .mountPath)) $dir -}}
{{- fail (printf "extraVolumeMounts: %s is the snapshot directory (snapshots.enabled); mount elsewhere, or set snapshots.enabled: false" $dir) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with $v.snapshots.remote -}}
{{- if and .url (not $v.snapshots.enabled) -}}
{{- fail (printf "snapshots.remote.url %s needs snapshots.enabled: true (the sidecar downloads into, and publishes from, its local snapshot directory)" .url) -}}
{{- end -}}
{{- if and (not .url) (or .publish .credentialsSecret .env) -}}
{{- fail "snapshots.remote: publish, credentialsSecret and env need snapshots.remote.url (s3://bucket/prefix, gs://, az:// or file:///)" -}}
{{- end -}}
{{- range $name, $_ := .env -}}
{{- if hasPrefix "CDC_CACHE_" $name -}}
{{- fail (printf "snapshots.remote.env.%s: set by the chart from its own values; use snapshots.remote.url / publish" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if hasPrefix "unix:" (toString $v.grpcListen) -}}
{{- fail (printf "grpcListen %s: set grpcListen: unix; the socket then lives at /var/run/%s/grpc.sock, in a volume of its own shared with the app (a path of your choosing could hide a directory the app needs, such as /tmp)" $v.grpcListen (include "cdc-cache.instanceName" .)) -}}
{{- end -}}
{{- end -}}

{{/*
Native sidecars need Kubernetes 1.29 (beta, on by default); an older API server drops
restartPolicy from the init container, which then blocks the pod forever. Chart.yaml sets no
kubeVersion, so classic mode installs on any version; this refuses only native mode, from
.Capabilities (optional in a parent's context; `helm template` assumes its own client's
Kubernetes version unless given --kube-version, `helm install` and `upgrade` ask the cluster).
*/}}
{{- define "cdc-cache.requireNativeSidecarSupport" -}}
{{- if and .Values.nativeSidecar .Capabilities -}}
{{- $version := .Capabilities.KubeVersion.Version -}}
{{- if semverCompare "<1.29.0-0" $version -}}
{{- fail (printf "nativeSidecar: Kubernetes %s has no native sidecars (1.29 or later); set nativeSidecar: false (classic mode works on any version)" $version) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
admin.bindAddress must be an address kubelet (probes) and Prometheus reach on the pod IP: an
unspecified address ([::], 0.0.0.0) or a non-loopback IP. The schema admits IPv4 and bracketed
IPv6 characters; here IPv6 is expanded to eight groups without leading zeros, so every spelling
of ::1 ([0:0:0:0:0:0:0:1], [0::0001]) and of IPv4 loopback inside IPv6 ([::ffff:127.0.0.1],
[::ffff:7f00:1], the old IPv4-compatible [::127.0.0.1]) is refused, as is 127.0.0.0/8.
*/}}
{{- define "cdc-cache.validateBindAddress" -}}
{{- $bind := toString .Values.admin.bindAddress -}}
{{- $loopback := false -}}
{{- $invalid := false -}}
{{- if hasPrefix "[" $bind -}}
{{- $ip := $bind | trimPrefix "[" | trimSuffix "]" | lower -}}
{{- /* An IPv4 tail (::ffff:127.0.0.1) becomes two hex groups. */ -}}
{{- if contains "." $ip -}}
{{- $parts := splitList ":" $ip -}}
{{- $v4 := last $parts -}}
{{- if not (regexMatch `^[0-9]{1,3}(\.[0-9]{1,3}){3}$` $v4) -}}
{{- $invalid = true -}}
{{- else -}}
{{- $o := list -}}
{{- range splitList "." $v4 }}{{ $o = append $o (atoi .) }}{{ end -}}
{{- range $o }}{{ if gt . 255 }}{{ $invalid = true }}{{ end }}{{ end -}}
{{- $hex := printf "%x:%x" (add (mul (index $o 0) 256) (index $o 1)) (add (mul (index $o 2) 256) (index $o 3)) -}}
{{- $ip = printf "%s%s" (trimSuffix $v4 $ip) $hex -}}
{{- end -}}
{{- end -}}
{{- $halves := splitList "::" $ip -}}
{{- $groups := list -}}
{{- if gt (len $halves) 2 -}}
{{- $invalid = true -}}
{{- else -}}
{{- $head := list -}}
{{- $tail := list -}}
{{- with index $halves 0 }}{{ $head = splitList ":" . }}{{ end -}}
{{- if eq (len $halves) 2 -}}
{{- with index $halves 1 }}{{ $tail = splitList ":" . }}{{ end -}}
{{- end -}}
{{- $missing := sub 8 (add (len $head) (len $tail)) -}}
{{- if or (lt $missing 0) (and (eq (len $halves) 1) (ne $missing 0)) (and (eq (len $halves) 2) (lt $missing 1)) -}}
{{- $invalid = true -}}
{{- else -}}
{{- $groups = $head -}}
{{- range until (int $missing) }}{{ $groups = append $groups "0" }}{{ end -}}
{{- $groups = concat $groups $tail -}}
{{- end -}}
{{- end -}}
{{- $canonical := list -}}
{{- range $groups -}}
{{- if not (regexMatch `^[0-9a-f]{1,4}$` .) }}{{ $invalid = true }}{{ end -}}
{{- $canonical = append $canonical (regexReplaceAll `^0+` . "" | default "0") -}}
{{- end -}}
{{- $ip = join ":" $canonical -}}
{{- if or (eq $ip "0:0:0:0:0:0:0:1") (regexMatch `^0:0:0:0:0:(ffff|0):7f[0-9a-f]{2}:[0-9a-f]{1,4}$` $ip) -}}
{{- $loopback = true -}}
{{- end -}}
{{- else -}}
{{- $o := list -}}
{{- range splitList "." $bind }}{{ $o = append $o (atoi .) }}{{ end -}}
{{- range $o }}{{ if gt . 255 }}{{ $invalid = true }}{{ end }}{{ end -}}
{{- if eq (first $o) 127 }}{{ $loopback = true }}{{ end -}}
{{- end -}}
{{- if $invalid -}}
{{- fail (printf "admin.bindAddress %s: not an IP address; use \"[::]\" (IPv6 and IPv4), \"0.0.0.0\" or a non-loopback IP of the pod" $bind) -}}
{{- end -}}
{{- if $loopback -}}
{{- fail (printf "admin.bindAddress %s: kubelet probes and Prometheus reach the admin port on the pod IP, so a loopback address never becomes ready; use \"[::]\" (IPv6 and IPv4) or \"0.0.0.0\"" $bind) -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
The sidecar, and the snapshot publisher built from the same definitions
------------------------------------------------------------------------------------------- */}}

{{/*
The sidecar container, as one list item. With nativeSidecar it carries restartPolicy: Always and
belongs in initContainers; otherwise in containers, before the app.
*/}}
{{- define "cdc-cache.container" -}}
{{- include "cdc-cache.requireNativeSidecarSupport" . -}}
{{- include "cdc-cache.validate" . -}}
{{ include "cdc-cache.cacheContainer" (dict "ctx" . "publisher" false) }}
{{- end -}}

{{/*
The publisher's container (templates/publisher-deployment.yaml): the same Kafka, topics, TLS, SASL,
snapshot and credentials settings as the sidecar, publishing every snapshot it writes. A regular
container in a pod of its own; the native/classic choice does not apply to it.
*/}}
{{- define "cdc-cache.publisherContainer" -}}
{{- include "cdc-cache.validate" . -}}
{{ include "cdc-cache.cacheContainer" (dict "ctx" . "publisher" true) }}
{{- end -}}

{{/*
The cdc-cache container itself: dict "ctx" <context> "publisher" <bool>. One definition for both,
so the publisher reads Kafka and writes snapshots exactly as the sidecars that load them. The
publisher differs only where it has no app: gRPC on loopback TCP (nobody calls it, so no socket),
no shutdownDelay or wait hook, the startup probe always, publishing always, publisher.interval
and publisher.resources.
*/}}
{{- define "cdc-cache.cacheContainer" -}}
{{- $ctx := .ctx -}}
{{- $publisher := .publisher -}}
{{- $v := $ctx.Values -}}
{{- $port := int $v.admin.port -}}
{{- $tlsOptions := include "cdc-cache.tlsOptions" $ctx | fromYaml -}}
{{- $socketDir := "" -}}
{{- $grpc := "" -}}
{{- $interval := $v.snapshots.interval -}}
{{- $resources := $v.resources -}}
{{- if $publisher -}}
{{- $grpc = include "cdc-cache.publisherGrpcAddress" $ctx -}}
{{- $interval = include "cdc-cache.publisherInterval" $ctx -}}
{{- with $v.publisher.resources }}{{ $resources = . }}{{ end -}}
{{- else -}}
{{- $socketDir = include "cdc-cache.socketDir" $ctx -}}
{{- $grpc = include "cdc-cache.grpcAddress" $ctx -}}
{{- end -}}
{{- $snapshotDir := include "cdc-cache.snapshotDir" $ctx -}}
{{- $budget := include "cdc-cache.startupBudgetSeconds" $ctx -}}
{{- $name := include "cdc-cache.instanceName" $ctx -}}
- name: {{ $name }}
  image: {{ include "cdc-cache.image" $ctx | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if and $v.nativeSidecar (not $publisher) }}
  # A native sidecar: kubelet starts it before the app, waits for its startup probe, restarts it
  # on exit and stops it after the app at pod deletion.
  restartPolicy: Always
  {{- end }}
  args: ["serve"]
  env:
    # The default client.id is cdc-cache-<pod name>, so brokers can tell pods apart.
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: CDC_CACHE_BROKERS
      value: {{ $v.kafka.brokers | quote }}
    - name: CDC_CACHE_TOPICS
      value: {{ include "cdc-cache.topics" $ctx | quote }}
    - name: CDC_CACHE_FORMAT
      value: {{ $v.format | quote }}
    {{- with include "cdc-cache.projections" $ctx }}
    - name: CDC_CACHE_PROJECT
      value: {{ . | quote }}
    {{- end }}
    {{- with $v.schemaRegistry }}
    {{- if .url }}
    - name: CDC_CACHE_SCHEMA_REGISTRY_URL
      value: {{ .url | quote }}
    {{- with .caFile }}
    - name: CDC_CACHE_SCHEMA_REGISTRY_CA_FILE
      value: {{ . | quote }}
    {{- end }}
    {{- $secret := .credentialsSecret }}
    {{- range $name, $key := dict "USER" $secret.userKey "PASSWORD" $secret.passwordKey "TOKEN" $secret.tokenKey }}
    {{- if $key }}
    - name: CDC_CACHE_SCHEMA_REGISTRY_{{ $name }}
      valueFrom:
        secretKeyRef:
          name: {{ $secret.name | quote }}
          key: {{ $key | quote }}
    {{- end }}
    {{- end }}
    {{- end }}
    {{- end }}
    - name: CDC_CACHE_GRPC_LISTEN
      value: {{ $grpc | quote }}
    {{- if $socketDir }}
    - name: CDC_CACHE_GRPC_SOCKET_MODE
      value: {{ $v.grpcSocket.mode | toString | quote }}
    {{- end }}
    # The one port on the pod network: probes and Prometheus.
    - name: CDC_CACHE_ADMIN_LISTEN
      value: {{ printf "%s:%d" (toString $v.admin.bindAddress) $port | quote }}
    {{- with $v.clientId }}
    - name: CDC_CACHE_CLIENT_ID
      value: {{ . | quote }}
    {{- end }}
    - name: CDC_CACHE_MAX_MULTIGET_KEYS
      value: {{ $v.maxMultigetKeys | int64 | toString | quote }}
    - name: CDC_CACHE_GRPC_MAX_MESSAGE_BYTES
      value: {{ $v.grpcMaxMessageBytes | int64 | toString | quote }}
    - name: CDC_CACHE_MAX_WATCHERS
      value: {{ $v.watch.maxWatchers | int64 | toString | quote }}
    - name: CDC_CACHE_WATCH_HISTORY
      value: {{ $v.watch.history | int64 | toString | quote }}
    - name: CDC_CACHE_WATCH_HISTORY_BYTES
      value: {{ $v.watch.historyBytes | toString | quote }}
    {{- if and (not $v.nativeSidecar) (not $publisher) }}
    # Classic sidecar: the app gets SIGTERM at the same moment; keep answering while it drains.
    - name: CDC_CACHE_SHUTDOWN_DELAY
      value: {{ $v.shutdownDelay | quote }}
    {{- end }}
    - name: CDC_CACHE_SHUTDOWN_GRACE
      value: {{ $v.shutdownGrace | quote }}
    - name: CDC_CACHE_PARTITION_DISCOVERY_INTERVAL
      value: {{ $v.partitionDiscoveryInterval | quote }}
    - name: CDC_CACHE_ON_DECODE_ERROR
      value: {{ $v.onDecodeError | quote }}
    - name: CDC_CACHE_MEMORY_LIMIT_RATIO
      value: {{ $v.memoryLimitRatio | toString | quote }}
    - name: CDC_CACHE_LOG_FORMAT
      value: {{ $v.logFormat | quote }}
    {{- with $snapshotDir }}
    # Warm starts: snapshots in the pod's emptyDir, loaded when the sidecar restarts in this pod.
    - name: CDC_CACHE_SNAPSHOT_DIR
      value: {{ . | quote }}
    - name: CDC_CACHE_SNAPSHOT_INTERVAL
      value: {{ $interval | quote }}
    - name: CDC_CACHE_SNAPSHOT_KEEP
      value: {{ $v.snapshots.keep | int64 | toString | quote }}
    - name: CDC_CACHE_SNAPSHOT_MAX_AGE
      value: {{ $v.snapshots.maxAge | quote }}
    {{- with $v.snapshots.remote.url }}
    # New pods start warm too: the newest snapshot under <url>/<table>/ is downloaded first.
    - name: CDC_CACHE_SNAPSHOT_URL
      value: {{ . | quote }}
    {{- if or $publisher $v.snapshots.remote.publish }}
    - name: CDC_CACHE_SNAPSHOT_PUBLISH
      value: "true"
    {{- end }}
    {{- range $name, $value := $v.snapshots.remote.env }}
    - name: {{ $name }}
      value: {{ $value | toString | quote }}
    {{- end }}
    {{- end }}
    {{- end }}
    {{- with $v.logFilter }}
    - name: RUST_LOG
      value: {{ . | quote }}
    {{- end }}
    # Prefetch per topic: the memory formula counts it (values.yaml, resources).
    - name: CDC_CACHE_KAFKA_QUEUED_MAX_MESSAGES_KBYTES
      value: {{ $v.kafka.prefetchKbytes | int64 | toString | quote }}
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
  {{- $credentials := "" }}
  {{- if and $snapshotDir $v.snapshots.remote.url }}
  {{- $credentials = $v.snapshots.remote.credentialsSecret }}
  {{- end }}
  {{- if or $credentials $v.extraEnvFrom }}
  envFrom:
    {{- with $credentials }}
    # Object storage credentials (AWS_*, GOOGLE_*, AZURE_*), for the sidecar only.
    - secretRef:
        name: {{ . | quote }}
    {{- end }}
    {{- with $v.extraEnvFrom }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  ports:
    # Named so the PodMonitor can find it; the gRPC cache port stays on loopback and unlisted.
    - name: {{ include "cdc-cache.adminPortName" $ctx }}
      containerPort: {{ $port }}
      protocol: TCP
  {{- if or $v.nativeSidecar $publisher }}
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
  {{- if and (not $v.nativeSidecar) $v.holdApplicationUntilReady (not $publisher) }}
  # Holds the containers listed after this one: kubelet starts them once the hook returns, i.e.
  # once every topic has caught up. A timeout (the bootstrap budget) fails the hook, which
  # restarts the sidecar, as the startup probe does in native mode.
  lifecycle:
    postStart:
      exec:
        command: ["/usr/local/bin/cdc-cache", "wait", "--timeout", {{ printf "%ss" $budget | quote }}]
  {{- end }}
  {{- with $resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  # On a crash the last log lines show in `kubectl describe pod`.
  terminationMessagePolicy: FallbackToLogsOnError
  {{- if or $v.kafka.tls.enabled $socketDir $snapshotDir $v.extraVolumeMounts }}
  volumeMounts:
    {{- if $v.kafka.tls.enabled }}
    - name: {{ $name }}-tls
      mountPath: {{ include "cdc-cache.tlsDir" $ctx }}
      readOnly: true
    {{- end }}
    {{- with $socketDir }}
    - name: {{ $name }}-socket
      mountPath: {{ . }}
    {{- end }}
    {{- with $snapshotDir }}
    # Writable, in the sidecar only; the root filesystem stays read-only.
    - name: {{ $name }}-snapshots
      mountPath: {{ . }}
    {{- end }}
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
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
{{- include "cdc-cache.cacheVolumes" (dict "ctx" . "publisher" false) -}}
{{- end -}}

{{/* The publisher pod's volumes: the sidecar's, without the unix socket (it has no app). */}}
{{- define "cdc-cache.publisherVolumes" -}}
{{- include "cdc-cache.cacheVolumes" (dict "ctx" . "publisher" true) -}}
{{- end -}}

{{/* Both of the above: dict "ctx" <context> "publisher" <bool>. */}}
{{- define "cdc-cache.cacheVolumes" -}}
{{- $ctx := .ctx -}}
{{- $name := include "cdc-cache.instanceName" $ctx -}}
{{- $tls := $ctx.Values.kafka.tls -}}
{{- if $tls.enabled }}
# One projected volume from up to two sources: the CA (ConfigMap or Secret) and the client
# certificate (Secret), under fixed file names the librdkafka options point to.
- name: {{ $name }}-tls
  projected:
    # Readable by any user: the files are root-owned and the sidecar runs as 65532 without
    # relying on an fsGroup. The volume is mounted into the sidecar only.
    defaultMode: 0444
    sources:
      {{- if $tls.ca.configMapName }}
      - configMap:
          name: {{ $tls.ca.configMapName | quote }}
          items:
            - key: {{ $tls.ca.key | quote }}
              path: ca.crt
      {{- else if $tls.ca.secretName }}
      - secret:
          name: {{ $tls.ca.secretName | quote }}
          items:
            - key: {{ $tls.ca.key | quote }}
              path: ca.crt
      {{- end }}
      {{- with $tls.clientCert.secretName }}
      - secret:
          name: {{ . | quote }}
          items:
            - key: {{ $tls.clientCert.certKey | quote }}
              path: tls.crt
            - key: {{ $tls.clientCert.keyKey | quote }}
              path: tls.key
      {{- end }}
{{- end }}
{{- if and (not .publisher) (include "cdc-cache.socketDir" $ctx) }}
# The unix socket's own directory, in memory: nothing but the socket lives here.
- name: {{ $name }}-socket
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
{{- if include "cdc-cache.snapshotDir" $ctx }}
{{- $snapshots := $ctx.Values.snapshots }}
# Snapshots for warm starts: they survive restarts of the sidecar container, not the pod. Disk
# usage past sizeLimit gets the pod evicted; with medium Memory the files count against the
# sidecar's memory limit.
- name: {{ $name }}-snapshots
  {{- if or $snapshots.medium $snapshots.sizeLimit }}
  emptyDir:
    {{- with $snapshots.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with $snapshots.sizeLimit }}
    sizeLimit: {{ . | quote }}
    {{- end }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end }}
{{- with $ctx.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Mounts the app container needs to reach the cache (the unix socket directory, if any). */}}
{{- define "cdc-cache.appVolumeMounts" -}}
{{- with include "cdc-cache.socketDir" . }}
- name: {{ include "cdc-cache.instanceName" $ }}-socket
  mountPath: {{ . }}
{{- end }}
{{- end -}}

{{/* Env for the app container: <INSTANCE_NAME>_ADDR (CDC_CACHE_ADDR), where to dial the cache. */}}
{{- define "cdc-cache.appEnv" -}}
- name: {{ include "cdc-cache.appEnvName" . }}
  value: {{ include "cdc-cache.grpcAddress" . | quote }}
{{- end -}}

{{/*
Pod annotations for mesh.excludePorts, as a YAML map (nothing for none): the broker ports out of
outbound interception, the admin port out of inbound.
*/}}
{{- define "cdc-cache.meshAnnotations" -}}
{{- $mesh := .Values.mesh.excludePorts | default "none" -}}
{{- $out := list -}}
{{- range include "cdc-cache.kafkaPorts" . | fromJsonArray }}{{ $out = append $out (toString (int64 .)) }}{{ end -}}
{{- $in := toString (int64 .Values.admin.port) -}}
{{- if eq $mesh "istio" -}}
{{- if $out }}
traffic.sidecar.istio.io/excludeOutboundPorts: {{ join "," $out | quote }}
{{- end }}
traffic.sidecar.istio.io/excludeInboundPorts: {{ $in | quote }}
{{- else if eq $mesh "linkerd" -}}
{{- if $out }}
config.linkerd.io/skip-outbound-ports: {{ join "," $out | quote }}
{{- end }}
config.linkerd.io/skip-inbound-ports: {{ $in | quote }}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
cdc-cache.inject: the one template a parent chart needs.

  {{- $cdc := dict "Values" (index .Values "cdc-cache") "Release" .Release "Capabilities" .Capabilities }}
  template:
    {{- include "cdc-cache.inject" (dict "cdc" $cdc "pod" (include "myapp.pod" . | fromYaml)) | nindent 4 }}

Takes the parent's pod template (metadata and spec, as a dict) and returns it as YAML with:
  - the sidecar: native, appended to initContainers (inject.initContainerPosition); classic,
    in containers right before the first app container (so holdApplicationUntilReady holds it);
  - every app container (inject.appContainers, default all): <INSTANCE_NAME>_ADDR unless set,
    and the socket mount in unix mode;
  - the volumes (TLS, socket, snapshots, extraVolumes);
  - labels: cdc-cache/<instanceName>: <release>;
  - annotations: kubectl.kubernetes.io/default-container (the first app container, unless set)
    and the mesh exclusions, merged into existing comma lists;
  - pod settings: fsGroup in unix mode (grpcSocket.fsGroup, unless the pod has one),
    terminationGracePeriodSeconds (the values' default unless set; refused when shorter than
    the sidecar needs, the final snapshot's allowance included), enableServiceLinks: false
    unless set.
Collisions (container, volume, port or mount path already in the pod) fail with the name. Call
it once per copy of the chart, feeding one call's result (| fromYaml) to the next.
------------------------------------------------------------------------------------------- */}}
{{- define "cdc-cache.inject" -}}
{{- $ctx := required "cdc-cache.inject: pass (dict \"cdc\" <context> \"pod\" <pod template>)" .cdc -}}
{{- $v := $ctx.Values -}}
{{- $podIn := required "cdc-cache.inject: pass the pod template as \"pod\" (a dict with metadata and spec, e.g. include \"myapp.pod\" . | fromYaml)" .pod -}}
{{- if hasKey $podIn "Error" -}}
{{- fail (printf "cdc-cache.inject: the pod template is not valid YAML: %s" $podIn.Error) -}}
{{- end -}}
{{- $pod := deepCopy $podIn -}}
{{- $name := include "cdc-cache.instanceName" $ctx -}}
{{- $meta := $pod.metadata | default dict -}}
{{- $_ := set $pod "metadata" $meta -}}
{{- $labels := $meta.labels | default dict -}}
{{- $_ = set $meta "labels" $labels -}}
{{- $annotations := $meta.annotations | default dict -}}
{{- $spec := $pod.spec | default dict -}}
{{- $_ = set $pod "spec" $spec -}}
{{- $containers := $spec.containers | default list -}}
{{- $inits := $spec.initContainers | default list -}}
{{- if not $containers -}}
{{- fail "cdc-cache.inject: the pod template has no containers; the app's containers go in spec.containers" -}}
{{- end -}}

{{- /* Native sidecars need Kubernetes 1.29: refused before anything else is merged. */ -}}
{{- include "cdc-cache.requireNativeSidecarSupport" $ctx -}}

{{- /* The app containers: named ones, or all but other cdc-cache sidecars. */ -}}
{{- $apps := list -}}
{{- range $containers -}}
{{- $isCache := false -}}
{{- range (.env | default list) }}{{ if eq .name "CDC_CACHE_GRPC_LISTEN" }}{{ $isCache = true }}{{ end }}{{ end -}}
{{- if and (not $isCache) (or (empty $v.inject.appContainers) (has .name $v.inject.appContainers)) -}}
{{- $apps = append $apps .name -}}
{{- end -}}
{{- end -}}
{{- range $v.inject.appContainers -}}
{{- if not (has . $apps) -}}
{{- fail (printf "inject.appContainers: the pod has no app container named %q" .) -}}
{{- end -}}
{{- end -}}
{{- if not $apps -}}
{{- fail "cdc-cache.inject: the pod has no app container (only cdc-cache sidecars)" -}}
{{- end -}}

{{- /* The sidecar, checked against what the pod already has. */ -}}
{{- $sidecar := include "cdc-cache.container" $ctx | fromYamlArray | first -}}
{{- $adminPort := int64 $v.admin.port -}}
{{- $adminPortName := include "cdc-cache.adminPortName" $ctx -}}
{{- $grpc := include "cdc-cache.grpcAddress" $ctx -}}
{{- range concat $inits $containers -}}
{{- $other := .name -}}
{{- if eq $other $name -}}
{{- fail (printf "cdc-cache.inject: the pod already has a container named %s; give each copy of the chart its own instanceName" $name) -}}
{{- end -}}
{{- range (.ports | default list) -}}
{{- if or (eq (int64 .containerPort) $adminPort) (eq (toString (.name | default "")) $adminPortName) -}}
{{- fail (printf "admin.port: container %s already uses port %d or the name %s; give each copy of the chart its own admin.port (and instanceName)" $other $adminPort $adminPortName) -}}
{{- end -}}
{{- end -}}
{{- range (.env | default list) -}}
{{- if and (eq .name "CDC_CACHE_GRPC_LISTEN") (eq (toString .value) $grpc) -}}
{{- fail (printf "grpcListen: container %s already listens on %s; give each copy of the chart its own address" $other $grpc) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* Placement. */ -}}
{{- if $v.nativeSidecar -}}
{{- if eq $v.inject.initContainerPosition "first" -}}
{{- $inits = prepend $inits $sidecar -}}
{{- else -}}
{{- $inits = append $inits $sidecar -}}
{{- end -}}
{{- $_ = set $spec "initContainers" $inits -}}
{{- else -}}
{{- $placed := list -}}
{{- $done := false -}}
{{- range $containers -}}
{{- if and (not $done) (has .name $apps) -}}
{{- $placed = append $placed $sidecar -}}
{{- $done = true -}}
{{- end -}}
{{- $placed = append $placed . -}}
{{- end -}}
{{- $containers = $placed -}}
{{- end -}}
{{- $_ = set $spec "containers" $containers -}}

{{- /* The app containers: the address, and the socket directory in unix mode. */ -}}
{{- $envName := include "cdc-cache.appEnvName" $ctx -}}
{{- $socketDir := include "cdc-cache.socketDir" $ctx -}}
{{- range $containers -}}
{{- if has .name $apps -}}
{{- $app := . -}}
{{- $env := .env | default list -}}
{{- $hasEnv := false -}}
{{- range $env }}{{ if eq .name $envName }}{{ $hasEnv = true }}{{ end }}{{ end -}}
{{- if not $hasEnv -}}
{{- $env = append $env (dict "name" $envName "value" $grpc) -}}
{{- end -}}
{{- $_ := set $app "env" $env -}}
{{- if $socketDir -}}
{{- $mounts := .volumeMounts | default list -}}
{{- range $mounts -}}
{{- if eq (clean .mountPath) $socketDir -}}
{{- fail (printf "cdc-cache.inject: container %s already mounts %s, the cache's socket directory" $app.name $socketDir) -}}
{{- end -}}
{{- end -}}
{{- $mounts = append $mounts (dict "name" (printf "%s-socket" $name) "mountPath" $socketDir) -}}
{{- $_ := set $app "volumeMounts" $mounts -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* Volumes. */ -}}
{{- $volumes := $spec.volumes | default list -}}
{{- with include "cdc-cache.volumes" $ctx | fromYamlArray -}}
{{- range . -}}
{{- $new := .name -}}
{{- range $volumes -}}
{{- if eq .name $new -}}
{{- fail (printf "cdc-cache.inject: the pod already has a volume named %s; rename it, or give this copy of the chart another instanceName" $new) -}}
{{- end -}}
{{- end -}}
{{- $volumes = append $volumes . -}}
{{- end -}}
{{- $_ = set $spec "volumes" $volumes -}}
{{- end -}}

{{- /* Pod settings. */ -}}
{{- if $socketDir -}}
{{- $psc := $spec.securityContext | default dict -}}
{{- if and (not (hasKey $psc "fsGroup")) (not (kindIs "invalid" $v.grpcSocket.fsGroup)) -}}
{{- $_ = set $psc "fsGroup" (int64 $v.grpcSocket.fsGroup) -}}
{{- end -}}
{{- $_ = set $spec "securityContext" $psc -}}
{{- end -}}
{{- if kindIs "invalid" $spec.terminationGracePeriodSeconds -}}
{{- $_ = set $spec "terminationGracePeriodSeconds" (int64 $v.terminationGracePeriodSeconds) -}}
{{- end -}}
{{- $needMs := include "cdc-cache.shutdownNeedMs" $ctx | atoi -}}
{{- if lt (mul (int64 $spec.terminationGracePeriodSeconds) 1000) $needMs -}}
{{- fail (printf "terminationGracePeriodSeconds %d is shorter than the sidecar needs to stop: %s, plus the app's own drain" (int64 $spec.terminationGracePeriodSeconds) (include "cdc-cache.shutdownNeedText" $ctx)) -}}
{{- end -}}
{{- if not (hasKey $spec "enableServiceLinks") -}}
{{- /* Service links could add CDC_CACHE_KAFKA_* variables, read by the sidecar as librdkafka options. */ -}}
{{- $_ = set $spec "enableServiceLinks" false -}}
{{- end -}}

{{- /* Labels and annotations. */ -}}
{{- $_ = set $labels (include "cdc-cache.podLabelKey" $ctx) $ctx.Release.Name -}}
{{- if not (hasKey $annotations "kubectl.kubernetes.io/default-container") -}}
{{- $_ = set $annotations "kubectl.kubernetes.io/default-container" (first $apps) -}}
{{- end -}}
{{- range $key, $value := include "cdc-cache.meshAnnotations" $ctx | fromYaml -}}
{{- $merged := list -}}
{{- range splitList "," (toString (get $annotations $key)) }}{{ with trim . }}{{ $merged = append $merged . }}{{ end }}{{ end -}}
{{- range splitList "," $value }}{{ $merged = append $merged . }}{{ end -}}
{{- $_ := set $annotations $key (join "," (uniq $merged)) -}}
{{- end -}}
{{- $_ = set $meta "annotations" $annotations -}}
{{- toYaml $pod -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
The snapshot publisher (publisher.enabled): a Deployment of the cdc-cache container alone that
uploads every snapshot it writes to snapshots.remote.url, so the app pods only read.
------------------------------------------------------------------------------------------- */}}

{{/* The publisher Deployment's name: <fullname>-publisher, shortened past 63 as the fullname is. */}}
{{- define "cdc-cache.publisherName" -}}
{{- $full := printf "%s-publisher" (include "cdc-cache.fullname" .) -}}
{{- if gt (len $full) 63 -}}
{{- printf "%s-%s" ($full | trunc 54 | trimSuffix "-") (sha256sum $full | trunc 8) -}}
{{- else -}}
{{- $full -}}
{{- end -}}
{{- end -}}

{{/*
Selector of the publisher Deployment. No app.kubernetes.io/name: the standalone Deployment, its
Service and PodDisruptionBudget select on name and instance alone (selectors cannot change on
upgrade), so the publisher pods must not carry both. The cdc-cache/<instanceName> label keeps the
publishers of two copies in one release apart, and lets the PodMonitor and NetworkPolicy select
them like every pod carrying this copy's sidecar.
*/}}
{{- define "cdc-cache.publisherSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: snapshot-publisher
{{ include "cdc-cache.podLabels" . }}
{{- end -}}

{{/* How often the publisher writes and uploads: publisher.interval, else snapshots.interval. */}}
{{- define "cdc-cache.publisherInterval" -}}
{{- .Values.publisher.interval | default .Values.snapshots.interval -}}
{{- end -}}

{{/*
The publisher's gRPC address: grpcListen when it is a loopback TCP address, 127.0.0.1:50051 in
unix mode (the publisher pod has no app to share a socket with).
*/}}
{{- define "cdc-cache.publisherGrpcAddress" -}}
{{- if eq (toString .Values.grpcListen) "unix" -}}
127.0.0.1:50051
{{- else -}}
{{ .Values.grpcListen }}
{{- end -}}
{{- end -}}

{{/*
The publisher pod's terminationGracePeriodSeconds: publisher.terminationGracePeriodSeconds, or 0
for the shortest the sidecar rule allows without an app to wait for: shutdownGrace + 12 s +
snapshots.shutdownAllowance, rounded up to whole seconds.
*/}}
{{- define "cdc-cache.publisherGraceSeconds" -}}
{{- $explicit := int64 (.Values.publisher.terminationGracePeriodSeconds | default 0) -}}
{{- if gt $explicit 0 -}}
{{- $explicit -}}
{{- else -}}
{{- $need := include "cdc-cache.shutdownNeed" (dict "ctx" . "delay" false "text" false) | atoi -}}
{{- div (add $need 999) 1000 -}}
{{- end -}}
{{- end -}}

{{/*
What publisher.enabled needs, checked by cdc-cache.validate wherever the sidecar or the publisher
renders, so every template refuses it with the same message.
*/}}
{{- define "cdc-cache.validatePublisher" -}}
{{- $v := .Values -}}
{{- if not $v.snapshots.enabled -}}
{{- fail "publisher.enabled needs snapshots.enabled: true (the publisher writes each snapshot to its local directory, then uploads it)" -}}
{{- end -}}
{{- if not $v.snapshots.remote.url -}}
{{- fail "publisher.enabled needs snapshots.remote.url (s3://bucket/prefix, gs://, az:// or file:///): where the publisher uploads the snapshots new pods start from" -}}
{{- end -}}
{{- $interval := include "cdc-cache.publisherInterval" . -}}
{{- $from := $v.publisher.interval | empty | ternary " (snapshots.interval; publisher.interval is empty)" "" -}}
{{- $ms := include "cdc-cache.durationMs" $interval | atoi -}}
{{- if eq $ms 0 -}}
{{- fail (printf "publisher.interval %s%s: the publisher would upload only at shutdown; set publisher.interval, e.g. 10m" $interval $from) -}}
{{- end -}}
{{- if ge $ms (include "cdc-cache.durationMs" $v.snapshots.maxAge | atoi) -}}
{{- fail (printf "publisher.interval %s%s is not shorter than snapshots.maxAge %s: every published snapshot would be too old to load by the time the next one is uploaded" $interval $from $v.snapshots.maxAge) -}}
{{- end -}}
{{- $grace := include "cdc-cache.publisherGraceSeconds" . | atoi -}}
{{- $need := include "cdc-cache.shutdownNeed" (dict "ctx" . "delay" false "text" false) | atoi -}}
{{- if lt (mul $grace 1000) $need -}}
{{- fail (printf "publisher.terminationGracePeriodSeconds %d is shorter than the publisher needs to stop: %s (0: exactly that)" $grace (include "cdc-cache.shutdownNeed" (dict "ctx" . "delay" false "text" true))) -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
Monitoring: narrowing PromQL to one release
------------------------------------------------------------------------------------------- */}}

{{/*
Adds a label matcher to every cdc_cache_* and process_* selector of a PromQL expression:
dict "expr" <PromQL> "matcher" <label="value">. A metric name runs over every character PromQL
allows in one ([a-zA-Z0-9_:]), so a name with digits or colons is never split.
*/}}
{{- define "cdc-cache.scopeExpr" -}}
{{- $expr := regexReplaceAll `\b((?:cdc_cache|process)_[a-zA-Z0-9_:]+)\{` .expr (printf "${1}{%s, " .matcher) -}}
{{- regexReplaceAll `\b((?:cdc_cache|process)_[a-zA-Z0-9_:]+)([^a-zA-Z0-9_:{(]|$)` $expr (printf "${1}{%s}${2}" .matcher) -}}
{{- end -}}

{{/* Scopes every query of dashboard panels, rows included (in place): dict "panels" <list> "matcher" <m>. */}}
{{- define "cdc-cache.scopePanels" -}}
{{- $matcher := .matcher -}}
{{- range .panels -}}
{{- range (.targets | default list) -}}
{{- if .expr -}}
{{- $_ := set . "expr" (include "cdc-cache.scopeExpr" (dict "expr" .expr "matcher" $matcher)) -}}
{{- end -}}
{{- end -}}
{{- include "cdc-cache.scopePanels" (dict "panels" (.panels | default list) "matcher" $matcher) -}}
{{- end -}}
{{- end -}}

{{/*
Release-scoped monitoring reads the series of this release's PodMonitor; refuses it without one.
Context: dict "Values" "Release" "what" (prometheusRule or dashboard).
*/}}
{{- define "cdc-cache.requirePodMonitor" -}}
{{- if not .Values.monitoring.podMonitor.enabled -}}
{{- fail (printf "monitoring.%s.scope release: the release-scoped rules and dashboard select the series of this release's PodMonitor (job=%s); enable monitoring.podMonitor, or use scope: cluster" .what (include "cdc-cache.monitorJob" .)) -}}
{{- end -}}
{{- end -}}

{{/* The standalone pod's ServiceAccount. */}}
{{- define "cdc-cache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "cdc-cache.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}
