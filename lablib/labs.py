"""Set-up every lab's first cell calls, so the labs run in any order and run twice."""

from __future__ import annotations

from typing import Any

from .backend import Backend
from .tables import table, tables

__all__ = ["ensure_bookinfo", "ensure_installed", "reset_routing", "show"]

BOOKINFO = "samples/bookinfo/platform/kube/bookinfo.yaml"
BOOKINFO_GATEWAY = "samples/bookinfo/networking/bookinfo-gateway.yaml"
DESTINATION_RULES = "samples/bookinfo/networking/destination-rule-all.yaml"
# The VirtualService bookinfo-gateway.yaml creates: the labs keep it, routing labs add others.
GATEWAY_VIRTUAL_SERVICE = "bookinfo"


def ensure_installed(mesh: Backend) -> None:
    """`istioctl install --set profile=demo`, unless the ingress gateway is already there."""
    deployments = mesh.get("deploy", namespace="istio-system")
    if not any(d["metadata"]["name"] == "istio-ingressgateway" for d in deployments):
        mesh.install(profile="demo")


def ensure_bookinfo(mesh: Backend, namespace: str = "bookinfo-test", gateway: bool = True,
                    destination_rules: bool = False) -> None:
    """Istio, an injected namespace and Bookinfo in it (plus its gateway), all pods ready."""
    ensure_installed(mesh)
    if not any(ns["metadata"]["name"] == namespace for ns in mesh.get("namespace")):
        mesh.create_namespace(namespace, labels={"istio-injection": "enabled"})
    mesh.apply(BOOKINFO, namespace)
    if gateway:
        mesh.apply(BOOKINFO_GATEWAY, namespace)
    if destination_rules:
        mesh.apply(DESTINATION_RULES, namespace)
    mesh.wait_ready(namespace)


def reset_routing(mesh: Backend, namespace: str = "bookinfo-test") -> list[str]:
    """Delete every DestinationRule and every VirtualService but the gateway's `bookinfo`."""
    doomed = [*mesh.get("destinationrule", namespace=namespace),
              *(vs for vs in mesh.get("virtualservice", namespace=namespace)
                if vs["metadata"]["name"] != GATEWAY_VIRTUAL_SERVICE)]
    if not doomed:
        return []
    # Only what `kubectl delete` needs: the full manifests would carry status along.
    return mesh.delete([{"apiVersion": r["apiVersion"], "kind": r["kind"],
                         "metadata": {"name": r["metadata"]["name"], "namespace": namespace}}
                        for r in doomed], namespace)


def show(items: list[dict[str, Any]], wide: bool = False) -> None:
    """Display `kubectl get` tables for these manifests: one per kind, without the index."""
    from IPython.display import display

    frames = tables(items, wide) if items else {"": table(items, wide)}
    for frame in frames.values():
        display(frame.style.hide(axis="index"))
