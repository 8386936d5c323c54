#!/usr/bin/env bash
# make cluster-down: delete the kind cluster (Istio, the addons and every lab with it).
set -euo pipefail
here="${BASH_SOURCE[0]%/*}"
[[ "$here" != "${BASH_SOURCE[0]}" ]] || here=.
here="$(cd "$here" && pwd)"
# shellcheck source=environment/lib.sh
source "$here/lib.sh"

require docker kind

if cluster_exists; then
  say "deleting kind cluster \"$KIND_CLUSTER_NAME\""
  kind delete cluster --name "$KIND_CLUSTER_NAME"
else
  say "there is no kind cluster \"$KIND_CLUSTER_NAME\"; nothing to delete"
fi
