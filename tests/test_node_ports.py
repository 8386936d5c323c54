"""nodePort as the API server checks it, and two meshes of one user that never share a port.

Envoy binds listeners with SO_REUSEPORT: a gateway listener on a port another mesh's gateway
holds would bind beside it and take part of its traffic. So a nodePort a manifest chooses is
checked against the range, the other Services, the port registry and the ports in use before
anything is pushed, and the error names the Service and the field.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import httpx
import pytest

import lablib
from lablib.local.mesh import NODE_PORT_RANGE

pytestmark = pytest.mark.envoy
WHOAMI = 472


def node_port_service(name: str, node_port: int) -> str:
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: {name}, namespace: istio-system}}
        spec:
          type: NodePort
          selector: {{istio: ingressgateway}}
          ports:
          - {{name: http-extra, port: 8089, targetPort: 8089, nodePort: {node_port}}}
        """)


ROUTES = f"""
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: whoami, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - fault: {{abort: {{httpStatus: {WHOAMI}, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: istio-ingressgateway.istio-system.svc.cluster.local,
                             port: {{number: 15021}}}}}}]
"""


@pytest.fixture(scope="module")
def two_meshes(tmp_path_factory) -> Iterator[tuple[lablib.Backend, lablib.Backend]]:
    """Two meshes of one user (two LAB_MESH names) on one machine."""
    root = tmp_path_factory.mktemp("node-ports")
    meshes = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LAB_STATE_DIR", str(root))
        try:
            for name in ("first", "second"):
                env.setenv("LAB_MESH", name)
                mesh = lablib.connect("local")
                meshes.append(mesh)
                mesh.install()
            meshes[0].apply(ROUTES)
            yield meshes[0], meshes[1]
        finally:
            for mesh in meshes:
                mesh.uninstall()


def service_names(mesh: lablib.Backend) -> set[str]:
    return {svc["metadata"]["name"] for svc in mesh.get("service", namespace="istio-system")}


def answered(mesh: lablib.Backend, port: int, n: int = 20) -> int:
    with httpx.Client(trust_env=False, timeout=5) as client:
        return sum(client.get(f"http://127.0.0.1:{port}/").status_code == WHOAMI
                   for _ in range(n))


def test_node_ports_the_mesh_chooses_are_in_the_kubernetes_range(two_meshes) -> None:
    for mesh in two_meshes:
        for svc in mesh.get("service", namespace="istio-system"):
            for port in svc["spec"]["ports"]:
                if "nodePort" in port:
                    assert NODE_PORT_RANGE[0] <= port["nodePort"] <= NODE_PORT_RANGE[1], port


def test_a_node_port_outside_the_range_is_refused_with_the_field(two_meshes) -> None:
    first, _ = two_meshes
    with pytest.raises(lablib.ConfigError) as refused:
        first.apply(node_port_service("low", 81))
    [finding] = refused.value.diagnostics
    assert finding.resource == "Service istio-system/low"
    assert finding.field == "spec.ports[0].nodePort"
    assert "not in the valid range" in finding.message and "30000-32767" in finding.message
    assert "low" not in service_names(first)


def test_another_meshs_ingress_port_is_refused_before_any_push(two_meshes) -> None:
    """The reproduction: mesh two given mesh one's ingress port took 11 of 20 connections."""
    first, second = two_meshes
    _, port = first.ingress_address()
    assert answered(first, port) == 20
    with pytest.raises(lablib.ConfigError) as refused:
        second.apply(node_port_service("steal", port))
    [finding] = refused.value.diagnostics
    assert finding.resource == "Service istio-system/steal"
    assert finding.field == "spec.ports[0].nodePort"
    assert f"nodePort {port} is in use" in finding.message
    assert "steal" not in service_names(second)
    assert answered(first, port) == 20


def test_a_node_port_another_service_holds_is_refused(two_meshes) -> None:
    first, _ = two_meshes
    _, port = first.ingress_address()
    with pytest.raises(lablib.ConfigError, match="provided port is already allocated"):
        first.apply(node_port_service("twin", port))


def test_a_free_node_port_in_range_is_used(two_meshes) -> None:
    _, second = two_meshes
    for port in range(31950, 32000):
        try:
            second.apply(node_port_service("mine", port))
            break
        except lablib.ConfigError as exc:
            assert "in use" in str(exc)
    [svc] = second.get("service", "mine", "istio-system")
    assert svc["spec"]["ports"][0]["nodePort"] == port
    second.delete(node_port_service("mine", port))
