{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "driftguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects. */}}
{{- define "driftguard.fullname" -}}
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

{{- define "driftguard.injectorName" -}}
{{- $name := printf "%s-injector" (include "driftguard.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- /* It names the webhook's Service: a DNS label, or the API server refuses the install halfway. */ -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- fail (printf "the injector's Service would be named %q, which is not a DNS label (lower case letters, digits and '-', starting with a letter): choose another release name, or set fullnameOverride" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "driftguard.tlsSecretName" -}}
{{- printf "%s-injector-tls" (include "driftguard.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "driftguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "driftguard.injectorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Common labels (app.kubernetes.io/* recommended labels). */}}
{{- define "driftguard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "driftguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: driftguard
{{- end -}}

{{- define "driftguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "driftguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "driftguard.injectorSelectorLabels" -}}
{{ include "driftguard.selectorLabels" . }}
app.kubernetes.io/component: injector
{{- end -}}

{{/* The image reference: repository@digest, or repository:tag (tag defaults to appVersion). */}}
{{- define "driftguard.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Native sidecars (init containers with restartPolicy: Always) are on by default from
Kubernetes 1.29 (beta) and GA in 1.33; an API server that does not know the field
rejects the pod, so "auto" decides by the cluster version helm sees. "auto" waits for 1.32:
before it, a Service's named targetPort (driftguard, as the README says) is not resolved to
an init container's port and the Service gets no endpoints (kubernetes/kubernetes#127958,
fixed for Endpoints and EndpointSlices in 1.32).
*/}}
{{- define "driftguard.nativeSidecar" -}}
{{- $native := toString .Values.sidecar.native -}}
{{- if eq $native "auto" -}}
{{- semverCompare ">=1.32.0-0" .Capabilities.KubeVersion.Version | toString -}}
{{- else if and (eq $native "true") (not (semverCompare ">=1.28.0-0" .Capabilities.KubeVersion.Version)) -}}
{{- fail (printf "sidecar.native=true needs Kubernetes >= 1.28 (with the SidecarContainers feature gate before 1.29; this is %s): its API server would refuse every injected pod; use auto or false" .Capabilities.KubeVersion.Version) -}}
{{- else -}}
{{- $native -}}
{{- end -}}
{{- end -}}

{{/*
A duration (sidecar.grace, sidecar.drainDelay) in milliseconds, rounded as the injector does
(proxy/rules/durations.ts): 20s, 1.5h, 500ms or ISO 8601 PnDTnHnMnS, the only shapes the
schema lets through. In an ISO value an M can only be minutes: the schema allows no months.
*/}}
{{- define "driftguard.durationMs" -}}
{{- $text := toString . -}}
{{- $part := dict "D" 0.0 "H" 0.0 "M" 0.0 "S" 0.0 -}}
{{- if hasPrefix "P" $text -}}
{{- range $unit := list "D" "H" "M" "S" -}}
{{- $_ := set $part $unit (regexFind (printf "[0-9.]+%s" $unit) $text | trimSuffix $unit | default "0" | float64) -}}
{{- end -}}
{{- round (addf (mulf $part.D 86400000) (mulf $part.H 3600000) (mulf $part.M 60000) (mulf $part.S 1000)) 0 -}}
{{- else -}}
{{- $number := regexFind "^[0-9.]+" $text -}}
{{- $unitMs := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 -}}
{{- round (mulf ($number | float64) (get $unitMs (trimPrefix $number $text))) 0 -}}
{{- end -}}
{{- end -}}

{{/*
Values added after the chart's first values, each its values.yaml default when absent:
`helm upgrade --reuse-values` from a release before it keeps that release's values, which have
none (the schema does not require them).
*/}}
{{- define "driftguard.drainDelay" -}}
{{- .Values.sidecar.drainDelay | default "5s" -}}
{{- end -}}
{{- define "driftguard.grace" -}}
{{- .Values.sidecar.grace | default "20s" -}}
{{- end -}}
{{- define "driftguard.adminLocalPort" -}}
{{- .Values.sidecar.adminLocalPort | default 15000 -}}
{{- end -}}
{{- define "driftguard.ipFamily" -}}
{{- .Values.ipFamily | default "IPv4" -}}
{{- end -}}
{{- /* A boolean: `default` would take false for absent. */ -}}
{{- define "driftguard.serviceAccountToken" -}}
{{- if hasKey .Values.sidecar "serviceAccountToken" }}{{ .Values.sidecar.serviceAccountToken }}{{ else }}true{{ end -}}
{{- end -}}

{{/*
A resource quantity as a number (cores or bytes), as the injector reads it (quantityValue in
proxy/inject/config.ts): a string the schema let through (128Mi, 50m, 1.5) or a number.
*/}}
{{- define "driftguard.quantity" -}}
{{- if kindIs "string" . -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" . -}}
{{- $factor := dict "" 1.0 "m" 0.001 "k" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 "P" 1000000000000000.0 "E" 1000000000000000000.0 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 -}}
{{- mulf ($number | float64) (get $factor (trimPrefix $number .)) -}}
{{- else -}}
{{- . | float64 -}}
{{- end -}}
{{- end -}}

{{/* The injector's configuration file (proxy/inject/config.ts). */}}
{{- define "driftguard.injectorConfig" -}}
{{- /* The injector refuses two of its ports alike at start, and with failurePolicy Fail every opted-in pod would then be refused: say so at install time. */ -}}
{{- $ports := dict "sidecar.listenPort" .Values.sidecar.listenPort "sidecar.upstreamPort" .Values.sidecar.upstreamPort "sidecar.adminPort" .Values.sidecar.adminPort "sidecar.adminLocalPort" (include "driftguard.adminLocalPort" .) -}}
{{- $seen := dict -}}
{{- range $name := keys $ports | sortAlpha -}}
{{- $port := toString (get $ports $name) -}}
{{- if hasKey $seen $port -}}
{{- fail (printf "%s and %s are both %s: the sidecar's ports must differ" (get $seen $port) $name $port) -}}
{{- end -}}
{{- $_ := set $seen $port $name -}}
{{- end -}}
{{- /* So does it a grace above 24d, or a drain delay and grace above 24d in all (the sidecar's stop deadline is a Node.js timer); the schema checked the shapes. */ -}}
{{- $graceMs := include "driftguard.durationMs" (include "driftguard.grace" .) | float64 -}}
{{- if gt $graceMs (mulf 24 86400000) -}}
{{- fail (printf "sidecar.grace %q is longer than 24d, which the sidecar refuses (its stop deadline is a timer): the injector would not start" (include "driftguard.grace" .)) -}}
{{- end -}}
{{- if gt (addf $graceMs (include "driftguard.durationMs" (include "driftguard.drainDelay" .) | float64)) (mulf 24 86400000) -}}
{{- fail (printf "sidecar.drainDelay %q and sidecar.grace %q are longer than 24d in all, which the sidecar refuses (its stop deadline is a timer): the injector would not start" (include "driftguard.drainDelay" .) (include "driftguard.grace" .)) -}}
{{- end -}}
{{- /* As the injector does at its start (proxy/inject/config.ts): a variable it sets itself (INJECTED_ENV), set again, would win and could send traffic elsewhere; one listed twice, the later would win unsaid. Refused here, or a fresh install has no injector and every opted-in pod is refused. */ -}}
{{- $injected := list "DRIFTGUARD_LISTEN" "DRIFTGUARD_UPSTREAM" "DRIFTGUARD_ADMIN" "DRIFTGUARD_PROBES" "DRIFTGUARD_GRACE" "DRIFTGUARD_DRAIN_DELAY" "NODE_OPTIONS" "POD_NAME" "POD_NAMESPACE" "OTEL_RESOURCE_ATTRIBUTES" -}}
{{- $names := dict -}}
{{- range $i, $e := .Values.sidecar.env -}}
{{- if or (has $e.name $injected) (hasPrefix "DRIFTGUARD_" $e.name) -}}
{{- fail (printf "sidecar.env[%d].name: %s is set by the injector itself (%s)" $i $e.name (join ", " $injected)) -}}
{{- end -}}
{{- if hasKey $names $e.name -}}
{{- fail (printf "sidecar.env[%d].name: %s is listed twice" $i $e.name) -}}
{{- end -}}
{{- $_ := set $names $e.name true -}}
{{- /* As the injector does: the exporter's headers (a collector's API key) from a Secret only; as a literal they would be in every injected pod's spec. */ -}}
{{- if has $e.name (list "OTEL_EXPORTER_OTLP_HEADERS" "OTEL_EXPORTER_OTLP_TRACES_HEADERS") -}}
{{- if hasKey $e "value" -}}
{{- fail (printf "sidecar.env[%d] (%s): a literal value would put the collector's credentials in this chart's ConfigMap and in the spec of every injected pod, readable by whoever can read pods: give it with valueFrom.secretKeyRef (a Secret)" $i $e.name) -}}
{{- else if not (hasKey $e.valueFrom "secretKeyRef") -}}
{{- fail (printf "sidecar.env[%d] (%s): the collector's credentials come from a Secret only: give it with valueFrom.secretKeyRef" $i $e.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* As the injector does at its start: the API server refuses a container whose request is above its limit, so every opted-in pod would be refused. */ -}}
{{- $requests := .Values.sidecar.resources.requests | default dict -}}
{{- $limits := .Values.sidecar.resources.limits | default dict -}}
{{- range $name := list "cpu" "memory" "ephemeral-storage" -}}
{{- if and (hasKey $requests $name) (hasKey $limits $name) -}}
{{- if gt (include "driftguard.quantity" (get $requests $name) | float64) (include "driftguard.quantity" (get $limits $name) | float64) -}}
{{- fail (printf "sidecar.resources.requests.%s: %v is above sidecar.resources.limits.%s (%v); the API server refuses a container so, and every pod injected with it" $name (get $requests $name) $name (get $limits $name)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
image: {{ include "driftguard.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
nativeSidecar: {{ include "driftguard.nativeSidecar" . }}
rulesConfigMap: {{ .Values.sidecar.rulesConfigMap | quote }}
{{- with .Values.image.mirrors }}
imageMirrors:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.sidecar.adminCredentialSecret }}
adminCredentialSecret: {{ . | quote }}
{{- end }}
rulesFile: {{ .Values.sidecar.rulesFile | quote }}
listenPort: {{ .Values.sidecar.listenPort }}
upstreamPort: {{ .Values.sidecar.upstreamPort }}
adminPort: {{ .Values.sidecar.adminPort }}
adminLocalPort: {{ include "driftguard.adminLocalPort" . }}
runAsUser: {{ .Values.sidecar.runAsUser }}
nodeOptions: {{ .Values.sidecar.nodeOptions | quote }}
resources:
  {{- toYaml .Values.sidecar.resources | nindent 2 }}
tmpSizeLimit: {{ .Values.sidecar.tmpSizeLimit | quote }}
serviceAccountToken: {{ include "driftguard.serviceAccountToken" . }}
grace: {{ include "driftguard.grace" . | quote }}
drainDelay: {{ include "driftguard.drainDelay" . | quote }}
ipFamily: {{ include "driftguard.ipFamily" . }}
env:
  {{- toYaml .Values.sidecar.env | nindent 2 }}
{{- end -}}

{{- /* Every address of the pod network's family, as a listen address's host part. */ -}}
{{- define "driftguard.anyAddress" -}}
{{- if eq (include "driftguard.ipFamily" .) "IPv6" }}[::]{{ else }}0.0.0.0{{ end -}}
{{- end -}}
