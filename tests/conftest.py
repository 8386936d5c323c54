"""Shared pytest fixtures for the Istio Lab Kit test suite.

Each section belongs to one area of the kit; add yours below the last one, under its own
heading comment, and keep fixtures that start processes cleaning up after themselves.
"""

from pathlib import Path

import pytest

# --- Project layout -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kit_root() -> Path:
    """The repository root (the folder holding pyproject.toml)."""
    return Path(__file__).resolve().parent.parent


# --- The local mesh on real Envoy -----------------------------------------------------------


@pytest.fixture(scope="module")
def bookinfo_mesh(tmp_path_factory, monkeypatch_module):
    """A real local mesh with Bookinfo behind the ingress gateway, in its own state folder."""
    import lablib

    monkeypatch_module.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("mesh-state")))
    mesh = lablib.connect("local")
    try:
        mesh.install()
        mesh.create_namespace("bookinfo-test", {"istio-injection": "enabled"})
        mesh.apply("samples/bookinfo/platform/kube/bookinfo.yaml", namespace="bookinfo-test")
        mesh.apply("samples/bookinfo/networking/bookinfo-gateway.yaml", namespace="bookinfo-test")
        mesh.apply("samples/bookinfo/networking/destination-rule-all.yaml",
                   namespace="bookinfo-test")
        yield mesh
    finally:
        mesh.uninstall()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


# --- Ports another program holds --------------------------------------------------------------


@pytest.fixture
def node_port_squatter():
    """Another program listening on a port of the node port range; yields the port."""
    import socket

    with socket.socket() as squatter:
        for port in range(32767, 30000, -1):
            try:
                squatter.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
        squatter.listen()
        yield port
