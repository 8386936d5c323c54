"""A new port on the ingress gateway, on real Envoy: the Service port alone opens nothing, a
Gateway server on it opens a listener that serves, removing it closes it, and the gateway's
other ports serve throughout."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import lablib
from lablib.proxyconfig import proxy_config

pytestmark = pytest.mark.envoy
NS = "custom-port-test"
NEW_PORT = {"name": "http-3000", "port": 3000, "targetPort": 3000, "protocol": "TCP"}
# The walkthrough's Gateway and VirtualService for the new port.
GATEWAY_3000 = textwrap.dedent("""\
    apiVersion: networking.istio.io/v1alpha3
    kind: Gateway
    metadata:
      name: mygateway
    spec:
      selector:
        istio: ingressgateway
      servers:
      - port:
          number: 3000
          name: http
          protocol: HTTP
        hosts:
        - "*"
    ---
    apiVersion: networking.istio.io/v1alpha3
    kind: VirtualService
    metadata:
      name: httpbin
    spec:
      hosts:
      - "*"
      gateways:
      - mygateway
      http:
      - match:
        - port: 3000
        route:
        - destination:
            port:
              number: 8000
            host: httpbin
    """)
# httpbin on the gateway's usual port 80 as well: one of the "other ports".
GATEWAY_80 = textwrap.dedent("""\
    apiVersion: networking.istio.io/v1alpha3
    kind: Gateway
    metadata: {name: web}
    spec:
      selector: {istio: ingressgateway}
      servers:
      - port: {number: 80, name: http, protocol: HTTP}
        hosts: ["*"]
    ---
    apiVersion: networking.istio.io/v1alpha3
    kind: VirtualService
    metadata: {name: web}
    spec:
      hosts: ["*"]
      gateways: [web]
      http:
      - route:
        - destination: {host: httpbin, port: {number: 8000}}
    """)


def ingress_service(mesh: lablib.Backend) -> dict[str, Any]:
    return mesh.get("service", "istio-ingressgateway", "istio-system")[0]


def set_ports(mesh: lablib.Backend, ports: list[dict[str, Any]]) -> None:
    """`kubectl edit svc istio-ingressgateway`: get the Service, change its ports, apply it."""
    svc = ingress_service(mesh)
    svc["spec"]["ports"] = ports
    mesh.apply(svc)


def without_new_port(mesh: lablib.Backend) -> list[dict[str, Any]]:
    return [p for p in ingress_service(mesh)["spec"]["ports"] if p["port"] != 3000]


def node_ports(mesh: lablib.Backend) -> dict[str, int]:
    return {p["name"]: p["nodePort"] for p in ingress_service(mesh)["spec"]["ports"]}


def gateway_listeners(mesh: lablib.Backend) -> dict[str, int]:
    ingress = mesh.pod_name({"istio": "ingressgateway"}, "istio-system")
    frame = proxy_config(mesh, "listeners", ingress, "istio-system")
    return dict(zip(frame["name"], frame["port"], strict=True))


def status(port: int, path: str) -> int:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code


def refused(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/headers", timeout=5)
    except httpx.ConnectError:
        return True
    return False


def assert_other_ports_serve(mesh: lablib.Backend, before: dict[str, int]) -> None:
    now = node_ports(mesh)
    assert {k: now[k] for k in before} == before  # no other node port moved
    assert status(now["http2"], "/status/200") == 200
    assert status(now["status-port"], "/healthz/ready") == 200


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("gateway-port-state")))
        patch.setenv("LAB_MESH", f"test-gateway-port-{os.getpid()}")
        mesh = lablib.connect("local")
        try:
            mesh.install()
            mesh.create_namespace(NS, {"istio-injection": "enabled"})
            mesh.apply("samples/httpbin/httpbin.yaml", namespace=NS)
            mesh.apply(GATEWAY_80, namespace=NS)
            yield mesh
        finally:
            mesh.uninstall()


@pytest.fixture
def original(mesh) -> Iterator[dict[str, int]]:
    """The node ports before the test; afterwards the Service and Gateways are as before."""
    before = node_ports(mesh)
    yield before
    mesh.delete(GATEWAY_3000, namespace=NS)
    set_ports(mesh, without_new_port(mesh))


def test_a_service_port_alone_opens_nothing(mesh, original):
    set_ports(mesh, [*ingress_service(mesh)["spec"]["ports"], NEW_PORT])
    host, port = mesh.ingress_address("http-3000")
    assert host == "127.0.0.1" and port not in original.values()
    # Envoy listens only on ports a Gateway server asks for.
    assert "0.0.0.0_3000" not in gateway_listeners(mesh)
    assert refused(port)
    assert_other_ports_serve(mesh, original)


def test_a_gateway_server_on_the_new_port_opens_a_listener_that_serves(mesh, original):
    set_ports(mesh, [*ingress_service(mesh)["spec"]["ports"], NEW_PORT])
    mesh.apply(GATEWAY_3000, namespace=NS)
    _, port = mesh.ingress_address("http-3000")
    assert gateway_listeners(mesh)["0.0.0.0_3000"] == port
    assert [status(port, "/status/418") for _ in range(5)] == [418] * 5
    response = httpx.get(f"http://127.0.0.1:{port}/headers", timeout=5)
    assert response.status_code == 200 and f"127.0.0.1:{port}" in response.json()["headers"]["Host"]
    assert_other_ports_serve(mesh, original)


def test_deleting_the_gateway_then_the_port_closes_it(mesh, original):
    set_ports(mesh, [*ingress_service(mesh)["spec"]["ports"], NEW_PORT])
    mesh.apply(GATEWAY_3000, namespace=NS)
    _, port = mesh.ingress_address("http-3000")
    assert status(port, "/status/418") == 418
    mesh.delete(GATEWAY_3000, namespace=NS)
    set_ports(mesh, without_new_port(mesh))
    assert "0.0.0.0_3000" not in gateway_listeners(mesh)
    assert refused(port)
    with pytest.raises(lablib.NotFoundError, match="http-3000"):
        mesh.ingress_address("http-3000")
    assert_other_ports_serve(mesh, original)


def test_removing_the_service_port_closes_it_even_while_a_gateway_uses_it(mesh, original):
    set_ports(mesh, [*ingress_service(mesh)["spec"]["ports"], NEW_PORT])
    mesh.apply(GATEWAY_3000, namespace=NS)
    _, port = mesh.ingress_address("http-3000")
    assert status(port, "/status/418") == 418
    set_ports(mesh, without_new_port(mesh))
    # On a cluster the node port goes with the Service port: nothing answers there any more.
    assert refused(port)
    assert_other_ports_serve(mesh, original)
