{{/* Chart name, at most 63 characters. */}}
{{- define "stampede.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full object name: RELEASE-stampede, or RELEASE when it already contains the chart name. */}}
{{- define "stampede.fullname" -}}
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

{{/* Chart label value: name-version. */}}
{{- define "stampede.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object of the release carries. */}}
{{- define "stampede.labels" -}}
helm.sh/chart: {{ include "stampede.chart" . }}
{{ include "stampede.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: controller
{{- end }}

{{/* Labels the Deployment and Service select the controller pods by. */}}
{{- define "stampede.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stampede.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the controller runs as. */}}
{{- define "stampede.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stampede.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The controller's image: repository:tag, the tag defaulting to the appVersion. */}}
{{- define "stampede.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/* The image of prepare and worker pods: workerImage, or the controller's own. */}}
{{- define "stampede.workerImage" -}}
{{- default (include "stampede.image" .) .Values.workerImage }}
{{- end }}

{{/* The one namespace to watch, or empty for all; fails on more than one. */}}
{{- define "stampede.watchNamespace" -}}
{{- $namespaces := .Values.watchNamespaces | default list }}
{{- if kindIs "string" $namespaces }}
{{- $namespaces = list $namespaces }}
{{- end }}
{{- if gt (len $namespaces) 1 }}
{{- fail (printf "watchNamespaces: the controller watches one namespace or all of them, not %d (%s)" (len $namespaces) (join ", " $namespaces)) }}
{{- end }}
{{- if $namespaces }}
{{- first $namespaces }}
{{- end }}
{{- end }}

{{/* STAMPEDE_WORKER_SCHEDULING: the workers' scheduling as one JSON object. */}}
{{- define "stampede.workerScheduling" -}}
{{- $w := .Values.workers | default dict }}
{{- dict "nodeSelector" (include "stampede.stringMap" ($w.nodeSelector | default dict) | fromJson) "tolerations" ($w.tolerations | default list) "affinity" ($w.affinity | default dict) | toJson }}
{{- end }}

{{/* The Lease the replicas elect a leader with. */}}
{{- define "stampede.leaseName" -}}
{{- default (include "stampede.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* A map with every value made a string, as JSON: `--set nodeSelector.x=true` gives a boolean,
and a nodeSelector only takes strings. */}}
{{- define "stampede.stringMap" -}}
{{- $out := dict }}
{{- range $k, $v := . }}
{{- $_ := set $out $k (toString $v) }}
{{- end }}
{{- $out | toJson }}
{{- end }}
