{{/*
Template helpers. Templates in this chart stay inside the Go-template subset that
test/chart/go-template.ts evaluates (docs/chart.md lists it): no numeric comparisons,
no printing of maps or lists except through toYaml/toJson.
*/}}

{{- define "podvirt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "podvirt.fullname" -}}
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

{{- define "podvirt.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels for every object; call with (dict "root" $ "component" "<component>"). */}}
{{- define "podvirt.labels" -}}
helm.sh/chart: {{ include "podvirt.chart" .root }}
{{ include "podvirt.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: podvirt
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "podvirt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podvirt.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "podvirt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "podvirt.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "podvirt.image" -}}
{{- if .Values.image.digest }}
{{- .Values.image.repository }}@{{ .Values.image.digest }}
{{- else }}
{{- .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}
{{- end }}

{{/* The CSI driver name is fixed by the interface contract (cli.md 3.1). */}}
{{- define "podvirt.csiDriver" -}}
csi.podvirt.io
{{- end }}

{{- define "podvirt.csiSocketDir" -}}
{{- .Values.kubeletDir }}/plugins/{{ include "podvirt.csiDriver" . }}
{{- end }}

{{- define "podvirt.networksNamespace" -}}
{{- default .Release.Namespace .Values.networks.namespace }}
{{- end }}
