# Shared by the environment/ scripts: names, prerequisite checks, messages.
# shellcheck shell=bash

# kind itself reads KIND_CLUSTER_NAME too; the kubeconfig context is kind-<name>.
KIND_CLUSTER_NAME="${KIND_CLUSTER_NAME:-istio-lab}"
ISTIO_RELEASE=1.20
ISTIO_VERSION=1.20.3

declare -A WHERE=(
  [docker]="https://docs.docker.com/get-docker/"
  [kind]="https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
  [kubectl]="https://kubernetes.io/docs/tasks/tools/#kubectl"
  [istioctl]="https://istio.io/latest/docs/setup/getting-started/#download (for Istio $ISTIO_VERSION: curl -L https://istio.io/downloadIstio | ISTIO_VERSION=$ISTIO_VERSION sh - , then add istio-$ISTIO_VERSION/bin to PATH)"
)

say() { echo "==> $*"; }

die() {
  echo "error: $*" >&2
  exit 1
}

# require TOOL...: stop, naming every missing tool and where to get it.
require() {
  local tool missing=0
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "missing: $tool is not on PATH; get it from ${WHERE[$tool]}" >&2
      missing=1
    fi
  done
  if ((missing)); then
    die "install what is missing above, then run this again"
  fi
}

# docker_running: the docker CLI is there, but is its daemon?
docker_running() {
  docker info >/dev/null 2>&1 ||
    die "docker is installed but its daemon does not answer (docker info failed): start Docker Desktop or 'sudo systemctl start docker', and check that you may use it ('docker ps')"
}

cluster_exists() {
  kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER_NAME"
}
