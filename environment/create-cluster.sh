#!/usr/bin/env bash
# make cluster: a one-node kind cluster for LAB_BACKEND=kubernetes, with the ingress
# gateway's NodePorts published on this machine (localhost:80, 443 and 31400).
set -euo pipefail
here="${BASH_SOURCE[0]%/*}"
[[ "$here" != "${BASH_SOURCE[0]}" ]] || here=.
here="$(cd "$here" && pwd)"
# shellcheck source=environment/lib.sh
source "$here/lib.sh"

require docker kind kubectl
docker_running

if cluster_exists; then
  say "kind cluster \"$KIND_CLUSTER_NAME\" already exists; using it"
else
  say "creating kind cluster \"$KIND_CLUSTER_NAME\" from $here/kind-cluster.yaml"
  kind create cluster --name "$KIND_CLUSTER_NAME" --config "$here/kind-cluster.yaml" --wait 120s
fi
kubectl config use-context "kind-$KIND_CLUSTER_NAME" >/dev/null
kubectl cluster-info --context "kind-$KIND_CLUSTER_NAME"
say "cluster ready (kubectl context kind-$KIND_CLUSTER_NAME); next: make istio"
