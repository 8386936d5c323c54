"""A real local mesh: `istioctl install -y` installs the default profile, a second install
adds or prunes gateways, and `kubectl apply` says what the fidelity ledger says."""

from __future__ import annotations

import json
import time

import pytest
from test_shims_istioctl import Terminal, own_mesh_terminal

import lablib

pytestmark = pytest.mark.envoy

DELEGATE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - delegate: {name: httpbin-routes, namespace: default}
"""
IDLE_TIMEOUT = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool: {tcp: {idleTimeout: 1h}}
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
    with own_mesh_terminal(tmp_path_factory, "install") as terminal:
        yield terminal


def deployments(term: Terminal) -> set[str]:
    out = term.ok("kubectl", "get", "deploy", "-n", "istio-system", "-o", "name")
    return set(out.split())


def test_install_y_is_the_default_profile_then_demo_adds_the_egress_gateway(term):
    out = term.ok("istioctl", "install", "-y")
    assert "\u2714 Egress gateways installed" not in out
    assert "\u2714 Ingress gateways installed" in out
    assert deployments(term) == {"deployment.apps/istiod",
                                 "deployment.apps/istio-ingressgateway"}
    operator = json.loads(term.ok("kubectl", "get", "iop", "installed-state", "-n",
                                  "istio-system", "-o", "json"))["spec"]
    assert operator["profile"] == "default"
    assert operator["components"]["egressGateways"] == [{"name": "istio-egressgateway",
                                                         "enabled": False}]
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
    refused = term.run("kubectl", "apply", "-f", "-", stdin=DELEGATE)
    assert refused.code != 0
    assert "spec.http[0].delegate" in refused.err and "LAB0401" in refused.err
    assert "virtualservice" not in term.ok("kubectl", "get", "virtualservice")
    warned = term.run("kubectl", "apply", "-f", "-", stdin=IDLE_TIMEOUT)
    assert warned.code == 0
    assert warned.out.strip() == "destinationrule.networking.istio.io/httpbin created"
    assert "Warning: " in warned.err and "idleTimeout" in warned.err


def test_istioctl_analyze_names_the_field_the_local_mesh_refuses(term, tmp_path):
    manifest = tmp_path / "delegate.yaml"
    manifest.write_text(DELEGATE)
    found = term.run("istioctl", "analyze", "--use-kube=false", str(manifest))
    assert found.code != 0
    assert "Error [LAB0401] (VirtualService default/httpbin)" in found.out
    assert "spec.http[0].delegate" in found.out


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


def initialization_seconds(mesh, pod: str, namespace: str) -> float:
    """Envoy's server.initialization_time_ms (start until its first config is loaded and it
    takes connections), once its stats flush (every 5 s) has filled the histogram in."""
    deadline = time.monotonic() + 30
    while True:
        stats = json.loads(mesh.proxy_admin(pod, namespace,
                                            "stats?format=json&filter=initialization_time"))
        histogram = next(s["histograms"] for s in stats["stats"] if "histograms" in s)
        [init] = [q for q in histogram["computed_quantiles"]
                  if q["name"] == "server.initialization_time_ms"]
        values = [v["cumulative"] for v in init["values"] if v.get("cumulative") is not None]
        if values:
            return max(values) / 1000
        assert time.monotonic() < deadline, "Envoy never flushed its initialisation time"
        time.sleep(1)


def test_hold_application_until_proxy_starts_the_app_after_its_proxy_is_ready(term):
    term.ok("istioctl", "install", "-y", "--set",
            "meshConfig.defaultConfig.holdApplicationUntilProxyStarts=true")
    term.ok("kubectl", "create", "namespace", "hold-test")
    term.ok("kubectl", "label", "namespace", "hold-test", "istio-injection=enabled")
    term.ok("kubectl", "apply", "-n", "hold-test", "-f", "samples/sleep/sleep.yaml")
    with pytest.MonkeyPatch.context() as patch:
        for key in ("LAB_MESH", "LAB_STATE_DIR", "LAB_MESH_OWNER"):
            patch.setenv(key, term.env[key])
        mesh = lablib.connect("local")
        pod = mesh.pod_name({"app": "sleep"}, "hold-test")
        started = {row["name"]: row["started_at"] for row in mesh.processes()}
        init_seconds = initialization_seconds(mesh, pod, "hold-test")
    proxy, app = started[f"hold-test.{pod}.istio-proxy"], started[f"hold-test.{pod}.sleep"]
    # The proxy was ready (its first config loaded) no earlier than start + initialisation.
    assert app >= proxy + init_seconds


def xfcc_seen_by_httpbin(mesh) -> str:
    pod = mesh.pod_name({"app": "sleep"}, "auto-mtls")
    answer = mesh.exec(pod, ["curl", "-s", "--max-time", "5", "http://httpbin:8000/headers"],
                       namespace="auto-mtls", container="sleep")
    assert answer.returncode == 0, answer.stderr
    return str(json.loads(answer.stdout)["headers"].get("X-Forwarded-Client-Cert", ""))


def test_enable_auto_mtls_false_sends_plaintext_between_sidecars(term):
    term.ok("kubectl", "create", "namespace", "auto-mtls")
    term.ok("kubectl", "label", "namespace", "auto-mtls", "istio-injection=enabled")
    for sample in ("samples/httpbin/httpbin.yaml", "samples/sleep/sleep.yaml"):
        term.ok("kubectl", "apply", "-n", "auto-mtls", "-f", sample)
    with pytest.MonkeyPatch.context() as patch:
        for key in ("LAB_MESH", "LAB_STATE_DIR", "LAB_MESH_OWNER"):
            patch.setenv(key, term.env[key])
        mesh = lablib.connect("local")
        term.ok("istioctl", "install", "-y", "--set", "meshConfig.enableAutoMtls=true")
        assert "spiffe://cluster.local/ns/auto-mtls/sa/sleep" in xfcc_seen_by_httpbin(mesh)
        term.ok("istioctl", "install", "-y", "--set", "meshConfig.enableAutoMtls=false")
        assert xfcc_seen_by_httpbin(mesh) == ""
