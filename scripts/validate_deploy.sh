#!/usr/bin/env bash
# Validate deploy/ without a container engine or a cluster:
#   * deploy/docker-compose.yml with `docker-compose config -q` (Debian's docker-compose 1.29,
#     or the `docker compose` plugin where it exists);
#   * every Kubernetes manifest under deploy/k8s against the bundled Kubernetes JSON schemas,
#     strictly (unknown fields fail), with kubernetes-validate: no network needed.
# Usage: scripts/validate_deploy.sh            (from anywhere; exits non-zero on any failure)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
K8S_VERSION="${K8S_VERSION:-1.37.0}"

compose() {
  if command -v docker-compose >/dev/null; then
    docker-compose "$@"
  elif docker compose version >/dev/null 2>&1; then
    docker compose "$@"
  else
    echo "validate_deploy: neither docker-compose nor 'docker compose' found" \
      "(Debian: apt-get install docker-compose)" >&2
    return 127
  fi
}

if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "validate_deploy: installing Debian's docker-compose (validation only, no engine)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >&2
  fi
fi
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  echo "validate_deploy: $VENV/bin/kubernetes-validate missing: run 'make install'" >&2
  exit 1
fi

echo "validate_deploy: compose file"
# The project name only matters to `up`; `config` resolves every service, profiles included.
compose -p fraudscore -f deploy/docker-compose.yml config -q

echo "validate_deploy: Kubernetes manifests (schemas $K8S_VERSION, strict)"
manifests=()
for file in deploy/k8s/*.yaml; do
  # kustomization.yaml is kustomize's own config, not an API object.
  [ "$(basename "$file")" = kustomization.yaml ] || manifests+=("$file")
done
"$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"
echo "validate_deploy: ok (${#manifests[@]} manifests, 1 compose file)"
