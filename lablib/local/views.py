"""Read-only views of a LocalMesh, in the shapes the Kubernetes API and istioctl give."""

from __future__ import annotations

import json
from typing import Any

from ..config.schema import PREFERRED_VERSION
from ..controlplane.context import selector_matches
from ..controlplane.gateway import SECRET_TYPE
from ..errors import NotFoundError
from .admin import envoy_live
from .mesh import LocalMesh, Pod, rfc3339

KIND_ALIASES = {
    "pod": "Pod", "pods": "Pod", "po": "Pod",
    "service": "Service", "services": "Service", "svc": "Service",
    "deployment": "Deployment", "deployments": "Deployment", "deploy": "Deployment",
    "namespace": "Namespace", "namespaces": "Namespace", "ns": "Namespace",
    "secret": "Secret", "secrets": "Secret", "configmap": "ConfigMap", "configmaps": "ConfigMap",
    "cm": "ConfigMap", "serviceaccount": "ServiceAccount", "serviceaccounts": "ServiceAccount",
    "sa": "ServiceAccount",
    "gateway": "Gateway", "gateways": "Gateway", "gw": "Gateway",
    "virtualservice": "VirtualService", "virtualservices": "VirtualService", "vs": "VirtualService",
    "destinationrule": "DestinationRule", "destinationrules": "DestinationRule",
    "dr": "DestinationRule", "sidecar": "Sidecar", "sidecars": "Sidecar",
    "serviceentry": "ServiceEntry", "serviceentries": "ServiceEntry", "se": "ServiceEntry",
    "peerauthentication": "PeerAuthentication", "peerauthentications": "PeerAuthentication",
    "pa": "PeerAuthentication", "telemetry": "Telemetry", "telemetries": "Telemetry",
    "authorizationpolicy": "AuthorizationPolicy", "authorizationpolicies": "AuthorizationPolicy",
    "ap": "AuthorizationPolicy", "requestauthentication": "RequestAuthentication",
    "requestauthentications": "RequestAuthentication", "ra": "RequestAuthentication",
}


def redacted_secret(secret: dict[str, Any]) -> dict[str, Any]:
    """An SDS secret without its private key: views never hand out key material."""
    out = json.loads(json.dumps(secret))
    if "tls_certificate" in out:
        out["tls_certificate"]["private_key"] = {"inline_bytes": "[redacted]"}
    return out


def conditions(**states: bool) -> list[dict[str, str]]:
    """`status.conditions` as the API server reports them (what `kubectl wait
    --for=condition=NAME` reads)."""
    return [{"type": name, "status": "True" if state else "False"}
            for name, state in states.items()]


def kind_of(word: str) -> str:
    """`svc`, `services`, `Service` and `virtualservice` all name their Kind."""
    return KIND_ALIASES.get(word.lower(), KIND_ALIASES.get(word.lower().split(".")[0], word))


class MeshViews:
    def __init__(self, mesh: LocalMesh):
        self.mesh = mesh

    def get(self, kind: str, namespace: str | None = None, name: str | None = None,
            selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        kind = kind_of(kind)
        processes = {row["name"]: row for row in self.mesh.supervisor.status()}
        if kind == "Pod":
            items = [self._pod_manifest(p, processes) for p in self.mesh.pods.values()
                     if namespace in (None, p.namespace)]
        else:
            items = [self._with_status(r.kind, r.body, r.namespace, processes)
                     for r in self.mesh.store.list(kind, namespace)]
        if name is not None:
            items = [i for i in items if i["metadata"]["name"] == name]
            if not items:
                raise NotFoundError(
                    f'Error from server (NotFound): {kind.lower()}s "{name}" not found')
        if selector:
            items = [i for i in items
                     if selector_matches(selector, i["metadata"].get("labels") or {})]
        return items

    def _with_status(self, kind: str, body: dict[str, Any], namespace: str,
                     processes: dict[str, dict[str, Any]]) -> dict[str, Any]:
        out = dict(body)
        out["apiVersion"] = PREFERRED_VERSION.get(kind, body.get("apiVersion"))
        out["metadata"] = dict(body.get("metadata") or {})
        if namespace:
            out["metadata"]["namespace"] = namespace
        if kind == "Deployment":
            pods = [p for p in self.mesh.pods.values()
                    if p.namespace == namespace and p.deployment == body["metadata"]["name"]]
            ready = sum(1 for p in pods
                        if all(processes.get(name, {}).get("state") == "Running"
                               for name in p.processes))
            wanted = int((body.get("spec") or {}).get("replicas", 1))
            out["status"] = {"replicas": len(pods), "readyReplicas": ready,
                             "availableReplicas": ready, "updatedReplicas": len(pods),
                             "conditions": conditions(Available=ready >= wanted,
                                                      Progressing=True)}
        if kind == "Service":
            out["status"] = {"loadBalancer": self.mesh.load_balancer.status(
                namespace, body["metadata"]["name"])}
        if kind == "Namespace":
            out["status"] = {"phase": "Active"}
        return out

    def _pod_manifest(self, pod: Pod, processes: dict[str, dict[str, Any]]) -> dict[str, Any]:
        containers = [dict(c) for c in pod.containers]
        if pod.proxy and pod.proxy.kind == "sidecar":
            containers.append({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.20.3"})
        statuses = []
        for c in containers:
            row = processes.get(f"{pod.namespace}.{pod.name}.{c['name']}", {})
            if pod.role == "control-plane":
                row = {"state": "Running", "restarts": 0}
            running = row.get("state") == "Running"
            statuses.append({"name": c["name"], "image": c.get("image"), "ready": running,
                             "restartCount": row.get("restarts", 0),
                             "state": {"running": {}} if running else
                             {"waiting": {"reason": row.get("state", "ContainerCreating")}}})
        phase = "Running" if all(s["ready"] for s in statuses) else "Pending"
        ready = phase == "Running"
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace,
                         "labels": dict(pod.workload.labels),
                         "creationTimestamp": rfc3339(pod.started_at)},
            "spec": {"containers": containers, "serviceAccountName": pod.workload.service_account,
                     "nodeName": "localhost"},
            "status": {"phase": phase, "podIP": "127.0.0.1", "hostIP": "127.0.0.1",
                       "containerStatuses": statuses, "startTime": rfc3339(pod.started_at),
                       "conditions": conditions(Initialized=True, Ready=ready,
                                                ContainersReady=ready, PodScheduled=True)},
        }

    def pod_info(self, namespace: str, name: str) -> dict[str, Any]:
        """What `exec` and `proxy_config` need: the pod's proxy env and its Envoy admin port."""
        pod = self.mesh.find_pod(namespace, name)
        return {"name": pod.name, "namespace": pod.namespace, "env": pod.app_env,
                "container_env": pod.container_env,
                "admin_socket": pod.admin_socket,
                "proxy": pod.proxy.kind if pod.proxy else None,
                "proxy_id": pod.proxy.id if pod.proxy else None,
                "ports": {str(k): v for k, v in pod.workload.ports.items()},
                # What 127.0.0.1:containerPort is inside the pod: the app itself.
                "app_ports": {str(k): v for k, v in pod.bind_ports.items()},
                "labels": pod.workload.labels,
                "direct_proxy": self._direct_proxy(pod.namespace),
                "containers": [str(c["name"]) for c in pod.containers]
                + (["istio-proxy"] if pod.proxy and pod.proxy.kind == "sidecar" else [])}

    def _direct_proxy(self, namespace: str) -> str:
        """host:port of the kube-proxy stand-in for `namespace` (plain connections)."""
        kube = self.mesh.kube_proxy
        port = kube.kube_ports.get(namespace) if kube else None
        return f"127.0.0.1:{port}" if port else ""

    def snapshot(self, namespace: str, name: str) -> dict[str, Any]:
        """The config the control plane wants this pod's proxy to hold (for call simulation)."""
        snap = self.mesh.snapshot_of(self.mesh.find_pod(namespace, name))
        if snap is None:
            return {}
        resources = dict(snap.resources)
        resources[SECRET_TYPE] = {name: redacted_secret(s)
                                  for name, s in snap.secrets.items()}
        return resources

    def proxy_status(self) -> list[dict[str, Any]]:
        return self.mesh.ads.status()

    def telemetry(self) -> dict[str, Any]:
        """Where this mesh's Istio metrics are served, and its Prometheus (started on first
        ask)."""
        return self.mesh.telemetry.endpoints()

    def processes(self) -> list[dict[str, Any]]:
        return self.mesh.supervisor.status()

    def ports(self) -> list[int]:
        """Every loopback port this mesh holds: listeners and apps (xDS and admin APIs are
        Unix sockets)."""
        return sorted(self.mesh.ports.allocated())

    def verify(self) -> list[dict[str, Any]]:
        """Each installed component and whether it is really serving, as verify-install."""
        rows = [{"component": "Istiod (lablib control plane)", "kind": "Deployment",
                 "name": "istiod.istio-system", "ok": self.mesh.installed,
                 "detail": f"xDS on {self.mesh.xds_socket}"}]
        for pod in self.mesh.pods.values():
            if pod.role == "gateway":
                live = envoy_live(pod.admin_socket)
                rows.append({"component": pod.deployment, "kind": "Deployment",
                             "name": f"{pod.deployment}.{pod.namespace}", "ok": live,
                             "detail": f"Envoy admin {pod.admin_socket} "
                                       f"{'LIVE' if live else 'not ready'}"})
        synced = self.mesh.ads.status()
        rows.append({"component": "proxies in sync", "kind": "xDS", "name": "proxy-status",
                     "ok": all(all(v in ("SYNCED", "NOT SENT") for k, v in r.items()
                                   if k in ("CDS", "LDS", "RDS")) for r in synced),
                     "detail": f"{len(synced)} proxies"})
        for kind in ("Namespace", "Service", "Deployment", "ServiceAccount"):
            for r in self.mesh.store.list(kind, "istio-system" if kind != "Namespace" else None):
                if kind == "Namespace" and r.name != "istio-system":
                    continue
                rows.append({"component": r.name, "kind": kind,
                             "name": f"{r.name}.istio-system", "ok": True,
                             "detail": "checked successfully"})
        return rows

