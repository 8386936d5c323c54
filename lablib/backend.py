"""The one interface every lab talks to. Two implementations: the local mesh (default) and a
real cluster (`LAB_BACKEND=kubernetes`). No lab knows which one it runs on."""

from __future__ import annotations

import abc
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import BackendError

Source = str | Path | dict[str, Any] | Sequence[str | Path | dict[str, Any]]


def manifest_text(source: Source, check_fields: bool = True, verb: str = "apply") -> str:
    """Files, folders, YAML text or dicts as one multi-document YAML string; ConfigError
    when they hold no manifest ("no objects passed to apply", as kubectl says)."""
    from .config.loader import load

    resources = load(source, check_fields=check_fields, verb=verb)
    return yaml.safe_dump_all([r.body for r in resources], sort_keys=False)


class Backend(abc.ABC):
    """What a lab can do to a mesh."""

    name: str = "abstract"

    # --- Istio itself ------------------------------------------------------------------------
    @abc.abstractmethod
    def install(self, profile: str = "demo", values: dict[str, str] | None = None) -> list[str]:
        """`istioctl install --set profile=PROFILE [--set K=V...]`: `demo` is the control plane
        plus ingress and egress gateways; `default`, `minimal` and `empty` as istioctl has
        them. A setting the backend cannot honour is refused by name (ConfigError)."""

    @abc.abstractmethod
    def verify_install(self) -> list[dict[str, Any]]:
        """`istioctl verify-install`: one row per component, with `ok`."""

    @abc.abstractmethod
    def uninstall(self) -> None:
        """`istioctl uninstall --purge -y` and every lab namespace with it."""

    # --- resources ---------------------------------------------------------------------------
    @abc.abstractmethod
    def apply(self, source: Source, namespace: str | None = None) -> list[str]:
        """`kubectl apply -f`: returns when pods are ready and every proxy has the config;
        the lines kubectl prints, a field the mesh accepts without effect first as
        `Warning: …` (as an admission webhook's warnings)."""

    @abc.abstractmethod
    def delete(self, source: Source, namespace: str | None = None,
               ignore_missing: bool = True) -> list[str]:
        """`kubectl delete -f`."""

    @abc.abstractmethod
    def get(self, kind: str, name: str | None = None, namespace: str | None = None,
            selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """`kubectl get -o json`: manifests with status, `items` unwrapped."""

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> list[str]:
        """`kubectl create ns NAME` plus `kubectl label namespace NAME k=v`."""
        body = {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": dict(labels or {})}}
        return self.apply(body)

    def delete_namespace(self, name: str) -> list[str]:
        """`kubectl delete ns NAME`: everything in it goes too."""
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        return self.delete(body)

    def wait_ready(self, namespace: str, timeout: float = 120.0) -> None:
        """`kubectl wait --for=condition=ready pod --all -n NS`."""
        deadline = time.monotonic() + timeout
        while True:
            pods = self.get("pods", namespace=namespace)
            if pods and all(p["status"].get("phase") == "Running" and all(
                    c.get("ready") for c in p["status"].get("containerStatuses") or [])
                    for p in pods):
                return
            if time.monotonic() > deadline:
                raise BackendError(f"pods in {namespace} not ready after {timeout:.0f}s")
            time.sleep(0.2)

    def pod_name(self, selector: dict[str, str], namespace: str) -> str:
        """`kubectl get pod -l app=sleep -o jsonpath={.items..metadata.name}`."""
        pods = self.get("pods", namespace=namespace, selector=selector)
        if not pods:
            raise BackendError(f"no pod with labels {selector} in namespace {namespace}")
        return str(pods[0]["metadata"]["name"])

    # --- reaching the mesh ---------------------------------------------------------------------
    @abc.abstractmethod
    def ingress_address(self, port_name: str = "http2") -> tuple[str, int]:
        """The ingress gateway's host and port: the LoadBalancer IP, else a node IP + NodePort."""

    @abc.abstractmethod
    def exec(self, pod: str, command: Sequence[str], namespace: str = "default",
             container: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """`kubectl exec POD -c C -- CMD`: the command's traffic leaves through the pod's
        sidecar."""

    @abc.abstractmethod
    def logs(self, pod: str, namespace: str = "default", container: str | None = None) -> str:
        """`kubectl logs POD -c C`: what the container wrote to stdout and stderr."""

    @abc.abstractmethod
    def proxy_admin(self, pod: str, namespace: str, path: str, method: str = "GET") -> str:
        """`pilot-agent request GET PATH` in the pod's istio-proxy (config_dump, stats...);
        POST for the admin calls that change the proxy (`logging?level=debug`)."""

    @abc.abstractmethod
    def proxy_url(self, pod: str, namespace: str) -> str | None:
        """An HTTP proxy URL through which a client behaves as if inside `pod`, if the
        backend has one (the local mesh does; a cluster does not)."""

    @abc.abstractmethod
    def proxy_status(self) -> list[dict[str, Any]]:
        """`istioctl proxy-status`."""

    def telemetry_endpoints(self) -> dict[str, str]:
        """Where Istio's metrics are read: `prometheus` (a PromQL server's URL, or ""),
        `metrics` (the proxies' own metrics in Prometheus text, or "") and `note` (why
        either is missing, with the fix)."""
        return {"prometheus": "", "metrics": "",
                "note": f"the {getattr(self, 'name', 'current')} backend reports no metrics"}

    def dashboard_url(self, name: str) -> str:
        """`istioctl dashboard NAME` (prometheus, grafana, kiali): a URL of that UI that
        works from this machine."""
        raise BackendError(f"no {name} dashboard on the {getattr(self, 'name', 'current')} "
                           "backend")

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Forget the connection; the mesh keeps running."""
