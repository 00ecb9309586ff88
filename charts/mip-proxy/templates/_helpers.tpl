{{/* Chart name, overridable (nameOverride). */}}
{{- define "mip-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: "<release>-<chart>", or the release name alone when it already contains the chart name
(release "mip-proxy" -> "mip-proxy"). Trimmed to leave room for the "-operator" suffix within 63 characters.
*/}}
{{- define "mip-proxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the operator's objects (Deployment, Service, ServiceAccount, RBAC). */}}
{{- define "mip-proxy.operatorName" -}}
{{- printf "%s-operator" (include "mip-proxy.fullname" .) }}
{{- end }}

{{/* Chart label value. */}}
{{- define "mip-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "mip-proxy.labels" -}}
helm.sh/chart: {{ include "mip-proxy.chart" . }}
{{ include "mip-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mip-proxy
{{- end }}

{{/* Selector labels of the operator pods. */}}
{{- define "mip-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mip-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "mip-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mip-proxy.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image. */}}
{{- define "mip-proxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The proxy image (--proxy-image). */}}
{{- define "mip-proxy.proxyImage" -}}
{{- printf "%s:%s" .Values.proxyImage.repository (.Values.proxyImage.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Name of the leader-election Lease (docs/operator.md), in the release namespace. */}}
{{- define "mip-proxy.leaseName" -}}
mip-operator-leader
{{- end }}
