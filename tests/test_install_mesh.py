"""A real local mesh: `istioctl install -y` installs the default profile, a second install
adds or prunes gateways, and `kubectl apply` says what the fidelity ledger says."""

from __future__ import annotations

import os

import pytest
from test_shims_istioctl import Terminal

pytestmark = pytest.mark.envoy

MIRROR = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - route: [{destination: {host: httpbin}}]
    mirror: {host: httpbin}
"""
KEEPALIVE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool: {tcp: {tcpKeepalive: {time: 7200s}}}
"""
HTTPBIN = """
apiVersion: v1
kind: Service
metadata: {name: httpbin}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 8000, targetPort: 80}]
"""


@pytest.fixture(scope="module")
def term(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("install")
    env = dict(os.environ, LAB_MESH=f"install-{os.getpid()}", LAB_STATE_DIR=str(state),
               LAB_MESH_OWNER=str(os.getpid()))
    env.pop("LAB_BACKEND", None)
    terminal = Terminal(env)
    try:
        yield terminal
    finally:
        terminal.run("istioctl", "uninstall", "--purge", "-y")


def deployments(term: Terminal) -> set[str]:
    out = term.ok("kubectl", "get", "deploy", "-n", "istio-system", "-o", "name")
    return set(out.split())


def test_install_y_is_the_default_profile_then_demo_adds_the_egress_gateway(term):
    out = term.ok("istioctl", "install", "-y")
    assert "\u2714 Egress gateways installed" not in out
    assert "\u2714 Ingress gateways installed" in out
    assert deployments(term) == {"deployment.apps/istiod",
                                 "deployment.apps/istio-ingressgateway"}
    term.ok("istioctl", "install", "--set", "profile=demo", "-y")
    assert "deployment.apps/istio-egressgateway" in deployments(term)
    term.ok("istioctl", "install", "-y")
    assert "deployment.apps/istio-egressgateway" not in deployments(term)


def test_a_refused_install_key_changes_nothing(term):
    refused = term.run("istioctl", "install", "--set", "values.global.proxy.privileged=true",
                       "-y")
    assert refused.code != 0
    assert "values.global.proxy.privileged" in refused.err
    assert "deployment.apps/istio-ingressgateway" in deployments(term)


def test_apply_refuses_an_untranslated_field_and_warns_about_a_knob(term):
    term.ok("kubectl", "apply", "-f", "-", stdin=HTTPBIN)
    refused = term.run("kubectl", "apply", "-f", "-", stdin=MIRROR)
    assert refused.code != 0
    assert "spec.http[0].mirror" in refused.err and "LAB0401" in refused.err
    assert "virtualservice" not in term.ok("kubectl", "get", "virtualservice")
    warned = term.run("kubectl", "apply", "-f", "-", stdin=KEEPALIVE)
    assert warned.code == 0
    assert warned.out.strip() == "destinationrule.networking.istio.io/httpbin created"
    assert "Warning: " in warned.err and "tcpKeepalive" in warned.err


def test_istioctl_analyze_names_the_field_the_local_mesh_refuses(term, tmp_path):
    manifest = tmp_path / "mirror.yaml"
    manifest.write_text(MIRROR)
    found = term.run("istioctl", "analyze", "--use-kube=false", str(manifest))
    assert found.code != 0
    assert "Error [LAB0401] (VirtualService default/httpbin)" in found.out
    assert "spec.http[0].mirror" in found.out


REV_NAMESPACE = """
apiVersion: v1
kind: Namespace
metadata: {{name: {name}, labels: {{istio.io/rev: {revision}}}}}
"""


def test_a_namespace_labelled_with_the_default_revision_gets_sidecars(term):
    term.ok("kubectl", "apply", "-f", "-", stdin=REV_NAMESPACE.format(name="rev-test",
                                                                       revision="default"))
    term.ok("kubectl", "apply", "-n", "rev-test", "-f", "samples/sleep/sleep.yaml")
    ready = term.ok("kubectl", "get", "pods", "-n", "rev-test", "-l", "app=sleep",
                    "-o", "jsonpath={.items[0].spec.containers[*].name}")
    assert ready.split() == ["sleep", "istio-proxy"]
    canary = term.run("kubectl", "apply", "-f", "-",
                      stdin=REV_NAMESPACE.format(name="canary-test", revision="canary"))
    assert canary.code != 0 and 'metadata.labels["istio.io/rev"]' in canary.err
