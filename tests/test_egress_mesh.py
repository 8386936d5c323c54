"""Egress on real Envoy: a sleep pod's curl against the local outside world.

ALLOW_ANY and REGISTRY_ONLY, ServiceEntries for HTTP and HTTPS, a timeout on an external
host, a refused ServiceEntry leaving the last good config, TLS origination at the sidecar
(verified against the public CA, a wrong SAN refused), and the egress gateway in the path.
"""

from __future__ import annotations

import json
import time

import pytest
from test_egress import EGRESS_HTTP, EGRESS_PASSTHROUGH

import lablib
from lablib.errors import ConfigError

pytestmark = pytest.mark.envoy
NS = "egress-mesh"
MODE = "meshConfig.outboundTrafficPolicy.mode"
HTTPBIN = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http-port, protocol: HTTP}]
  resolution: DNS
  location: MESH_EXTERNAL
"""
GOOGLE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: google}
spec:
  hosts: [www.google.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
  location: MESH_EXTERNAL
"""
CNN = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: edition-cnn-com}
spec:
  hosts: [edition.cnn.com]
  ports:
  - {number: 80, name: http-port, protocol: HTTP, targetPort: 443}
  - {number: 443, name: https-port, protocol: HTTPS}
  resolution: DNS
"""
CNN_ORIGINATION = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: edition-cnn-com}
spec:
  host: edition.cnn.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: SIMPLE}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("egress-state")))
    mesh = lablib.connect("local")
    try:
        mesh.install(profile="demo")
        mesh.create_namespace(NS, {"istio-injection": "enabled"})
        mesh.apply("samples/sleep/sleep.yaml", NS)
        mesh.wait_ready(NS)
        yield mesh
    finally:
        mesh.uninstall()


@pytest.fixture
def clean(mesh):
    """Each test starts from ALLOW_ANY with no egress config."""
    mesh.install(profile="demo", values={MODE: "ALLOW_ANY"})
    for kind in ("virtualservice", "destinationrule", "serviceentry", "gateway", "sidecar"):
        for item in mesh.get(kind, namespace=NS):
            mesh.delete({"apiVersion": item["apiVersion"], "kind": item["kind"],
                         "metadata": {"name": item["metadata"]["name"]}}, NS)
    return mesh


def curl(mesh, *args: str):
    pod = mesh.pod_name({"app": "sleep"}, NS)
    return mesh.exec(pod, ["curl", "-sS", "--max-time", "20", *args], NS, container="sleep")


def status(mesh, url: str, *args: str) -> str:
    return curl(mesh, "-o", "/dev/null", "-w", "%{http_code}", *args, url).stdout


def test_allow_any_reaches_the_outside_world_over_http_and_verified_https(clean):
    reply = curl(clean, "http://httpbin.org/headers")
    assert json.loads(reply.stdout)["headers"]["Host"] == "httpbin.org"
    assert status(clean, "https://www.google.com") == "200"  # verified: no -k
    assert status(clean, "https://en.wikipedia.org/wiki/Main_Page") == "200"
    unknown = curl(clean, "https://api.example.com")
    assert unknown.returncode == 35, unknown.stderr  # no such site: the handshake fails


def test_registry_only_blocks_unknown_hosts_and_service_entries_open_them(clean):
    clean.install(profile="demo", values={MODE: "REGISTRY_ONLY"})
    assert status(clean, "http://httpbin.org/headers") == "502"
    blocked = curl(clean, "-I", "https://www.google.com")
    assert blocked.returncode == 35, blocked.stderr  # reset during the TLS handshake
    clean.apply(HTTPBIN + "---" + GOOGLE, NS)
    assert status(clean, "http://httpbin.org/headers") == "200"
    assert status(clean, "https://www.google.com") == "200"
    assert status(clean, "https://istio.io") != "200"  # still blocked


def test_a_bad_service_entry_is_refused_and_the_last_good_config_serves(clean):
    clean.install(profile="demo", values={MODE: "REGISTRY_ONLY"})
    clean.apply(HTTPBIN, NS)
    with pytest.raises(ConfigError) as refused:
        clean.apply(HTTPBIN.replace("resolution: DNS", "resolution: STATIC"), NS)
    assert "spec.resolution" in str(refused.value)
    assert status(clean, "http://httpbin.org/headers") == "200"


def test_a_timeout_on_an_external_host(clean):
    clean.apply(HTTPBIN + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  http:
  - timeout: 3s
    route:
    - destination: {host: httpbin.org}
      weight: 100
""", NS)
    started = time.monotonic()
    assert status(clean, "http://httpbin.org/delay/5") == "504"
    assert 2.5 < time.monotonic() - started < 5


def test_tls_origination_at_the_sidecar(clean):
    clean.apply(CNN, NS)
    redirect = curl(clean, "-o", "/dev/null", "-D", "-", "http://edition.cnn.com/politics")
    assert " 301 " in redirect.stdout.splitlines()[0]
    assert "location: https://edition.cnn.com/politics" in redirect.stdout.lower()
    clean.apply(CNN_ORIGINATION, NS)
    assert status(clean, "http://edition.cnn.com/politics") == "200"
    # The server's certificate must name the host: a wrong SAN fails the handshake (503).
    clean.apply(CNN_ORIGINATION.replace("tls: {mode: SIMPLE}",
                                        "tls: {mode: SIMPLE, subjectAltNames: [www.google.com]}"),
                NS)
    assert status(clean, "http://edition.cnn.com/politics") == "503"


def test_the_egress_gateway_carries_http_to_an_external_host(clean):
    clean.apply(EGRESS_HTTP, NS)
    redirect = curl(clean, "-o", "/dev/null", "-D", "-", "http://edition.cnn.com/politics")
    assert " 301 " in redirect.stdout.splitlines()[0]
    pod = clean.pod_name({"istio": "egressgateway"}, "istio-system")
    stats = clean.proxy_admin(pod, "istio-system", "stats?filter=outbound.80..edition")
    sent = [line for line in stats.splitlines() if line.endswith("upstream_rq_total: 0")]
    assert "upstream_rq_total" in stats and not sent, stats


def test_https_passes_through_the_egress_gateway_by_sni(clean):
    clean.apply(EGRESS_HTTP, NS)
    clean.delete({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                  "metadata": {"name": "direct-cnn-through-egress-gateway"}}, NS)
    clean.apply(EGRESS_PASSTHROUGH, NS)
    assert status(clean, "https://edition.cnn.com/politics") == "200"
    pod = clean.pod_name({"istio": "egressgateway"}, "istio-system")
    stats = clean.proxy_admin(pod, "istio-system", "stats?filter=outbound.443..edition")
    assert "upstream_cx_total: 0" not in stats and "upstream_cx_total" in stats, stats


def test_tls_origination_at_the_egress_gateway(clean):
    to_443 = EGRESS_HTTP.replace("destination: {host: edition.cnn.com, port: {number: 80}}",
                                 "destination: {host: edition.cnn.com, port: {number: 443}}")
    clean.apply(to_443 + """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: originate-tls-for-edition-cnn-com}
spec:
  host: edition.cnn.com
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: SIMPLE}
""", NS)
    assert status(clean, "http://edition.cnn.com/politics") == "200"  # no redirect: TLS
