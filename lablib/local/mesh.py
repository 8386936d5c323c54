"""The local mesh: Kubernetes objects become processes, Istio objects become Envoy config.

`LocalMesh` is what istiod, the kubelet and kube-proxy are on a cluster. It keeps the applied
resources (a ConfigStore), runs every Deployment as local processes through the Supervisor
(the app, plus a sidecar Envoy in injected namespaces), runs the gateways as Envoys, and pushes
each proxy its snapshot over ADS. `apply` is all or nothing: a refused change leaves both the
store and every proxy on the last good config.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import itertools
import json
import logging
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..certs import spiffe_id
from ..config.analyze import analyze, dangling_destination
from ..config.analyze import errors as blocking
from ..config.fidelity import diagnostics as fidelity_diagnostics
from ..config.injection import STATUS, injected, injected_names
from ..config.install import PILOT, PROFILE_ANNOTATION, install_plan
from ..config.loader import load
from ..config.meshconfig import MeshConfig
from ..config.model import Resource
from ..config.schema import validate
from ..config.store import ConfigStore
from ..controlplane.ads import AdsServer, PushError
from ..controlplane.context import OutsideWorld, Proxy, PushContext, Workload, selector_matches
from ..controlplane.naming import node_id
from ..controlplane.sidecar import ingress_ports
from ..controlplane.snapshot import Snapshot, build_snapshot
from ..errors import ConfigError, Diagnostic, LabError, NotFoundError, ProxyRejectedError
from ..telemetry.service import MeshTelemetry
from ..telemetry.topology import topology_from_mesh
from .admin import envoy_live
from .bootstrap import bootstrap, envoy_argv, write_bootstrap
from .containment import host_env_problems
from .identity import MeshCA
from .images import command_for
from .loadbalancer import LoadBalancer
from .outside import start as start_outside_world
from .pod_files import (
    GATEWAY_IMAGE,
    PILOT_IMAGE,
    PodFacts,
    app_containers,
    env_from_sources,
    mount_volumes,
    pod_spec_problems,
)
from .ports import PortAllocator, is_address_in_use, port_accepts
from .rejection import rejection_reason
from .state import StateDir
from .supervisor import ProcessStartError, Supervisor

log = logging.getLogger(__name__)

ISTIO_SYSTEM_MANIFEST = Path(__file__).with_name("istio_system.yaml")
NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
NODE_PORT_TYPES = ("LoadBalancer", "NodePort")
NODE_PORT_RANGE = (30000, 32767)  # the API server's default --service-node-port-range
# Where Services' cluster IPs come from: kubeadm's default service CIDR (10.96.0.0/12) moved
# into loopback, so a learner's `nc 127.96.0.12 9000` in a pod never sends a packet off this
# machine; .1 is left for the `kubernetes` Service, as on a cluster. The addresses name
# Services in HTTP requests (the sidecars route `http://127.96.0.12:9080/`); nothing listens
# on them (issue #17).
SERVICE_CIDR = ipaddress.ip_network("127.96.0.0/12")


def cluster_ip_problems(service: Resource) -> list[Diagnostic]:
    """The API server's refusal of a chosen cluster IP outside the service CIDR."""
    problems = []
    chosen = [("spec.clusterIP", service.spec.get("clusterIP"))] + [
        (f"spec.clusterIPs[{i}]", ip) for i, ip in enumerate(service.spec.get("clusterIPs") or [])]
    for field_path, ip in chosen:
        if not ip or ip == "None":
            continue
        try:
            inside = ipaddress.ip_address(str(ip)) in SERVICE_CIDR
        except ValueError:
            inside = False
        if not inside:
            problems.append(Diagnostic(
                "LAB0109", "Error", service.ref,
                f"failed to allocate IP {ip}: provided IP ({ip}) is not in the valid range. "
                f"The range of valid IPs is {SERVICE_CIDR} (the local mesh's service CIDR is "
                "in loopback, so no packet to a cluster IP leaves this machine)", field_path,
                f"leave {field_path} out (one is assigned) or choose one in {SERVICE_CIDR}; "
                "a cluster's API server refuses an IP outside its own range too"))
    return problems
# A port the mesh chose may be bound by another program before our process binds it; the
# change is rolled back and tried again with fresh ports this many times in all.
PORT_ATTEMPTS = 3
# What istiod publishes into every namespace but these: the mesh root for kube-injected pods.
ROOT_CERT_CONFIGMAP = "istio-ca-root-cert"
NO_ROOT_CERT_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
LOOPBACK_PORT = re.compile(r"127\.0\.0\.1:(\d+)")
CANCELS_KEPT = 64


class OperationInterrupted(LabError):
    """The caller interrupted an install, apply or delete; the mesh kept its last good config."""


@dataclass
class Pod:
    """One running pod: its workload as the control plane sees it and its processes."""

    name: str
    namespace: str
    deployment: str
    template_hash: str
    role: str  # "app", "gateway" or "control-plane"
    workload: Workload
    containers: list[dict[str, Any]]
    proxy: Proxy | None = None
    admin_socket: str = ""  # its Envoy's admin API (a Unix socket), when it has one
    processes: list[str] = field(default_factory=list)
    app_env: dict[str, str] = field(default_factory=dict)
    # Each container's own variables (env, envFrom), which `kubectl exec` gives a command too.
    container_env: dict[str, dict[str, str]] = field(default_factory=dict)
    bind_ports: dict[int, int] = field(default_factory=dict)  # containerPort -> app's bind port
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)  # the pod spec's, by name
    private_ports: dict[int, int] = field(default_factory=dict)  # gateway ports without a Service
    started_at: float = field(default_factory=time.time)


def node_ports(store: ConfigStore) -> set[int]:
    """Every node port the store's Services hold."""
    return {int(p["nodePort"]) for svc in store.list("Service")
            for p in svc.spec.get("ports") or [] if p.get("nodePort")}


def chosen_node_ports(resources: list[Resource]) -> list[tuple[Resource, int, int]]:
    """(Service, port index, nodePort) for every nodePort a manifest sets itself."""
    return [(r, i, int(p["nodePort"])) for r in resources
            if r.kind == "Service" and r.spec.get("type") in NODE_PORT_TYPES
            for i, p in enumerate(r.spec.get("ports") or []) if p.get("nodePort")]


def rfc3339(ts: float) -> str:
    """Kubernetes' timestamp format: `2024-03-05T11:37:41Z`."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def listening(ports: list[int]) -> Callable[[], bool]:
    """A readiness check: every one of `ports` accepts connections."""
    return lambda: all(port_accepts(p) for p in ports)


def template_hash(deployment: Resource) -> str:
    template = deployment.spec.get("template") or {}
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


class LocalMesh:
    """Everything one learner's mesh is, in one process (meshd hosts it)."""

    def __init__(self, state: StateDir, supervisor: Supervisor | None = None):
        self.state = state
        self.supervisor = supervisor or Supervisor(state)
        self.ports = PortAllocator()
        self.ads = AdsServer()
        state.xds_socket.unlink(missing_ok=True)  # a socket a killed meshd left behind
        self.xds_socket = self.ads.start(str(state.xds_socket))
        self.store = ConfigStore.with_namespaces(["default"])
        default = self.store.get("Namespace", "", "default")
        assert default is not None
        self.store = self.store.with_applied([self._admit(default, [])])
        self.pods: dict[tuple[str, str], Pod] = {}
        self.kube_proxy: Proxy | None = None
        self.kube_admin_socket = ""
        self._admin_serials = itertools.count(1)
        self.outside: OutsideWorld | None = None
        self.lock = threading.RLock()
        self.installed = False
        self._analysed: tuple[ConfigStore, list[Diagnostic]] | None = None
        self.ca: MeshCA | None = None
        self.pilot_env: dict[str, str] = {}
        self.mesh_config = MeshConfig()
        self.load_balancer = LoadBalancer(self.supervisor, self.ports, state.path)
        self.telemetry = MeshTelemetry(state.path / "telemetry", self.supervisor, self.ports,
                                       lambda: topology_from_mesh(self))
        self._stopping = threading.Event()
        self._op: str | None = None  # the install/apply/delete running now, by caller's id
        self._cancelled: dict[str, None] = {}  # ids the callers interrupted (ordered set)
        self._cancel_lock = threading.Lock()
        self.progress: dict[str, Any] = {}
        self.supervisor.on_restart = self._on_restart
        threading.Thread(target=self._renew_certificates, daemon=True,
                         name="certificate-renewal").start()

    # --- public operations -----------------------------------------------------------------
    def install(self, values: dict[str, str] | None = None, profile: str = "demo") -> list[str]:
        """`istioctl install --set profile=P`: istiod (this control plane) and the gateways the
        profile and `components.*` ask for; a component now disabled is removed."""
        with self.lock:
            # Checked first: a refused key leaves the mesh as it was.
            plan = install_plan(profile, values or {})
            self.mesh_config = plan.mesh_config
            # `--set values.pilot.env.NAME=VALUE` sets istiod's feature flags.
            self.pilot_env = dict(plan.pilot_env)
            # istiod reads a plugged-in CA (the `cacerts` Secret) when it starts.
            self.ca = MeshCA.for_install(self.store.get("Secret", "istio-system", "cacerts"),
                                         self.state.certs / "istiod")
            if not self.kube_proxy:
                self._report("starting kube-proxy", 0, 1)
                self._start_kube_proxy()
                self._check_cancelled()
            if not self.outside:
                self._report("starting the outside world", 0, 1)
                self.outside = start_outside_world(self.supervisor, self.ports,
                                                   self.state.certs / "public")
            manifest = load(str(ISTIO_SYSTEM_MANIFEST))
            self.apply([self._with_pilot_env(r, plan.profile) for r in manifest
                        if plan.includes(r)])
            pruned = [r for r in manifest if not plan.includes(r)
                      and self.store.get(r.kind, r.namespace, r.name) is not None]
            if pruned:
                self.delete(pruned)
            self.installed = PILOT in plan.components
            return plan.lines()

    def apply(self, resources: list[Resource], namespace: str | None = None) -> list[str]:
        """Apply manifests; returns kubectl's lines (`service/details created`).

        A port the mesh chose that another program binds first fails the change, which is
        rolled back; it is then tried again with fresh ports (PORT_ATTEMPTS in all)."""
        with self.lock:
            for attempt in range(1, PORT_ATTEMPTS + 1):
                try:
                    return self._apply_once(resources, namespace)
                except (ProxyRejectedError, ProcessStartError) as exc:
                    port = self._lost_port(exc, resources)
                    if port is None or attempt == PORT_ATTEMPTS:
                        raise
                    log.warning("port %s was taken by another program before the mesh bound "
                                "it; applying again with fresh ports", port or "?")
            raise AssertionError("unreachable")

    @staticmethod
    def _lost_port(exc: Exception, resources: list[Resource]) -> int | None:
        """The port a mesh-chosen bind lost to another program (0: not named), or None when
        the failure is something else or the port is one the manifests ask for."""
        if not is_address_in_use(exc):
            return None
        asked = {int(p["nodePort"]) for r in resources if r.kind == "Service"
                 for p in r.spec.get("ports") or [] if p.get("nodePort")}
        named = {int(m) for m in LOOPBACK_PORT.findall(str(exc))}
        if named & asked:
            return None
        return min(named) if named else 0

    def _apply_once(self, resources: list[Resource], namespace: str | None) -> list[str]:
        with self.lock:
            if namespace:
                resources = [r if r.namespace or r.kind == "Namespace"
                             else r.in_namespace(namespace) for r in resources]
            new_node_ports: list[int] = []
            chosen = chosen_node_ports(resources)
            taken = {str(svc.spec.get("clusterIP")) for svc in self.store.list("Service")}
            resources = [self._admit(r, new_node_ports, taken) for r in resources]
            old_store = self.store
            try:
                candidate = self._with_root_certs(old_store.with_applied(resources))
                warnings = self._check(resources, candidate, old_store)
                new_node_ports += self._claim_node_ports(chosen, candidate, old_store)
                self._transition(candidate)
                self.load_balancer.sync(self.store)
            except Exception:
                for port in new_node_ports:
                    self.ports.release(port)
                raise
            # kubectl prints an admission webhook's warnings before the objects' lines.
            lines = [f"Warning: {d}" for d in warnings if not dangling_destination(d)]
            for r in resources:
                before = old_store.get(r.kind, r.namespace, r.name)
                word = "created" if before is None else (
                    "unchanged" if before.body == r.body else "configured")
                lines.append(f"{kube_word(r.kind)}/{r.name} {word}")
            # As kubectl shows an admission warning; the route answers 503 meanwhile.
            return lines + [f"Warning: {str(d).splitlines()[0]} (its route answers 503 until "
                            f"the Service exists)" for d in warnings if dangling_destination(d)]

    def _with_root_certs(self, store: ConfigStore) -> ConfigStore:
        """`store` with what istiod's namespace controller publishes once Istio is installed:
        in every namespace a ConfigMap istio-ca-root-cert holding the mesh's root certificate
        (pods from `istioctl kube-inject` mount it), renewed when the root changes."""
        if self.ca is None:
            return store
        root = self.ca.root_pem
        published = []
        for ns in store.list("Namespace"):
            if ns.name in NO_ROOT_CERT_NAMESPACES:
                continue
            held = store.get("ConfigMap", ns.name, ROOT_CERT_CONFIGMAP)
            if held is not None and (held.body.get("data") or {}).get("root-cert.pem") == root:
                continue
            body = {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CERT_CONFIGMAP, "namespace": ns.name,
                                 "labels": {"istio.io/config": "true"}},
                    "data": {"root-cert.pem": root}}
            published.append(self._admit(Resource("ConfigMap", ROOT_CERT_CONFIGMAP, ns.name,
                                                   body, "istiod"), []))
        return store.with_applied(published) if published else store

    def delete(self, resources: list[Resource], namespace: str | None = None,
               ignore_missing: bool = False) -> list[str]:
        with self.lock:
            keys, lines = [], []
            for r in resources:
                ns = r.namespace or (namespace or "default" if r.kind != "Namespace" else "")
                if namespace and r.kind != "Namespace" and not r.namespace:
                    ns = namespace
                if self.store.get(r.kind, ns, r.name) is None:
                    if ignore_missing:
                        continue
                    raise NotFoundError(
                        f'Error from server (NotFound): {plural(r.kind)} "{r.name}" not found')
                keys.append((r.kind, ns, r.name))
                if r.kind == "Namespace":
                    keys += [x.key for x in self.store.list() if x.namespace == r.name]
                lines.append(f'{kube_word(r.kind)} "{r.name}" deleted')
            self._transition(self.store.without(keys))
            self._analysed = None  # it held the store before the delete, deleted objects too
            self.load_balancer.sync(self.store)
            return lines

    def shutdown(self) -> None:
        self._stopping.set()
        with self.lock:
            self.telemetry.close()
            self.load_balancer.close()
            self.supervisor.close()
            self.ads.stop()
            self.pods.clear()
            self.ports.close()

    # --- operations a caller may interrupt ---------------------------------------------------
    @contextmanager
    def operation(self, op: str | None) -> Iterator[None]:
        """Run one install/apply/delete for the caller's id `op`, which `cancel(op)` stops."""
        with self.lock:
            self._op = op
            try:
                self._check_cancelled()  # interrupted while waiting for an earlier one
                yield
            finally:
                self._op = None
                self.progress = {}
                with self._cancel_lock:
                    self._cancelled.pop(op or "", None)

    def cancel(self, op: str) -> None:
        """Stop operation `op` (now or when it starts): it rolls back to the last good config.

        Never waits for the mesh lock, which the operation holds."""
        with self._cancel_lock:
            self._cancelled[op] = None
            while len(self._cancelled) > CANCELS_KEPT:  # ids of operations long finished
                del self._cancelled[next(iter(self._cancelled))]

    def _check_cancelled(self) -> None:
        op = self._op
        with self._cancel_lock:
            cancelled = op is not None and op in self._cancelled
        if cancelled:
            raise OperationInterrupted(
                "interrupted: the mesh went back to its last good configuration")

    def _report(self, step: str, done: int, total: int) -> None:
        """What the running operation is doing, for the caller's progress bar."""
        self.progress = {"op": self._op, "step": step, "done": done, "total": total}

    # --- checks ----------------------------------------------------------------------------
    def _check(self, incoming: list[Resource], candidate: ConfigStore,
               current: ConfigStore) -> list[Diagnostic]:
        """Schema and images, then analysis and the fidelity ledger (both reported: the
        analyzer's finding is often the more specific); only findings this change introduces
        block it. Returns the warnings that let it through: the ledger's fields without
        local effect, and routes to a Service that does not exist."""
        errors: list[Diagnostic] = []
        ledger: list[Diagnostic] = []
        for r in incoming:
            schema_errors = [d for d in validate(r) if d.severity == "Error"]
            errors += schema_errors
            if not schema_errors:
                ledger += fidelity_diagnostics(r)
            if r.kind == "Deployment":
                errors += self._image_problems(r)
                errors += host_env_problems(r)
                errors += pod_spec_problems(r, candidate)
            if r.kind == "Service":
                errors += cluster_ip_problems(r)
        if errors:
            raise ConfigError(errors)
        known = {str(d) for d in self._findings(current)}
        introduced = [d for d in self._findings(candidate) if str(d) not in known]
        errors = blocking(introduced) + [d for d in ledger if d.severity == "Error"]
        if errors:
            raise ConfigError(errors)
        return ([d for d in ledger if d.severity != "Error"]
                + [d for d in introduced if dangling_destination(d)])

    def _claim_node_ports(self, chosen: list[tuple[Resource, int, int]],
                          candidate: ConfigStore, current: ConfigStore) -> list[int]:
        """Check the node ports manifests chose, as the API server does (its range, not
        another Service's), and that no other mesh or program holds them, before anything
        is pushed: an Envoy binds with SO_REUSEPORT and would share a port with another
        mesh's. Returns the ports newly held; raises ConfigError naming Service and port."""
        problems: list[Diagnostic] = []
        held_before = node_ports(current)
        claimed: list[int] = []
        for r, index, port in chosen:
            path = f"spec.ports[{index}].nodePort"
            if not NODE_PORT_RANGE[0] <= port <= NODE_PORT_RANGE[1]:
                problems.append(Diagnostic(
                    "LAB0150", "Error", r.ref, f"Invalid value: {port}: provided port is not "
                    f"in the valid range. The range of valid ports is "
                    f"{NODE_PORT_RANGE[0]}-{NODE_PORT_RANGE[1]}", path,
                    "choose a nodePort in that range, or leave it out to get one"))
                continue
            others = [svc.ref for svc in candidate.list("Service")
                      if (svc.namespace, svc.name) != (r.namespace, r.name)
                      and port in {p.get("nodePort") for p in svc.spec.get("ports") or []}]
            if others:
                problems.append(Diagnostic(
                    "LAB0151", "Error", r.ref, f"Invalid value: {port}: provided port is "
                    f"already allocated (to {others[0]})", path,
                    "choose another nodePort, or leave it out to get a free one"))
                continue
            if port in held_before:
                continue
            holder = self.ports.claim(port)
            if holder:
                problems.append(Diagnostic(
                    "LAB0151", "Error", r.ref, f"nodePort {port} is in use on this machine: "
                    f"{holder}", path,
                    "choose another nodePort, or leave it out to get a free one"))
            else:
                claimed.append(port)
        if problems:
            for port in claimed:
                self.ports.release(port)
            raise ConfigError(problems)
        return claimed

    def _findings(self, store: ConfigStore) -> list[Diagnostic]:
        """analyze(store), remembered for the last store analysed: the candidate of one apply
        is the current store of the next, so each apply analyses once."""
        if self._analysed is None or self._analysed[0] is not store:
            self._analysed = (store, analyze(store))
        return self._analysed[1]

    def _image_problems(self, deployment: Resource) -> list[Diagnostic]:
        problems = []
        for i, c in app_containers((deployment.spec.get("template") or {}).get("spec") or {}):
            image = str(c.get("image", ""))
            declared = {int(p["containerPort"]): int(p["containerPort"])
                        for p in c.get("ports") or []}
            try:
                command_for(image, port_map=declared, env={},
                            args=[str(a) for a in c.get("args") or []])
            except LabError as exc:
                problems.append(Diagnostic("LAB0106", "Error", deployment.ref, str(exc),
                                           f"spec.template.spec.containers[{i}].image",
                                           "use one of the supported sample images, or run "
                                           "this lab with LAB_BACKEND=kubernetes"))
        return problems

    def _admit(self, r: Resource, new_node_ports: list[int],
               cluster_ips: set[str] | None = None) -> Resource:
        """What the API server adds to a manifest: its creation time (kept on updates), a
        Service's cluster IP (kept on updates; `cluster_ips` are taken) and, for
        LoadBalancer/NodePort Services, a node port per port — here a loopback port."""
        existing = self.store.get(r.kind, r.namespace, r.name)
        body = json.loads(json.dumps(r.body))
        created = (existing.body.get("metadata") or {}).get("creationTimestamp") if existing \
            else None
        body.setdefault("metadata", {})["creationTimestamp"] = created or rfc3339(time.time())
        if r.kind == "Secret" and body.get("stringData"):
            data = body.setdefault("data", {})
            for key, value in body.pop("stringData").items():
                data[key] = base64.b64encode(str(value).encode()).decode()
        spec = body.setdefault("spec", {}) if r.kind == "Service" else {}
        if r.kind == "Service" and spec.get("type") != "ExternalName" and \
                not spec.get("clusterIP"):
            kept = (existing.spec.get("clusterIP") if existing else None) or ""
            taken = cluster_ips if cluster_ips is not None else set()
            spec["clusterIP"] = kept or next(
                str(ip) for ip in SERVICE_CIDR.hosts()
                if ip != SERVICE_CIDR[1] and str(ip) not in taken)
            taken.add(spec["clusterIP"])
        if r.kind == "Service" and r.spec.get("type") in NODE_PORT_TYPES:
            old_ports = {p.get("name") or p["port"]: p.get("nodePort")
                         for p in ((existing.spec.get("ports") if existing else None) or [])}
            for p in body["spec"].get("ports") or []:
                if not p.get("nodePort"):
                    p["nodePort"] = old_ports.get(p.get("name") or p["port"])
                if not p.get("nodePort"):
                    p["nodePort"] = self.ports.allocate(within=NODE_PORT_RANGE)
                    new_node_ports.append(p["nodePort"])
        return Resource(r.kind, r.name, r.namespace, body, r.source)

    # --- the transition from one store to the next -----------------------------------------
    def _transition(self, candidate: ConfigStore) -> None:
        """Start new pods, push config make-before-break, then stop what is gone.

        On any refusal, stop what was started, restore every proxy and keep the old store.
        """
        old_store, old_pods = self.store, dict(self.pods)
        # Kept pods are updated in place (gateway and Sidecar ports): remember how they were.
        saved = {key: (p.workload, p.proxy, dict(p.private_ports)) for key, p in old_pods.items()}
        old_kube = self.kube_proxy
        wanted = self._desired_pods(candidate)
        keep = {k: p for k, p in old_pods.items() if (p.deployment, p.template_hash) in
                {(d, h) for d, h, _ in wanted.get(p.namespace, [])}}
        new_pods = self._plan_new_pods(candidate, wanted, keep)
        gone = [p for k, p in old_pods.items() if k not in keep]
        self.pods = {**keep, **{(p.namespace, p.name): p for p in new_pods}}
        self._sync_gateway_ports(candidate)
        self._sync_sidecar_ingress(candidate)
        for pod in new_pods:
            # Every app namespace gets the plain path too: pods without a sidecar use it, and
            # so does traffic that bypasses a sidecar (from its istio-proxy container).
            if pod.role == "app" and self.kube_proxy:
                self._kube_port(pod.namespace)
        try:
            self._check_cancelled()
            ctx = self._context(candidate)
            snapshots = {p.id: build_snapshot(p, ctx) for p in ctx.proxies}
            new_ids = {p.proxy.id for p in new_pods if p.proxy}
            for pid in new_ids:
                self.ads.set_target(snapshots[pid])
            # New pods serve before existing proxies send them traffic (make-before-break).
            self._start_pods(new_pods, candidate)
            self.ads.wait_synced(new_ids, timeout=15, require_connected=True)
            self._check_cancelled()
            self._report("pushing config", len(new_pods), len(new_pods))
            self.ads.push([s for pid, s in snapshots.items() if pid not in new_ids], timeout=10)
            self._check_cancelled()  # the last moment the change can still be undone
        except Exception as exc:  # whatever went wrong, nothing half-applied stays
            self._rollback(old_store, old_pods, new_pods, saved, old_kube)
            if isinstance(exc, PushError) and exc.unanswered:
                raise ProxyRejectedError(
                    f"{exc.proxy_id} did not answer: {exc.reason}. It is stopped (e.g. by "
                    "SIGSTOP) or overloaded; it refused nothing. The change was rolled back, "
                    "so every proxy keeps the last good configuration") from None
            if isinstance(exc, PushError):
                raise ProxyRejectedError(
                    f"Envoy refused the new configuration, so every proxy keeps the last good "
                    f"one. {exc.proxy_id} said: "
                    f"{rejection_reason(exc, snapshots.get(exc.proxy_id))}") from None
            raise
        for port in node_ports(old_store) - node_ports(candidate):
            self.ports.release(port)
        self.store = candidate
        for pod in gone:
            self._stop_pod(pod)

    def _rollback(self, old_store: ConfigStore, old_pods: dict, new_pods: list[Pod],
                  saved: dict[tuple[str, str], tuple[Workload, Proxy | None, dict[int, int]]],
                  old_kube: Proxy | None) -> None:
        for pod in new_pods:
            self._stop_pod(pod)
        for key, (workload, proxy, private) in saved.items():
            pod = old_pods[key]
            for port in set(pod.private_ports.values()) - set(private.values()):
                self.ports.release(port)
            pod.workload, pod.proxy, pod.private_ports = workload, proxy, private
        if old_kube is not None and self.kube_proxy is not None:
            for port in set(self.kube_proxy.kube_ports.values()) - set(
                    old_kube.kube_ports.values()):
                self.ports.release(port)
            self.kube_proxy = old_kube
        self.pods = old_pods
        self.store = old_store
        ctx = self._context(old_store)
        try:
            self.ads.push([build_snapshot(p, ctx) for p in ctx.proxies], timeout=10)
        except PushError:
            pass  # the proxies that refused still hold the old config

    def _context(self, store: ConfigStore) -> PushContext:
        proxies = [p.proxy for p in self.pods.values() if p.proxy]
        if self.kube_proxy:
            proxies.append(self.kube_proxy)
        logs = {p.id: str(self.access_log_path(p.id)) for p in proxies}
        identities: dict[str, tuple[str, str]] = {}
        if self.ca is not None:
            for proxy in proxies:
                if proxy.workload is not None:
                    identities[proxy.id] = self.ca.certificate(spiffe_id(
                        proxy.workload.namespace, proxy.workload.service_account))
        return PushContext(store, tuple(p.workload for p in self.pods.values()), tuple(proxies),
                           logs, identities, self.ca.root_pem if self.ca else "",
                           self.pilot_env, self.mesh_config, self.outside)

    def access_log_path(self, proxy_id: str) -> Path:
        """Where a proxy writes its access log: `<state>/logs/<pod>.<ns>.access.log`."""
        return self.state.logs / f"{proxy_id.split('~')[2]}.access.log"

    def _with_pilot_env(self, resource: Resource, profile: str) -> Resource:
        """istiod's Deployment lists its feature flags in its container env, as istioctl
        writes them, and names the profile, so a lab (and the IstioOperator kubectl shows)
        can read what Istio was installed with."""
        if resource.kind != "Deployment" or resource.name != "istiod":
            return resource
        body = json.loads(json.dumps(resource.body))
        body["metadata"].setdefault("annotations", {})[PROFILE_ANNOTATION] = profile
        if self.pilot_env:
            container = body["spec"]["template"]["spec"]["containers"][0]
            container["env"] = [{"name": k, "value": v}
                                for k, v in sorted(self.pilot_env.items())]
        return Resource(resource.kind, resource.name, resource.namespace, body, resource.source)

    def rotate_certificates(self) -> None:
        """Issue every workload a new certificate now and push it (as a CA renewal does)."""
        with self.lock:
            if self.ca is not None:
                self.ca.rotate()
                self._repush()

    def _repush(self) -> None:
        ctx = self._context(self.store)
        self.ads.push([build_snapshot(p, ctx) for p in ctx.proxies])

    def _renew_certificates(self) -> None:
        """Push renewed certificates when the earliest one reaches half its life."""
        while not self._stopping.wait(30):
            if self.ca is not None and time.time() >= self.ca.next_renewal():
                with self.lock:
                    self._repush()

    # --- pods ------------------------------------------------------------------------------
    def _desired_pods(self, store: ConfigStore) -> dict[str, list[tuple[str, str, Resource]]]:
        out: dict[str, list[tuple[str, str, Resource]]] = {}
        for d in store.list("Deployment"):
            out.setdefault(d.namespace, []).append((d.name, template_hash(d), d))
        return out

    def _plan_new_pods(self, store: ConfigStore, wanted: dict, keep: dict) -> list[Pod]:
        planned = []
        for ns, deployments in wanted.items():
            for name, thash, d in deployments:
                have = sum(1 for p in keep.values() if p.namespace == ns and p.deployment == name)
                for _ in range(max(int(d.spec.get("replicas", 1)) - have, 0)):
                    planned.append(self._plan_pod(store, d, thash))
        return planned

    def _plan_pod(self, store: ConfigStore, d: Resource, thash: str) -> Pod:
        template = d.spec.get("template") or {}
        meta, spec = template.get("metadata") or {}, template.get("spec") or {}
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        containers = list(spec.get("containers") or [])
        # `istioctl kube-inject` output already holds the sidecar: the mesh runs its own.
        pre_injected = STATUS in (meta.get("annotations") or {})
        if pre_injected:
            added, _ = injected_names(meta.get("annotations") or {})
            containers = [c for c in containers if c.get("name") not in added]
        suffix = "".join(random.choice(NAME_CHARS) for _ in range(5))
        # The API server's generateName: the base is cut to 58 characters before the 5 random
        # ones, so a pod name (a file name here) stays a DNS label however long the Deployment's.
        name = f"{d.name}-{thash}-"[:58] + suffix
        images = " ".join(str(c.get("image", "")) for c in containers)
        role = ("gateway" if GATEWAY_IMAGE in images else
                "control-plane" if PILOT_IMAGE in images else "app")
        ns_labels = store.namespace_labels(d.namespace)
        annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
        inject = role == "app" and (pre_injected or injected(ns_labels, labels, annotations))
        port_names: dict[str, int] = {}
        ports: dict[int, int] = {}
        bind: dict[int, int] = {}
        for c in containers:
            for p in c.get("ports") or []:
                cport = int(p["containerPort"])
                if p.get("name"):
                    port_names[str(p["name"])] = cport
                if role in ("control-plane", "gateway"):
                    continue  # istiod is meshd; gateway ports follow their Service
                ports[cport] = self.ports.allocate()
                bind[cport] = self.ports.allocate() if inject else ports[cport]
        workload = Workload(name, d.namespace, labels,
                            str(spec.get("serviceAccountName") or "default"), inject, ports,
                            port_names, declared_ports=tuple(sorted(ports)),
                            annotations=annotations)
        pod = Pod(name, d.namespace, d.name, thash, role, workload, containers, bind_ports=bind,
                  volumes={str(v["name"]): v for v in spec.get("volumes") or []})
        if inject or role == "gateway":
            kind = "sidecar" if inject else "router"
            proxy_id = node_id(kind, name, d.namespace)
            pod.admin_socket = str(self.state.admin_socket(next(self._admin_serials)))
            pod.proxy = Proxy(proxy_id, kind, d.namespace, workload,
                              outbound_port=self.ports.allocate() if inject else 0,
                              app_ports=dict(bind) if inject else {})
        return pod

    def _sync_gateway_ports(self, store: ConfigStore) -> None:
        """Gateway workload ports follow the gateway Service's node ports (80 -> 8080 -> P).

        A port no Service port targets (a Gateway server on it, or one the container
        declares) gets a private loopback port, reached only from the mesh, as a pod port
        is; one that no longer needs it gives it back."""
        for pod in list(self.pods.values()):
            if pod.role != "gateway" or pod.proxy is None:
                continue
            node_ports: dict[int, list[int]] = {}
            for svc in store.list("Service", pod.namespace):
                if not selector_matches(dict(svc.spec.get("selector") or {}), pod.workload.labels):
                    continue
                for p in svc.spec.get("ports") or []:
                    target = p.get("targetPort", p["port"])
                    if isinstance(target, str):
                        target = pod.workload.port_names.get(target, p["port"])
                    if p.get("nodePort"):
                        node_ports.setdefault(int(target), []).append(int(p["nodePort"]))
            wanted = {int(p["containerPort"]) for c in pod.containers for p in c.get("ports") or []}
            for gw in store.list("Gateway"):
                if selector_matches(dict(gw.spec.get("selector") or {}), pod.workload.labels):
                    wanted |= {self._gateway_target(store, pod, int(server["port"]["number"]))
                               for server in gw.spec.get("servers") or []}
            ports: dict[int, int] = {}
            aliases: dict[int, tuple[int, ...]] = {}
            for target in sorted(wanted | set(node_ports)):
                if target in node_ports:
                    ports[target], *rest = node_ports[target]
                    if rest:
                        aliases[target] = tuple(rest)
                else:
                    if target not in pod.private_ports:
                        pod.private_ports[target] = self.ports.allocate()
                    ports[target] = pod.private_ports[target]
            for target, private in list(pod.private_ports.items()):
                if ports.get(target) != private:
                    self.ports.release(private)
                    del pod.private_ports[target]
            if ports != pod.workload.ports or aliases != pod.workload.port_aliases:
                workload = replace(pod.workload, ports=ports, port_aliases=aliases)
                pod.workload = workload
                pod.proxy = Proxy(pod.proxy.id, "router", pod.namespace, workload)

    def _sync_sidecar_ingress(self, store: ConfigStore) -> None:
        """A Sidecar's ingress ports (9443, 9080) become pod ports others can reach, beside
        the containerPorts; ports no Sidecar asks for any more are given back."""
        for pod in list(self.pods.values()):
            if pod.proxy is None or pod.proxy.kind != "sidecar":
                continue
            probe = PushContext(store, (pod.workload,), (pod.proxy,),
                                features=self.pilot_env, mesh_config=self.mesh_config)
            wanted = {p.number for p in ingress_ports(probe, pod.workload) or []}
            wanted -= set(pod.workload.declared_ports)
            ports = {p: local for p, local in pod.workload.ports.items()
                     if p in pod.workload.declared_ports}
            for number in sorted(wanted):
                if number not in pod.private_ports:
                    pod.private_ports[number] = self.ports.allocate()
                ports[number] = pod.private_ports[number]
            for number, private in list(pod.private_ports.items()):
                if number not in wanted:
                    self.ports.release(private)
                    del pod.private_ports[number]
            if ports != pod.workload.ports:
                pod.workload = replace(pod.workload, ports=ports)
                pod.proxy = replace(pod.proxy, workload=pod.workload)

    def _gateway_target(self, store: ConfigStore, pod: Pod, number: int) -> int:
        ctx = PushContext(store, (pod.workload,), ())
        assert pod.proxy is not None
        return ctx.gateway_target_port(pod.proxy, number)

    def _start_pods(self, pods: list[Pod], store: ConfigStore) -> None:
        total = len(pods)
        self._report("pods ready", 0, total)
        if not pods:
            return
        with ThreadPoolExecutor(max_workers=min(8, len(pods))) as pool:
            futures = [pool.submit(self._start_pod, p, store) for p in pods]
            for done, f in enumerate(as_completed(futures), start=1):
                f.result()
                self._report("pods ready", done, total)

    def _proxy_port_for(self, pod: Pod) -> int:
        if pod.proxy and pod.proxy.kind == "sidecar":
            return pod.proxy.outbound_port
        return self._kube_port(pod.namespace)

    def _start_pod(self, pod: Pod, store: ConfigStore) -> None:
        prefix = f"{pod.namespace}.{pod.name}"
        self._check_cancelled()
        if pod.proxy is not None:
            boot = bootstrap(pod.proxy.id, f"{pod.workload.labels.get('app', pod.deployment)}."
                             f"{pod.namespace}", pod.admin_socket, self.xds_socket,
                             {"NAMESPACE": pod.namespace, "LABELS": pod.workload.labels,
                              "SERVICE_ACCOUNT": pod.workload.service_account})
            path = write_bootstrap(self.state.envoy / f"{prefix}.json", boot)
            admin = pod.admin_socket
            self.supervisor.start(f"{prefix}.istio-proxy", envoy_argv(path),
                                  ready=lambda: envoy_live(admin), ready_timeout=15)
            pod.processes.append(f"{prefix}.istio-proxy")
        if pod.role != "app":
            return
        proxy_url = f"http://127.0.0.1:{self._proxy_port_for(pod)}"
        pod.app_env = {"http_proxy": proxy_url, "HTTP_PROXY": proxy_url,
                       "https_proxy": proxy_url, "HTTPS_PROXY": proxy_url, "no_proxy": "",
                       "NO_PROXY": "", "POD_NAME": pod.name, "POD_NAMESPACE": pod.namespace}
        if self.outside:  # the image's trust store holds the public CA, as public roots are
            pod.app_env.update(SSL_CERT_FILE=self.outside.roots,
                               CURL_CA_BUNDLE=self.outside.roots,
                               CURL_HOME=self.outside.curl_home)
        facts = PodFacts(pod.name, pod.namespace, pod.workload.labels,
                         pod.workload.annotations, pod.workload.service_account)
        for c in pod.containers:
            env = dict(pod.app_env)
            pod.container_env[str(c["name"])] = env_from_sources(c, facts, store)
            env.update(pod.container_env[str(c["name"])])
            mounts = mount_volumes(self.state.path, facts, pod.volumes, c, store)
            if mounts:
                env["LAB_MOUNTS"] = json.dumps(mounts)
            cports = [int(p["containerPort"]) for p in c.get("ports") or []]
            port_map = {cp: pod.bind_ports[cp] for cp in cports}
            argv = command_for(str(c["image"]), port_map=port_map, env=env,
                               args=[str(a) for a in c.get("args") or []])
            name = f"{prefix}.{c['name']}"
            self._check_cancelled()
            self.supervisor.start(name, argv, env=env,
                                  ready=listening(list(port_map.values())) if port_map else None,
                                  ready_timeout=20)
            pod.processes.append(name)

    def _stop_pod(self, pod: Pod) -> None:
        for name in pod.processes:
            self.supervisor.stop(name)
        shutil.rmtree(self.state.path / "mounts" / f"{pod.namespace}.{pod.name}",
                      ignore_errors=True)
        if pod.proxy:
            self.ads.forget(pod.proxy.id)
        if pod.admin_socket:
            Path(pod.admin_socket).unlink(missing_ok=True)
        for port in [*pod.workload.ports.values(), *pod.bind_ports.values(),
                     pod.proxy.outbound_port if pod.proxy else 0]:
            if port:
                self.ports.release(port)

    def _on_restart(self, name: str) -> None:
        """A restarted Envoy reconnects and is sent its target snapshot again by ADS."""

    # --- workloads without a sidecar -------------------------------------------------------
    def _kube_port(self, namespace: str) -> int:
        """The kube-proxy stand-in's listener for one namespace (its short names resolve
        there); the next push configures it."""
        assert self.kube_proxy is not None
        if namespace not in self.kube_proxy.kube_ports:
            ports = dict(self.kube_proxy.kube_ports)
            ports[namespace] = self.ports.allocate()
            self.kube_proxy = Proxy(self.kube_proxy.id, "kube", "kube-system", kube_ports=ports)
        return self.kube_proxy.kube_ports[namespace]

    def _start_kube_proxy(self) -> None:
        """Start the kube-proxy stand-in, with fresh ports if another program took one."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start_kube_proxy_once()
                return
            except (ProcessStartError, PushError) as exc:
                self.supervisor.stop("kube-system.kube-proxy")
                if self.kube_proxy is not None:
                    self.ads.forget(self.kube_proxy.id)
                    for port in self.kube_proxy.kube_ports.values():
                        self.ports.release(port)
                self.kube_proxy, self.kube_admin_socket = None, ""
                if not is_address_in_use(exc) or attempt == PORT_ATTEMPTS:
                    raise
                log.warning("kube-proxy lost a port to another program; starting it again")

    def _start_kube_proxy_once(self) -> None:
        self.kube_proxy = Proxy(node_id("kube", "kube-proxy", "kube-system"), "kube",
                                "kube-system", kube_ports={"default": self.ports.allocate()})
        self.kube_admin_socket = str(self.state.admin_socket(next(self._admin_serials)))
        ctx = self._context(self.store)
        self.ads.set_target(build_snapshot(self.kube_proxy, ctx))
        path = write_bootstrap(self.state.envoy / "kube-proxy.json",
                               bootstrap(self.kube_proxy.id, "kube-proxy", self.kube_admin_socket,
                                         self.xds_socket, {}))
        admin = self.kube_admin_socket
        self.supervisor.start("kube-system.kube-proxy", envoy_argv(path),
                              ready=lambda: envoy_live(admin), ready_timeout=15)
        self.ads.wait_synced([self.kube_proxy.id], timeout=10, require_connected=True)

    # --- views -----------------------------------------------------------------------------
    def find_pod(self, namespace: str, name: str) -> Pod:
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise NotFoundError(f'Error from server (NotFound): pods "{name}" not found')
        return pod

    def snapshot_of(self, pod: Pod) -> Snapshot | None:
        return self.ads.target(pod.proxy.id) if pod.proxy else None


KUBE_WORDS = {
    "Namespace": "namespace", "Service": "service", "Deployment": "deployment.apps",
    "ServiceAccount": "serviceaccount", "Secret": "secret", "ConfigMap": "configmap",
    "Gateway": "gateway.networking.istio.io",
    "VirtualService": "virtualservice.networking.istio.io",
    "DestinationRule": "destinationrule.networking.istio.io",
    "Sidecar": "sidecar.networking.istio.io",
    "ServiceEntry": "serviceentry.networking.istio.io",
    "PeerAuthentication": "peerauthentication.security.istio.io",
    "Telemetry": "telemetry.telemetry.istio.io",
    "AuthorizationPolicy": "authorizationpolicy.security.istio.io",
    "RequestAuthentication": "requestauthentication.security.istio.io",
}


def kube_word(kind: str) -> str:
    """kubectl's `service` / `deployment.apps` / `virtualservice.networking.istio.io`."""
    return KUBE_WORDS.get(kind, kind.lower())


def plural(kind: str) -> str:
    word = kind.lower()
    return word + ("es" if word.endswith("s") else "s")
