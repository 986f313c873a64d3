{{/* Names, labels and shared snippets of the awooop chart. */}}

{{- define "awooop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name, at most 54 characters so "-operator" suffixes stay under 63. */}}
{{- define "awooop.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "awooop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Standard app.kubernetes.io labels of every object the chart renders. */}}
{{- define "awooop.labels" -}}
helm.sh/chart: {{ include "awooop.chart" . }}
app.kubernetes.io/name: {{ include "awooop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: awooop
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component ("operator" or "api"): stable across upgrades. */}}
{{- define "awooop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "awooop.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "awooop.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "awooop.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "awooop.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "awooop.apiServiceAccountName" -}}
{{- if .Values.api.serviceAccount.create -}}
{{- default (printf "%s-api" (include "awooop.fullname" .)) .Values.api.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.api.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Kubernetes username of the operator's ServiceAccount (what admission requests carry). */}}
{{- define "awooop.operatorUsername" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "awooop.operatorServiceAccountName" .) -}}
{{- end -}}

{{/*
Environment shared by the operator and the API: database and logging. Each entry names the
`awooop` flag it sets.
*/}}
{{- define "awooop.commonEnv" -}}
{{- if .Values.database.appUrlKey }}
# The runtime role (member of awooop_app): the owner's URL never reaches this process;
# migrations run in the operator's `migrate` init container.
# --app-database-url (from a file)
- name: AWOOOP_APP_DATABASE_URL_FILE
  value: /etc/awooop/database/{{ .Values.database.appUrlKey }}
{{- else }}
# The owner URL with `SET ROLE awooop_app`: set database.appUrlKey so that long-running
# pods get the runtime role's URL instead.
# --database-url (from a file)
- name: DATABASE_URL_FILE
  value: /etc/awooop/database/{{ .Values.database.urlKey }}
{{- end }}
# --db-max-connections
- name: AWOOOP_DB_MAX_CONNECTIONS
  value: {{ .Values.database.maxConnections | quote }}
# --state-dir (an emptyDir: the root filesystem is read-only)
- name: AWOOOP_STATE_DIR
  value: /tmp/awooop
# --log-format
- name: AWOOOP_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end -}}

{{/*
The database Secret as files (master secrets are never environment variables of a process
that starts children): only the key this pod's main container needs.
*/}}
{{- define "awooop.databaseVolume" -}}
- name: database
  secret:
    secretName: {{ .Values.database.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ default .Values.database.urlKey .Values.database.appUrlKey }}
        path: {{ default .Values.database.urlKey .Values.database.appUrlKey }}
{{- end -}}
