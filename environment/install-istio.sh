#!/usr/bin/env bash
# make istio: Istio 1.20's demo profile on the current kubectl context, with distribution
# tracking on (for `istioctl x wait`), then the Prometheus, Grafana and Kiali addons.
set -euo pipefail
here="${BASH_SOURCE[0]%/*}"
[[ "$here" != "${BASH_SOURCE[0]}" ]] || here=.
here="$(cd "$here" && pwd)"
# shellcheck source=environment/lib.sh
source "$here/lib.sh"

require kubectl istioctl

context="$(kubectl config current-context 2>/dev/null || true)"
[[ -n "$context" ]] ||
  die "kubectl has no current context: run 'make cluster' first, or 'kubectl config use-context NAME'"
kubectl cluster-info >/dev/null 2>&1 ||
  die "cannot reach the cluster of context \"$context\" ('kubectl cluster-info' failed): is it running? 'make cluster' creates one"

version="$(istioctl version --remote=false 2>/dev/null || true)"
if [[ "$version" != "$ISTIO_RELEASE".* ]]; then
  echo "warning: istioctl says \"$version\", not $ISTIO_RELEASE.x; the labs follow Istio $ISTIO_RELEASE" >&2
fi

if [[ "$context" == kind-* ]]; then
  # Fixed NodePorts, the ones kind-cluster.yaml publishes on localhost.
  settings=(-f "$here/istio-kind.yaml")
else
  settings=(--set profile=demo --set values.pilot.env.PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING=true)
fi
say "istioctl install -y ${settings[*]}   (context $context)"
istioctl install -y "${settings[@]}"

for addon in prometheus grafana kiali; do
  url="https://raw.githubusercontent.com/istio/istio/release-$ISTIO_RELEASE/samples/addons/$addon.yaml"
  say "kubectl apply -f $url"
  # A second try: kiali's objects can race the CRDs the same file creates.
  kubectl apply -f "$url" || { sleep 5 && kubectl apply -f "$url"; }
done

for deployment in istiod istio-ingressgateway istio-egressgateway prometheus grafana kiali; do
  kubectl -n istio-system rollout status "deployment/$deployment" --timeout=300s
done
say "Istio is ready. Run the labs on this cluster: LAB_BACKEND=kubernetes make lab"
say "dashboards: istioctl dashboard kiali (or grafana, prometheus)"
