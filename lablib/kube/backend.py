"""The kubernetes backend: the same labs on a real cluster running real Istio.

`KubernetesBackend()` talks to the cluster of the current kubeconfig context (or, inside a
pod, the cluster it runs in) through the `kubernetes` client. `apply` validates locally as
the local mesh does, server-side applies with field manager `lablib`, then waits: every
Deployment it touched is rolled out and available, and every Istio resource it touched has
reached the proxies. That last wait uses `istioctl x wait --for=distribution` when istioctl is
on PATH and istiod tracks distribution (the kit installs Istio with that switched on); else it
reads the affected proxies' config dumps until the route or cluster Istio built from the
resource shows up (or goes away), then until istiod reports every proxy in sync. Both waits
are bounded; a late proxy is reported in a printed line, not an error.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as kube_config
from kubernetes import stream as kube_stream
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from ..backend import Backend, Source
from ..config.analyze import analyze, errors
from ..config.loader import load
from ..config.model import Resource
from ..config.schema import KINDS as SCHEMA_KINDS
from ..config.store import ConfigStore
from ..errors import BackendError, ConfigError, Diagnostic, NotFoundError
from .forward import PortForward
from .istioctl import (
    Istioctl,
    install_lines,
    missing_message,
    proxy_status_rows,
    syncz_rows,
    verify_rows,
)
from .namespaces import SYSTEM_NAMESPACES, NamespacePrefix, PrefixError
from .status import (
    MARKED_KINDS,
    config_marker,
    exit_status,
    kind_of,
    kube_word,
    pod_problem,
    rollout_status,
)

__all__ = ["FIELD_MANAGER", "KubernetesBackend"]

FIELD_MANAGER = "lablib"
ISTIO_NAMESPACE = "istio-system"
DEMO_DEPLOYMENTS = ("istiod", "istio-ingressgateway", "istio-egressgateway")
INGRESS_SERVICE = "istio-ingressgateway"
# Istio's addons (Services in istio-system) and the path of each UI's front page.
ADDON_PATHS = {"prometheus": "", "grafana": "", "kiali": "/kiali"}
ADDONS_URL = "https://raw.githubusercontent.com/istio/istio/release-1.20/samples/addons"
# `istioctl x wait` needs istiod to track distribution (off by default, gone after 1.22).
TRACKING = "values.pilot.env.PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING=true"
REFUSED = "LAB0301"  # the API server (or Istio's validating webhook) refused the manifest
DEFAULT_NAMESPACE = "default"
# Kinds holding user data: listed for analysis only where it looks (not the whole cluster).
PAYLOAD_KINDS = frozenset({"Secret", "ConfigMap"})
FIX_UNREACHABLE = ("Is the cluster running? Check with `kubectl cluster-info`; to create a "
                   "local one run `make cluster` (kind), then `make istio`")

T = TypeVar("T")


def say(line: str) -> None:
    """Tell the learner what the backend chose or is waiting for, in the cell's output."""
    print(line, flush=True)


def _discovery_cache(server: str) -> str:
    """A per-user file for the API discovery cache (the client's default is shared /tmp)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "istio-lab-kit" / "kube-discovery"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{hashlib.sha256(server.encode()).hexdigest()[:16]}.json")


@dataclass
class Change:
    """One resource apply or delete touched, in cluster names."""

    kind: str
    group: str
    name: str
    namespace: str | None
    word: str  # created | configured | unchanged | deleted
    body: dict[str, Any]

    @property
    def is_istio(self) -> bool:
        return self.group.endswith(".istio.io")


def _reaching(method: Callable[..., T]) -> Callable[..., T]:
    """Turn "the API server cannot be reached" into a BackendError that says what to do."""

    @functools.wraps(method)
    def wrapper(self: KubernetesBackend, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
            raise BackendError(self._unreachable(exc)) from None
        except ApiException as exc:
            if exc.status in (401, 403):
                raise BackendError(self._forbidden(exc)) from None
            if exc.status == 0:  # the streaming calls wrap connection errors this way
                raise BackendError(self._unreachable(exc.reason)) from None
            raise BackendError(f"{self._where()} answered {exc.status} {exc.reason}: "
                               f"{_api_message(exc)}") from None

    return wrapper


class KubernetesBackend(Backend):
    """A real cluster with Istio, through the current kubeconfig context or in-cluster config."""

    name = "kubernetes"
    # Bounds on each wait; tests shorten them.
    poll_interval = 1.0
    request_timeout = 10.0
    rollout_timeout = 300.0
    config_timeout = 30.0
    namespace_timeout = 180.0

    def __init__(self, context: str | None = None, config_file: str | None = None,
                 prefix: str | None = None) -> None:
        try:
            self.prefix = NamespacePrefix(os.environ.get("LAB_NAMESPACE_PREFIX")
                                          if prefix is None else prefix)
        except PrefixError as exc:
            raise BackendError(str(exc)) from None
        self.configuration, self.context, self.config_file = _load_config(context, config_file)
        self.server = str(self.configuration.host)
        self.api = k8s.ApiClient(self.configuration)
        self._check_reachable()
        try:
            self.dyn = DynamicClient(self.api, cache_file=_discovery_cache(self.server))
        except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
            raise BackendError(self._unreachable(exc)) from None
        self.istioctl = Istioctl(config_file, context)
        self._forwards: list[PortForward] = []
        self._ingress: dict[str, tuple[str, int]] = {}
        self._addons: dict[str, str] = {}

    # --- connection --------------------------------------------------------------------------
    def _where(self) -> str:
        return f"the Kubernetes API server at {self.server} (kubeconfig context \"{self.context}\")"

    def _unreachable(self, exc: object) -> str:
        reason = str(getattr(exc, "reason", None) or exc)
        return f"cannot reach {self._where()}: {reason}. {FIX_UNREACHABLE}"

    def _forbidden(self, exc: ApiException) -> str:
        return (f"{self._where()} refused the request ({exc.status} {exc.reason}): "
                f"{_api_message(exc)}. Check your credentials and rights "
                "(`kubectl auth can-i --list`); a classroom needs read access to the cluster "
                "and full access to your own namespaces (docs/cluster.md)")

    def _check_reachable(self) -> None:
        try:
            # Raw: some servers leave out fields the client's strict model insists on.
            response: Any = k8s.VersionApi(self.api).get_code(
                _request_timeout=self.request_timeout, _preload_content=False)
            response.read()
            response.release_conn()
        except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
            raise BackendError(self._unreachable(exc)) from None
        except ApiException as exc:
            if exc.status in (401, 403):
                raise BackendError(self._forbidden(exc)) from None
            raise BackendError(self._unreachable(exc)) from None

    def close(self) -> None:
        """Stop the port-forwards this backend started; the cluster keeps running."""
        for forward in self._forwards:
            forward.close()
        self._forwards.clear()
        self._ingress.clear()
        self._addons.clear()
        self.api.close()

    # --- API resources -----------------------------------------------------------------------
    def _resource(self, api_version: str, kind: str) -> Any:
        """The API resource serving `kind` in `api_version`."""
        try:
            return self.dyn.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            hint = (" Is Istio installed? Run mesh.install() or `make istio`."
                    if ".istio.io/" in api_version else "")
            raise BackendError(f'the cluster does not serve kind "{kind}" in version '
                               f'"{api_version}".{hint}') from None

    def _resolve(self, word: str) -> Any:
        """The API resource a `kubectl get WORD` would list, in its preferred version."""
        kind, group = kind_of(word)
        if group is not None:
            found = (self.dyn.resources.search(prefix="api", api_version="v1", kind=kind)
                     if group == "" else self.dyn.resources.search(group=group, kind=kind))
            if found:
                return next((r for r in found if r.preferred), found[0])
            raise BackendError(f'error: the server doesn\'t have a resource type "{word}"'
                               + (" (is Istio installed?)" if group.endswith("istio.io") else ""))
        # Anything else the cluster serves, by plural, singular, short name or kind.
        lowered = word.lower()
        for resources in self.dyn.resources:
            for candidate in resources:
                names = {getattr(candidate, "name", None), candidate.kind.lower(),
                         getattr(candidate, "singular_name", None),
                         *(getattr(candidate, "short_names", None) or [])}
                if lowered in names and getattr(candidate, "verbs", None):
                    return candidate
        raise BackendError(f'error: the server doesn\'t have a resource type "{word}"')

    def _read(self, resource: Any, name: str, namespace: str | None) -> dict[str, Any] | None:
        """One object as a dict, or None if it does not exist."""
        try:
            return dict(self.dyn.get(resource, name=name, namespace=namespace).to_dict())
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _list(self, resource: Any, namespace: str | None = None,
              label_selector: str | None = None) -> list[dict[str, Any]]:
        result = self.dyn.get(resource, namespace=namespace, label_selector=label_selector)
        return list(result.to_dict().get("items") or [])

    # --- resources ---------------------------------------------------------------------------
    @_reaching
    def apply(self, source: Source, namespace: str | None = None) -> list[str]:
        """`kubectl apply --server-side`, then wait for rollouts and for the proxies."""
        resources = load(source, namespace=namespace, verb="apply")
        self._analyze(resources)
        changes, lines = [], []
        # Namespaces first, as `kubectl apply -f folder/` would need them first.
        for r in sorted(resources, key=lambda r: r.kind != "Namespace"):
            change = self._apply_one(r)
            changes.append(change)
            lines.append(f"{kube_word(change.kind, change.group)}/{r.name} {change.word}")
        self._await_rollouts(changes)
        self._await_proxies(changes)
        return lines

    def _apply_one(self, r: Resource) -> Change:
        resource = self._resource(r.api_version, r.kind)
        body = self.prefix.manifest_to_cluster(_applicable(r.body))
        metadata = body.setdefault("metadata", {})
        namespace = None
        if resource.namespaced:
            namespace = self.prefix.to_cluster(r.namespace or DEFAULT_NAMESPACE)
            metadata["namespace"] = namespace
            self._ensure_own_default(namespace)
        else:
            metadata.pop("namespace", None)
        name = str(metadata["name"])
        before = self._read(resource, name, namespace)
        try:
            after = self.dyn.server_side_apply(resource, body=body, name=name,
                                               namespace=namespace,
                                               field_manager=FIELD_MANAGER,
                                               force_conflicts=True).to_dict()
        except ApiException as exc:
            if exc.status in (400, 404, 409, 422):
                raise ConfigError([_refused(r, exc)]) from None
            raise
        if before is None:
            word = "created"
        elif _version(before) == _version(after):
            word = "unchanged"
        else:
            word = "configured"
        return Change(r.kind, resource.group or "", name, namespace, word, dict(after))

    def _ensure_own_default(self, namespace: str) -> None:
        """A learner's `default` (`alice-default`) appears on first use, as `default` always
        exists on a cluster."""
        if not self.prefix or namespace != self.prefix.to_cluster(DEFAULT_NAMESPACE):
            return
        resource = self._resource("v1", "Namespace")
        if self._read(resource, namespace, None) is None:
            self.dyn.server_side_apply(resource, body={
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                name=namespace, field_manager=FIELD_MANAGER, force_conflicts=True)

    def _analyze(self, incoming: list[Resource]) -> None:
        """The local mesh's analysis (istioctl analyze's checks) over what the cluster holds
        plus `incoming`: findings this apply would introduce refuse it, as locally."""
        current = self._analysis_store({r.namespace for r in incoming if r.namespace})
        if current is None:
            return
        known = {str(d) for d in analyze(current)}
        candidate = current.with_applied(incoming)
        new = errors([d for d in analyze(candidate) if str(d) not in known])
        if new:
            raise ConfigError(new)

    def _analysis_store(self, namespaces: set[str]) -> ConfigStore | None:
        """The resources of the kinds the analysis knows, as the labs see them (Secrets and
        ConfigMaps only from `namespaces` and istio-system); None if this user may not list
        them (the apply then goes ahead on the schema checks alone)."""
        items: list[Resource] = []
        for kind, versions in SCHEMA_KINDS.items():
            group = versions[0].rpartition("/")[0]
            try:
                resource = self._resolve(f"{kind}.{group}" if group else kind)
            except BackendError:
                continue  # not served here (Istio's kinds before Istio is installed)
            scopes: Iterable[str | None] = (
                sorted(namespaces | {ISTIO_NAMESPACE}) if kind in PAYLOAD_KINDS else [None])
            try:
                bodies = [b for scope in scopes for b in self._visible(resource, scope)]
            except ApiException:
                return None
            for body in bodies:
                meta = body["metadata"]
                items.append(Resource(kind, str(meta["name"]), str(meta.get("namespace", "")),
                                      body, "<cluster>"))
        store = ConfigStore(items)
        if not store.has_namespace(DEFAULT_NAMESPACE):  # a learner's own appears on first use
            store = store.with_applied(load({"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": DEFAULT_NAMESPACE}}))
        return store

    def _visible(self, resource: Any, namespace: str | None = None,
                 label_selector: str | None = None) -> list[dict[str, Any]]:
        """Objects as the labs see them (prefix removed, other learners' hidden)."""
        out = []
        cluster_ns = self.prefix.to_cluster(namespace) if namespace else None
        for item in self._list(resource, cluster_ns, label_selector):
            shown = self._shown(item)
            if shown is not None:
                out.append(shown)
        return out

    def _shown(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """One object as `kubectl get -o json` prints it, in the labs' names; None if it
        belongs to another learner."""
        meta = item.get("metadata") or {}
        owner = meta.get("name") if item.get("kind") == "Namespace" else meta.get("namespace")
        if owner and not self.prefix.is_ours(str(owner)):
            return None
        item = dict(item)
        item["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
        return self.prefix.manifest_to_lab(item)

    @_reaching
    def get(self, kind: str, name: str | None = None, namespace: str | None = None,
            selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        resource = self._resolve(kind)
        label_selector = ",".join(f"{k}={v}" for k, v in selector.items()) if selector else None
        if name is None or (namespace is None and resource.namespaced):
            # Without a namespace the local mesh looks in all of them; so does this.
            items = self._visible(resource, namespace if resource.namespaced else None,
                                  label_selector)
            if name is None:
                return items
            found = [i for i in items if i["metadata"]["name"] == name]
            if not found:
                raise NotFoundError(f'Error from server (NotFound): {_plural(resource)} '
                                    f'"{name}" not found')
            return found
        cluster_name = self.prefix.to_cluster(name) if resource.kind == "Namespace" else name
        cluster_ns = (self.prefix.to_cluster(namespace)
                      if resource.namespaced and namespace else None)
        item = self._read(resource, cluster_name, cluster_ns)
        shown = self._shown(item) if item is not None else None
        if shown is None:
            raise NotFoundError(f'Error from server (NotFound): {_plural(resource)} '
                                f'"{name}" not found')
        labels = shown["metadata"].get("labels") or {}
        if selector and any(labels.get(k) != v for k, v in selector.items()):
            return []
        return [shown]

    @_reaching
    def delete(self, source: Source, namespace: str | None = None,
               ignore_missing: bool = True) -> list[str]:
        """`kubectl delete -f`; a deleted namespace is waited for until it is gone."""
        resources = load(source, namespace=namespace, check_fields=False, verb="delete")
        lines, changes = [], []
        for r in resources:
            try:
                resource = self._resource(r.api_version, r.kind)
            except BackendError:
                if ignore_missing:
                    continue
                raise
            cluster_ns = (self.prefix.to_cluster(r.namespace or DEFAULT_NAMESPACE)
                          if resource.namespaced else None)
            name = self.prefix.to_cluster(r.name) if r.kind == "Namespace" else r.name
            # What it was, for the proxies to wait on: the manifest given may be just a name.
            before = self._read(resource, name, cluster_ns) if r.kind in MARKED_KINDS else None
            try:
                self.dyn.delete(resource, name=name, namespace=cluster_ns)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                if ignore_missing:
                    continue
                raise NotFoundError(f'Error from server (NotFound): {_plural(resource)} '
                                    f'"{r.name}" not found') from None
            lines.append(f'{kube_word(r.kind, resource.group or "")} "{r.name}" deleted')
            changes.append(Change(r.kind, resource.group or "", name, cluster_ns, "deleted",
                                  before or {}))
        self._await_namespaces_gone([c.name for c in changes if c.kind == "Namespace"])
        self._await_proxies(changes)
        return lines

    @_reaching
    def wait_ready(self, namespace: str, timeout: float = 120.0) -> None:
        """`kubectl wait --for=condition=ready pod --all`, and no pod still terminating."""
        deadline = time.monotonic() + timeout
        while True:
            pods = self.get("pods", namespace=namespace)
            problems = {p["metadata"]["name"]: pod_problem(p) for p in pods}
            waiting = {name: why for name, why in problems.items() if why}
            if pods and not waiting:
                return
            if time.monotonic() > deadline:
                detail = ("no pods" if not pods else
                          "; ".join(f"{n}: {w}" for n, w in sorted(waiting.items())))
                raise BackendError(f"pods in {namespace} not ready after {timeout:.0f}s "
                                   f"({detail}); see `kubectl -n "
                                   f"{self.prefix.to_cluster(namespace)} describe pods`")
            time.sleep(self.poll_interval)

    def pod_name(self, selector: dict[str, str], namespace: str) -> str:
        """The first Running pod with these labels (a terminating one only if nothing else)."""
        pods = self.get("pods", namespace=namespace, selector=selector)
        if not pods:
            raise BackendError(f"no pod with labels {selector} in namespace {namespace}")
        pods.sort(key=lambda p: (pod_problem(p) is not None, p["metadata"]["name"]))
        return str(pods[0]["metadata"]["name"])

    # --- waiting -----------------------------------------------------------------------------
    def _await_rollouts(self, changes: Iterable[Change]) -> None:
        """Each Deployment applied is rolled out and available (`kubectl rollout status`)."""
        deployments = [c for c in changes if c.kind == "Deployment"]
        deadline = time.monotonic() + self.rollout_timeout
        resource = self._resource("apps/v1", "Deployment") if deployments else None
        for change in deployments:
            while True:
                current = self._read(resource, change.name, change.namespace) or {}
                done, why = rollout_status(current)
                if done:
                    break
                if time.monotonic() > deadline:
                    raise BackendError(self._rollout_failure(change, current, why))
                time.sleep(self.poll_interval)

    def _rollout_failure(self, change: Change, deployment: dict[str, Any], why: str) -> str:
        ns = str(change.namespace)
        labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        pods = self._list(self._resource("v1", "Pod"), ns,
                          ",".join(f"{k}={v}" for k, v in labels.items()) or None)
        problems = [f"{p['metadata']['name']}: {pod_problem(p)}" for p in pods if pod_problem(p)]
        detail = f" (pods: {'; '.join(problems)})" if problems else ""
        return (f'deployment "{change.name}" in {ns} is not available after '
                f"{self.rollout_timeout:.0f}s: {why}{detail}. See `kubectl -n {ns} describe "
                f"deployment {change.name}` and `kubectl -n {ns} get pods`")

    def _await_namespaces_gone(self, names: Sequence[str]) -> None:
        if not names:
            return
        resource = self._resource("v1", "Namespace")
        deadline = time.monotonic() + self.namespace_timeout
        for name in names:
            while self._read(resource, name, None) is not None:
                if time.monotonic() > deadline:
                    raise BackendError(
                        f'namespace "{name}" is still terminating after '
                        f"{self.namespace_timeout:.0f}s; see what holds it with `kubectl get "
                        f"namespace {name} -o yaml` (status.conditions, finalizers)")
                time.sleep(self.poll_interval)

    def _await_proxies(self, changes: Iterable[Change]) -> None:
        """Istio config the changes touched has reached the proxies (bounded, see module)."""
        istio = [c for c in changes if c.is_istio and c.word != "unchanged"]
        if not istio:
            return
        if self.istioctl.path and self._wait_with_istioctl(istio):
            return
        self._wait_by_config_dump(istio)

    def _wait_with_istioctl(self, changes: list[Change]) -> bool:
        """`istioctl x wait` for each; False if this istioctl/istiod cannot do it."""
        for c in changes:
            args = ["x", "wait", f"--for={'delete' if c.word == 'deleted' else 'distribution'}",
                    "--timeout", f"{max(1, round(self.config_timeout))}s", c.kind.lower(),
                    f"{c.name}.{c.namespace}"]
            done = self.istioctl.run(args, timeout=self.config_timeout + 30)
            if done.returncode == 0:
                continue
            output = (done.stdout + done.stderr).strip()
            if "timeout" in output.lower() or "timed out" in output.lower():
                say(f"note: {c.kind} {c.name} not yet distributed to every proxy after "
                    f"{self.config_timeout:.0f}s; carrying on")
                continue
            return False  # tracking disabled, or no `x wait` in this istioctl
        return True

    def _wait_by_config_dump(self, changes: list[Change]) -> None:
        """Poll the affected proxies' config_dump for the resources' markers, then istiod's
        sync status, until both agree or config_timeout passes."""
        deadline = time.monotonic() + self.config_timeout
        wanted: dict[tuple[str, str], list[tuple[str, bool]]] = {}
        for c in changes:
            if c.kind not in MARKED_KINDS or not c.namespace:
                continue
            marker = config_marker(c.kind, c.namespace, c.name)
            for pod in self._affected_pods(c):
                wanted.setdefault(pod, []).append((marker, c.word != "deleted"))
        with ThreadPoolExecutor(max_workers=8) as pool:
            while wanted:
                pods = list(wanted)
                dumps = pool.map(lambda p: self._config_dump_or_none(*p), pods)
                for pod, dump in zip(pods, dumps, strict=True):
                    if dump is not None and all((m in dump) == present
                                                for m, present in wanted[pod]):
                        del wanted[pod]
                if not wanted or time.monotonic() > deadline:
                    break
                time.sleep(self.poll_interval)
        for name, ns in wanted:
            say(f"note: the config of {name}.{ns} did not show the change after "
                f"{self.config_timeout:.0f}s; carrying on")
        self._await_synced(deadline)

    def _config_dump_or_none(self, pod: str, namespace: str) -> str | None:
        try:
            done = self._exec(pod, namespace, "istio-proxy",
                              ["pilot-agent", "request", "GET", "config_dump"], 30.0)
        except (ApiException, BackendError, OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    def _affected_pods(self, change: Change) -> list[tuple[str, str]]:
        """Pods whose proxies build config from this resource: its gateways' pods for a
        VirtualService bound to gateways, else the sidecars of its namespace (and, for a
        DestinationRule, the ingress gateway too)."""
        spec = change.body.get("spec") or {}
        ns = str(change.namespace)
        gateways = [str(g) for g in spec.get("gateways") or []]
        pods: list[tuple[str, str]] = []
        if change.kind == "VirtualService" and any(g != "mesh" for g in gateways):
            for ref in gateways:
                if ref != "mesh":
                    pods += self._gateway_pods(ref, ns)
        if change.kind == "DestinationRule":
            pods += self._proxy_pods(ISTIO_NAMESPACE, "istio=ingressgateway")
        if change.kind == "DestinationRule" or not gateways or "mesh" in gateways:
            pods += self._proxy_pods(ns)
        return list(dict.fromkeys(pods))

    def _gateway_pods(self, ref: str, namespace: str) -> list[tuple[str, str]]:
        gw_ns, _, name = ref.rpartition("/")
        gw_ns = gw_ns or namespace
        gateway = self._read(self._resolve("gateway.networking.istio.io"), name, gw_ns)
        selector = ((gateway or {}).get("spec") or {}).get("selector") or {}
        if not selector:
            return []
        labels = ",".join(f"{k}={v}" for k, v in selector.items())
        return self._proxy_pods(ISTIO_NAMESPACE, labels) + (
            self._proxy_pods(gw_ns, labels) if gw_ns != ISTIO_NAMESPACE else [])

    def _proxy_pods(self, namespace: str, labels: str | None = None) -> list[tuple[str, str]]:
        """Ready pods with an istio-proxy container, in cluster names."""
        try:
            pods = self._list(self._resource("v1", "Pod"), namespace, labels)
        except ApiException:
            return []
        return [(p["metadata"]["name"], namespace) for p in pods
                if pod_problem(p) is None
                and any(c["name"] == "istio-proxy" for c in p["spec"]["containers"])]

    def _await_synced(self, deadline: float) -> None:
        """Until istiod says every proxy ACKed what it sent (after its push debounce)."""
        time.sleep(min(self.poll_interval, 1.0))
        while time.monotonic() < deadline:
            rows = self._syncz()
            if rows is None or all(not str(r[t]).startswith("STALE")
                                   for r in rows for t in ("CDS", "LDS", "RDS", "EDS")):
                return
            time.sleep(self.poll_interval)
        say(f"note: istiod still reports proxies out of sync after {self.config_timeout:.0f}s; "
            "carrying on")

    def _syncz(self) -> list[dict[str, Any]] | None:
        """istiod's view of every proxy (what `istioctl proxy-status` shows), or None."""
        istiod = self._proxyless_pods(ISTIO_NAMESPACE, "app=istiod")
        if not istiod:
            return None
        try:
            done = self._exec(istiod[0], ISTIO_NAMESPACE, "discovery",
                              ["pilot-discovery", "request", "GET", "/debug/syncz"], 30.0)
            return syncz_rows(done.stdout) if done.returncode == 0 else None
        except (ApiException, BackendError, OSError, ValueError, subprocess.TimeoutExpired):
            return None

    def _proxyless_pods(self, namespace: str, labels: str) -> list[str]:
        try:
            pods = self._list(self._resource("v1", "Pod"), namespace, labels)
        except ApiException:
            return []
        return [p["metadata"]["name"] for p in pods if pod_problem(p) is None]

    # --- Istio itself ------------------------------------------------------------------------
    @_reaching
    def install(self, profile: str = "demo", values: dict[str, str] | None = None) -> list[str]:
        """`istioctl install --set profile=demo -y`, with distribution tracking on for
        `istioctl x wait`, and each of `values` as one more `--set key=value`."""
        if self.prefix:
            if self._istio_installed():
                return [f"Istio is already installed on this shared cluster; with "
                        f"LAB_NAMESPACE_PREFIX={self.prefix.prefix} it is left as it is"]
            raise BackendError("Istio is not installed on this shared cluster, and with "
                               "LAB_NAMESPACE_PREFIX set the labs do not install it: ask whoever "
                               "runs the cluster to run `make istio`")
        args = ["install", "--set", f"profile={profile}", "-y", "--set", TRACKING]
        for key, value in (values or {}).items():
            args += ["--set", f"{key}={value}"]
        done = self.istioctl.run(args, timeout=900, needed_for="Installing Istio")
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise BackendError(f"`istioctl {' '.join(args)}` failed (exit {done.returncode}):"
                               f"\n{tail}")
        return install_lines(done.stdout + "\n" + done.stderr)

    def _istio_installed(self) -> bool:
        return self._read(self._resource("apps/v1", "Deployment"), "istiod",
                          ISTIO_NAMESPACE) is not None

    @_reaching
    def verify_install(self) -> list[dict[str, Any]]:
        """`istioctl verify-install` as rows; without istioctl, the demo Deployments' state."""
        if self.istioctl.path:
            done = self.istioctl.run(["verify-install"], timeout=120)
            rows = verify_rows(done.stdout + "\n" + done.stderr)
            if rows:
                return rows
        rows = []
        deployments = self._resource("apps/v1", "Deployment")
        for name in DEMO_DEPLOYMENTS:
            found = self._read(deployments, name, ISTIO_NAMESPACE)
            ok, why = rollout_status(found) if found else (False, "not found")
            rows.append({"component": name, "kind": "Deployment",
                         "name": f"{name}.{ISTIO_NAMESPACE}", "ok": ok,
                         "detail": "available" if ok else why})
        return rows

    @_reaching
    def uninstall(self) -> None:
        """`istioctl uninstall --purge -y`, the lab namespaces and istio-system deleted.

        With a namespace prefix only this learner's namespaces go: Istio is shared."""
        namespaces = self._resource("v1", "Namespace")
        if self.prefix:
            mine = [n["metadata"]["name"] for n in self._list(namespaces)
                    if self.prefix.to_lab(n["metadata"]["name"]) not in (None, *SYSTEM_NAMESPACES)]
            for name in mine:
                self.dyn.delete(namespaces, name=name)
            self._await_namespaces_gone(mine)
            say(f"deleted {len(mine)} namespaces of prefix {self.prefix.prefix}; Istio stays, "
                "as the class shares it")
            return
        if self.istioctl.path is None:
            raise BackendError(missing_message("Uninstalling Istio"))
        labs = [n["metadata"]["name"] for n in self._list(namespaces) if _applied_by_lablib(n)
                and n["metadata"]["name"] not in (*SYSTEM_NAMESPACES, DEFAULT_NAMESPACE)]
        for name in labs:
            self.dyn.delete(namespaces, name=name)
        self._await_namespaces_gone(labs)
        done = self.istioctl.run(["uninstall", "--purge", "-y"], timeout=600)
        if done.returncode != 0:
            raise BackendError(f"`istioctl uninstall --purge -y` failed (exit "
                               f"{done.returncode}): {(done.stdout + done.stderr).strip()}")
        try:
            self.dyn.delete(namespaces, name=ISTIO_NAMESPACE)
        except ApiException as exc:
            if exc.status != 404:
                raise
        self._await_namespaces_gone([ISTIO_NAMESPACE])
        self._ingress.clear()

    # --- reaching the mesh -------------------------------------------------------------------
    @_reaching
    def ingress_address(self, port_name: str = "http2") -> tuple[str, int]:
        """The load balancer's address, else a reachable node IP + NodePort, else a local
        port forwarded to an ingress gateway pod; which one is printed once."""
        if port_name in self._ingress:
            return self._ingress[port_name]
        services = self._resource("v1", "Service")
        svc = self._read(services, INGRESS_SERVICE, ISTIO_NAMESPACE)
        if svc is None:
            raise BackendError(f"there is no Service {INGRESS_SERVICE} in {ISTIO_NAMESPACE}: "
                               "is Istio installed? Run mesh.install() or `make istio`")
        ports = {p.get("name"): p for p in svc["spec"].get("ports") or []}
        if port_name not in ports:
            raise NotFoundError(f'the ingress gateway Service has no port named "{port_name}" '
                                f"(it has {', '.join(sorted(map(str, ports)))})")
        port = ports[port_name]
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if ingress:
            host = str(ingress[0].get("ip") or ingress[0].get("hostname"))
            address = (host, int(port["port"]))
            say(f"ingress: the load balancer's address, {host}:{port['port']}")
        else:
            address = self._node_port_address(port) or self._forwarded_address(svc, port)
        self._ingress[port_name] = address
        return address

    def _node_port_address(self, port: dict[str, Any]) -> tuple[str, int] | None:
        node_port = port.get("nodePort")
        if not node_port:
            return None
        try:
            nodes = self._list(self._resource("v1", "Node"))
        except ApiException:
            return None  # a learner may not list nodes; the port-forward still works
        for node in nodes:
            for addr in (node.get("status") or {}).get("addresses") or []:
                if addr.get("type") == "InternalIP" and _reachable(addr["address"], node_port):
                    say(f"ingress: no load balancer address; using node "
                        f"{node['metadata']['name']} at {addr['address']}, NodePort {node_port}")
                    return str(addr["address"]), int(node_port)
        return None

    def _forward_to_service(self, svc: dict[str, Any], port: dict[str, Any], what: str,
                            local_port: int = 0) -> tuple[PortForward, int]:
        """Forward a local port (`local_port` when free here, else any) to the container
        port behind `port` of an istio-system Service, through a ready pod it selects; each
        connection picks a current pod. Returns the forward and the pod port."""
        selector = ",".join(f"{k}={v}" for k, v in (svc["spec"].get("selector") or {}).items())
        target = self._target_port(port, selector)

        def open_stream() -> Any:
            pods = self._proxyless_pods(ISTIO_NAMESPACE, selector)
            if not pods:
                raise BackendError(f"no ready {what} pod ({selector}) in {ISTIO_NAMESPACE} "
                                   "to forward to")
            core = k8s.CoreV1Api(k8s.ApiClient(self.configuration))
            return kube_stream.portforward(core.connect_get_namespaced_pod_portforward,
                                           pods[0], ISTIO_NAMESPACE, ports=str(target))

        try:
            forward = PortForward(open_stream, target, local_port)
        except OSError:
            forward = PortForward(open_stream, target, 0)
        self._forwards.append(forward)
        return forward, target

    def _forwarded_address(self, svc: dict[str, Any], port: dict[str, Any]) -> tuple[str, int]:
        # The NodePort's number when it is free here, so the address reads like the docs'.
        forward, target = self._forward_to_service(svc, port, "ingress gateway",
                                                   int(port.get("nodePort") or 0))
        say(f"ingress: no load balancer address and no node reachable on NodePort "
            f"{port.get('nodePort')}; forwarding 127.0.0.1:{forward.port} to port {target} of "
            f"an ingress gateway pod (like `kubectl port-forward`) while this kernel runs")
        return "127.0.0.1", forward.port

    def _target_port(self, port: dict[str, Any], selector: str) -> int:
        """The container port behind a Service port (a named targetPort looked up in a pod)."""
        target = port.get("targetPort", port["port"])
        if isinstance(target, int) or str(target).isdigit():
            return int(target)
        for pod in self._list(self._resource("v1", "Pod"), ISTIO_NAMESPACE, selector):
            for container in pod["spec"]["containers"]:
                for p in container.get("ports") or []:
                    if p.get("name") == target:
                        return int(p["containerPort"])
        raise BackendError(f'no container behind {selector} has a port named "{target}"')

    @_reaching
    def exec(self, pod: str, command: Sequence[str], namespace: str = "default",
             container: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """`kubectl exec POD -c C -- CMD` through the API's exec stream."""
        ns = self.prefix.to_cluster(namespace)
        container = self._container(pod, ns, container)
        return self._exec(pod, ns, container, [str(a) for a in command], timeout)

    def _container(self, pod: str, cluster_ns: str, container: str | None) -> str:
        """The named container, checked, or the pod's default one (as kubectl picks it)."""
        manifest = self._pod(pod, cluster_ns)
        names = [c["name"] for c in manifest["spec"]["containers"]]
        if container is None:
            annotations = manifest["metadata"].get("annotations") or {}
            return str(annotations.get("kubectl.kubernetes.io/default-container") or names[0])
        if container not in names:
            raise BackendError(f"error: container {container} is not valid for pod {pod}")
        return container

    def logs(self, pod: str, namespace: str = "default", container: str | None = None) -> str:
        """`kubectl logs POD -c C` through the API."""
        ns = self.prefix.to_cluster(namespace)
        container = self._container(pod, ns, container)
        core = k8s.CoreV1Api(k8s.ApiClient(self.configuration))
        return str(core.read_namespaced_pod_log(pod, ns, container=container))

    def _pod(self, pod: str, cluster_ns: str) -> dict[str, Any]:
        found = self._read(self._resource("v1", "Pod"), pod, cluster_ns)
        if found is None:
            raise NotFoundError(f'Error from server (NotFound): pods "{pod}" not found')
        return found

    def _exec(self, pod: str, cluster_ns: str, container: str, argv: list[str],
              timeout: float) -> subprocess.CompletedProcess:
        # A client of its own: the stream call swaps its client's transport while it runs.
        api = k8s.ApiClient(self.configuration)
        try:
            core = k8s.CoreV1Api(api)
            ws = kube_stream.stream(core.connect_get_namespaced_pod_exec, pod, cluster_ns,
                                    command=argv, container=container, stdin=False,
                                    stdout=True, stderr=True, tty=False, _preload_content=False)
            try:
                deadline = time.monotonic() + timeout
                while ws.is_open():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise subprocess.TimeoutExpired(argv, timeout)
                    ws.update(timeout=min(left, 1.0))
                stdout, stderr = ws.read_channel(1), ws.read_channel(2)
                code, message = exit_status(ws.read_channel(3))
            finally:
                ws.close()
        finally:
            api.close()
        return subprocess.CompletedProcess(argv, code, stdout, stderr + message)

    @_reaching
    def proxy_admin(self, pod: str, namespace: str, path: str, method: str = "GET") -> str:
        """`pilot-agent request METHOD PATH` in the pod's istio-proxy container."""
        ns = self.prefix.to_cluster(namespace)
        manifest = self._pod(pod, ns)
        if not any(c["name"] == "istio-proxy" for c in manifest["spec"]["containers"]):
            raise BackendError(f"pod {pod} in {namespace} has no istio-proxy container")
        argv = ["pilot-agent", "request", method, path]
        done = self._exec(pod, ns, "istio-proxy", argv, 60.0)
        if done.returncode != 0:
            raise BackendError(f"`{' '.join(argv)}` in {pod}.{namespace} failed (exit "
                               f"{done.returncode}): {done.stderr.strip()}")
        return self.prefix.text_to_lab(str(done.stdout))

    def proxy_url(self, pod: str, namespace: str) -> str | None:
        """None: on a cluster, requests from inside a pod go through mesh.exec(pod, curl...)."""
        return None

    @_reaching
    def proxy_status(self) -> list[dict[str, Any]]:
        """`istioctl proxy-status`; without istioctl, istiod's /debug/syncz (what it reads)."""
        rows: list[dict[str, Any]] | None = None
        if self.istioctl.path:
            done = self.istioctl.run(["proxy-status"], timeout=60)
            if done.returncode == 0:
                rows = proxy_status_rows(done.stdout)
        if rows is None:
            rows = self._syncz() or []
        shown = []
        for row in rows:
            pod, _, ns = str(row["proxy"]).rpartition(".")
            lab_ns = self.prefix.to_lab(ns)
            if lab_ns is None:
                continue
            shown.append({**row, "proxy": f"{pod}.{lab_ns}" if pod else lab_ns})
        return shown

    # --- Istio's addons ----------------------------------------------------------------------
    def telemetry_endpoints(self) -> dict[str, str]:
        """Istio's Prometheus addon through a port-forward; a note with the fix without it."""
        try:
            url = self.dashboard_url("prometheus")
        except NotFoundError as exc:
            return {"prometheus": "", "metrics": "", "note": str(exc)}
        return {"prometheus": url, "metrics": "", "note": ""}

    @_reaching
    def dashboard_url(self, name: str) -> str:
        """`istioctl dashboard NAME`: a local port forwarded to the addon's Service port
        (Prometheus, Grafana or Kiali in istio-system), kept while this kernel runs."""
        if name not in ADDON_PATHS:
            raise BackendError(f'unknown dashboard "{name}": use one of '
                               f"{', '.join(sorted(ADDON_PATHS))}")
        if name in self._addons:
            return self._addons[name]
        svc = self._read(self._resource("v1", "Service"), name, ISTIO_NAMESPACE)
        if svc is None:
            raise NotFoundError(
                f"Istio's {name} addon is not installed (no Service {ISTIO_NAMESPACE}/{name})."
                f"\n    fix: `make istio` installs the addons, or `kubectl apply -f "
                f"{ADDONS_URL}/{name}.yaml`")
        port = (svc["spec"].get("ports") or [{}])[0]
        forward, target = self._forward_to_service(svc, port, name)
        url = f"http://127.0.0.1:{forward.port}{ADDON_PATHS[name]}"
        say(f"{name}: forwarding 127.0.0.1:{forward.port} to port {target} of the {name} "
            "addon (like `istioctl dashboard`) while this kernel runs")
        self._addons[name] = url
        return url


def _load_config(context: str | None, config_file: str | None
                 ) -> tuple[k8s.Configuration, str, str | None]:
    """Client configuration from the kubeconfig (or in-cluster), the context name, the file."""
    configuration = k8s.Configuration()
    path = config_file or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
    in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    try:
        kube_config.load_kube_config(config_file=path, context=context,
                                     client_configuration=configuration, persist_config=False)
        _, active = kube_config.list_kube_config_contexts(path)
        return configuration, str(context or active["name"]), config_file
    except (ConfigException, OSError) as exc:
        if context is None and config_file is None and in_pod:
            try:
                kube_config.load_incluster_config(client_configuration=configuration)
            except ConfigException as inner:
                raise BackendError(f"no usable in-cluster config: {inner}") from None
            return configuration, "in-cluster", None
        raise BackendError(
            f"no usable kubeconfig at {path}"
            + (f" for context \"{context}\"" if context else "") + f" ({exc}). Create a local "
            "cluster with `make cluster`, or point KUBECONFIG at your cluster's config and "
            "pick a context with `kubectl config use-context NAME`") from None


def _plural(resource: Any) -> str:
    """kubectl's name for a resource type in errors: `virtualservices.networking.istio.io`."""
    return f"{resource.name}.{resource.group}" if resource.group else str(resource.name)


# What the server writes into an object: a manifest read back with get() and applied again
# (lab 08 edits the ingress Service that way) must not carry it, or an old resourceVersion
# would make the apply a conflict, as `kubectl apply` of such a file does not.
SERVER_METADATA = ("resourceVersion", "uid", "creationTimestamp", "generation",
                   "managedFields", "selfLink", "deletionTimestamp",
                   "deletionGracePeriodSeconds")


def _applicable(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of the manifest without status and server-written metadata."""
    out = {k: copy.deepcopy(v) for k, v in body.items() if k != "status"}
    out["metadata"] = {k: v for k, v in (out.get("metadata") or {}).items()
                       if k not in SERVER_METADATA}
    return out


def _version(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def _api_message(exc: ApiException) -> str:
    """The `message` of the Status the API server sent back, else the HTTP reason."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.body or exc.reason)


def _refused(r: Resource, exc: ApiException) -> Diagnostic:
    """A ConfigError finding for a manifest the API server (or a webhook) refused."""
    message = _api_message(exc)
    if exc.status == 404 and "namespaces" in message:
        fix = f"create it first: mesh.create_namespace(\"{r.namespace}\")"
    elif "admission webhook" in message:
        fix = "fix the field the webhook names; `istioctl analyze` explains Istio's checks"
    else:
        fix = "fix the manifest as the server's message says"
    return Diagnostic(REFUSED, "Error", r.ref, f"the cluster refused it: {message}", "", fix)


def _applied_by_lablib(namespace: dict[str, Any]) -> bool:
    """Whether lablib server-side applied this namespace (its managedFields say so)."""
    fields = (namespace.get("metadata") or {}).get("managedFields") or []
    return any(f.get("manager") == FIELD_MANAGER for f in fields)


def _reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


