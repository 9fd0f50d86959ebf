{{- define "orders-app.selectorLabels" -}}
app.kubernetes.io/name: orders-app
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}
