#!/bin/bash
# Docker healthcheck for TF Serving: healthy only when every model named in the model config
# file has a version AVAILABLE on the REST model status API (GET /v1/models/<name>); an open
# port alone proves nothing. The official image has neither curl nor wget, so this is plain
# bash: HTTP/1.0 over /dev/tcp.
#
# Usage: healthcheck.sh [MODEL_CONFIG_FILE]   (default /models/models.config)
# Environment: TFS_REST_HOST (default 127.0.0.1), TFS_REST_PORT (default 8501).
set -uo pipefail

config=${1:-/models/models.config}
host=${TFS_REST_HOST:-127.0.0.1}
port=${TFS_REST_PORT:-8501}

names=()
while IFS= read -r line || [[ -n $line ]]; do
  if [[ $line =~ ^[[:space:]]*name:[[:space:]]*\"([^\"]+)\" ]]; then
    names+=("${BASH_REMATCH[1]}")
  fi
done <"$config" || {
  echo "unhealthy: cannot read $config"
  exit 1
}
((${#names[@]})) || {
  echo "unhealthy: no model named in $config"
  exit 1
}

for name in "${names[@]}"; do
  if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
    echo "unhealthy: nothing listens on $host:$port"
    exit 1
  fi
  printf 'GET /v1/models/%s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' \
    "$name" "$host" >&3
  reply=""
  while IFS= read -r -t 5 line <&3; do reply+="$line"$'\n'; done
  reply+="$line"
  exec 3<&-
  status=${reply%%$'\n'*}
  if [[ ! $status =~ ^HTTP/1\.[01]\ 200 ]]; then
    echo "unhealthy: $name: ${status%$'\r'}"
    exit 1
  fi
  if [[ ! $reply =~ \"state\"[[:space:]]*:[[:space:]]*\"AVAILABLE\" ]]; then
    echo "unhealthy: $name: no version AVAILABLE"
    exit 1
  fi
done
echo "healthy: AVAILABLE: ${names[*]}"
