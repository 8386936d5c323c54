"""The kubernetes backend against a fake API server: the requests it sends, how it waits,
what it says when something is missing. No cluster needed.

`FakeCluster` is a small Kubernetes API on 127.0.0.1: discovery (/api, /apis), objects in
memory (GET, server-side apply PATCH, DELETE), and exec and port-forward over the websocket
channel protocol. A generated kubeconfig points the real `kubernetes` client at it, so every
request below really crossed HTTP.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import socket
import stat
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from lablib import labs
from lablib.errors import BackendError, ConfigError, NotFoundError

kube = pytest.importorskip("lablib.kube.backend")

TOKEN = "learner-token"
CONTEXT = "fake-ctx"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READY_POD_STATUS = {"phase": "Running", "podIP": "10.244.0.7",
                    "containerStatuses": [{"name": "app", "ready": True, "state": {"running": {}}},
                                          {"name": "istio-proxy", "ready": True,
                                           "state": {"running": {}}}]}

# (group, version) -> [(plural, Kind, namespaced, short names)]
RESOURCES: dict[tuple[str, str], list[tuple[str, str, bool, list[str]]]] = {
    ("", "v1"): [("namespaces", "Namespace", False, ["ns"]), ("pods", "Pod", True, ["po"]),
                 ("services", "Service", True, ["svc"]), ("nodes", "Node", False, ["no"]),
                 ("secrets", "Secret", True, []), ("configmaps", "ConfigMap", True, ["cm"]),
                 ("serviceaccounts", "ServiceAccount", True, ["sa"])],
    ("apps", "v1"): [("deployments", "Deployment", True, ["deploy"])],
    ("networking.istio.io", "v1beta1"): [
        ("gateways", "Gateway", True, ["gw"]), ("virtualservices", "VirtualService", True, ["vs"]),
        ("destinationrules", "DestinationRule", True, ["dr"]),
        ("serviceentries", "ServiceEntry", True, ["se"]), ("sidecars", "Sidecar", True, [])],
    ("networking.istio.io", "v1alpha3"): [
        ("gateways", "Gateway", True, ["gw"]), ("virtualservices", "VirtualService", True, ["vs"]),
        ("destinationrules", "DestinationRule", True, ["dr"]),
        ("serviceentries", "ServiceEntry", True, ["se"]), ("sidecars", "Sidecar", True, [])],
    ("security.istio.io", "v1beta1"): [
        ("peerauthentications", "PeerAuthentication", True, ["pa"])],
}
PREFERRED = {"networking.istio.io": "v1beta1"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any = None


@dataclass
class ExecCall:
    pod: str
    namespace: str
    container: str
    command: list[str]


@dataclass
class FakeCluster:
    """The state and behaviour the tests steer."""

    objects: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    execs: list[ExecCall] = field(default_factory=list)
    # A Deployment reports itself available from its Nth read on (None: never).
    deployment_ready_after: int | None = 1
    # A deleted Namespace is gone after this many reads (None: stuck terminating).
    namespace_gone_after: int | None = 1
    forbidden: bool = False
    exec_handler: Callable[[ExecCall], tuple[str, str, int]] = lambda call: ("", "", 0)
    forward_handler: Callable[[bytes], bytes] = lambda data: b"echo:" + data
    logs: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (ns, pod, container)
    _reads: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    _version: int = 100
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- helpers for tests ---------------------------------------------------------------
    def put(self, group: str, plural: str, body: dict[str, Any]) -> None:
        meta = body.setdefault("metadata", {})
        meta.setdefault("resourceVersion", "1")
        self.objects[(group, plural, meta.get("namespace", ""), meta["name"])] = body

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.put("", "namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": name, "labels": labels or {}},
                                    "status": {"phase": "Active"}})

    def add_pod(self, name: str, namespace: str, labels: dict[str, str],
                containers: tuple[str, ...] = ("app", "istio-proxy"),
                status: dict[str, Any] | None = None,
                annotations: dict[str, str] | None = None) -> None:
        default_status = copy.deepcopy(READY_POD_STATUS)
        default_status["containerStatuses"] = [{"name": c, "ready": True,
                                                "state": {"running": {}}} for c in containers]
        self.put("", "pods", {"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": name, "namespace": namespace,
                                           "labels": labels, "annotations": annotations or {}},
                              "spec": {"containers": [{"name": c} for c in containers]},
                              "status": status or default_status})

    def run_pods(self, deployment: dict[str, Any]) -> None:
        """The Deployment's pods, ready, with a sidecar where the namespace is injected."""
        meta = deployment["metadata"]
        ns, name = meta["namespace"], meta["name"]
        for key in [k for k, body in self.objects.items() if k[1] == "pods" and k[2] == ns
                    and body["metadata"]["annotations"].get("fake/deployment") == name]:
            del self.objects[key]
        namespace = self.objects.get(("", "namespaces", "", ns)) or {"metadata": {}}
        injected = (namespace["metadata"].get("labels") or {}).get("istio-injection") == "enabled"
        template = deployment["spec"]["template"]
        containers = [c["name"] for c in template["spec"]["containers"]]
        revision = hashlib.sha1(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        for i in range(int(deployment["spec"].get("replicas", 1))):
            self.add_pod(f"{name}-{revision}-{i}", ns, dict(template["metadata"]["labels"]),
                         tuple(containers + (["istio-proxy"] if injected else [])),
                         annotations={"fake/deployment": name})

    def sent(self, method: str, fragment: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == method and fragment in r.path]

    def get_object(self, group: str, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return self.objects[(group, plural, namespace, name)]


PLURALS = {kind: (group, plural) for (group, _), rows in RESOURCES.items()
           for plural, kind, _, _ in rows}
KIT = Path(__file__).resolve().parent.parent


def put_manifests(state: FakeCluster, path: str, namespace: str | None = None) -> None:
    """Objects of a manifest file straight into the fake store, as if applied long ago."""
    for doc in yaml.safe_load_all((KIT / path).read_text()):
        if not doc:
            continue
        group, plural = PLURALS[doc["kind"]]
        meta = doc["metadata"]
        if doc["kind"] != "Namespace":
            meta["namespace"] = namespace or meta.get("namespace", "default")
        meta.setdefault("generation", 1)
        if doc["kind"] == "Deployment":
            doc["status"] = deployment_status(doc, True)
        state.put(group, plural, doc)


def discovery_list(group: str, version: str) -> dict[str, Any]:
    resources = []
    for plural, kind, namespaced, short in RESOURCES[(group, version)]:
        verbs = ["get", "list", "patch", "delete", "create"]
        resources.append({"name": plural, "singularName": kind.lower(), "namespaced": namespaced,
                          "kind": kind, "verbs": verbs, "shortNames": short})
        if plural == "pods":
            resources += [{"name": "pods/exec", "singularName": "", "namespaced": True,
                           "kind": "PodExecOptions", "verbs": ["create", "get"]},
                          {"name": "pods/portforward", "singularName": "", "namespaced": True,
                           "kind": "PodPortForwardOptions", "verbs": ["create", "get"]}]
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": resources}


def group_list() -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for group, version in RESOURCES:
        if group:
            groups.setdefault(group, []).append(version)
    out = []
    for group, versions in groups.items():
        preferred = PREFERRED.get(group, versions[0])
        out.append({"name": group,
                    "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
                    "preferredVersion": {"groupVersion": f"{group}/{preferred}",
                                         "version": preferred}})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": out}


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reason, "code": code}


def plural_info(group: str, version: str, plural: str) -> tuple[str, bool]:
    for p, kind, namespaced, _ in RESOURCES.get((group, version), []):
        if p == plural:
            return kind, namespaced
    raise KeyError(plural)


def spec_of(body: dict[str, Any]) -> Any:
    """What counts as a change for resourceVersion: everything but status and server fields."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items()
            if k in ("name", "namespace", "labels", "annotations")}
    return {**{k: v for k, v in body.items() if k not in ("metadata", "status")}, "m": meta}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response, sent at once: else delayed ACKs cost 40 ms a request.
    wbufsize = -1
    disable_nagle_algorithm = True
    cluster: FakeCluster

    def log_message(self, *args: Any) -> None:
        pass

    # --- plumbing ------------------------------------------------------------------------
    def _send(self, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> Request:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        path = unquote(url.path).rstrip("/") or "/"
        request = Request(self.command, path, parse_qs(url.query),
                          {k.lower(): v for k, v in self.headers.items()}, body)
        self.cluster.requests.append(request)
        return request

    def _route(self, request: Request) -> tuple[str, str, list[str]] | None:
        parts = [p for p in request.path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 2:
            return "", parts[1], parts[2:]
        if parts[:1] == ["apis"] and len(parts) >= 3:
            return parts[1], parts[2], parts[3:]
        return None

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        request = self._record()
        if self.cluster.forbidden and request.path != "/version":
            return self._send(403, status(403, "Forbidden",
                                          'pods is forbidden: User "learner" cannot list'))
        if request.path == "/version":
            return self._send(200, {"major": "1", "minor": "29", "gitVersion": "v1.29.2"})
        if request.path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        if request.path == "/apis":
            return self._send(200, group_list())
        route = self._route(request)
        if route is None:
            return self._send(404, status(404, "NotFound", "the server could not find it"))
        group, version, rest = route
        if not rest:
            return self._send(200, discovery_list(group, version))
        if rest[-1] in ("exec", "portforward") and len(rest) == 5:
            return self._websocket(request, rest[1], rest[3], rest[4])
        if rest[-1] == "log" and len(rest) == 5:
            container = request.query.get("container", [""])[0]
            return self._send(200, self.cluster.logs[(rest[1], rest[3], container)])
        namespace, plural, name = self._parse(rest)
        if name is None:
            return self._list(group, version, plural, namespace, request)
        return self._get(group, version, plural, namespace, name)

    def _parse(self, rest: list[str]) -> tuple[str, str, str | None]:
        if rest[0] == "namespaces" and len(rest) >= 3:
            return rest[1], rest[2], rest[3] if len(rest) > 3 else None
        return "", rest[0], rest[1] if len(rest) > 1 else None

    def _list(self, group: str, version: str, plural: str, namespace: str,
              request: Request) -> None:
        kind, _ = plural_info(group, version, plural)
        selector = dict(p.split("=", 1) for p in
                        (request.query.get("labelSelector", [""])[0].split(",")) if p)
        items = []
        with self.cluster.lock:
            for (g, p, ns, _), body in sorted(self.cluster.objects.items()):
                if g != group or p != plural or (namespace and ns != namespace):
                    continue
                labels = body["metadata"].get("labels") or {}
                if all(labels.get(k) == v for k, v in selector.items()):
                    item = copy.deepcopy(body)
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                    items.append(item)
        api_version = f"{group}/{version}" if group else version
        self._send(200, {"kind": f"{kind}List", "apiVersion": api_version,
                         "metadata": {"resourceVersion": "1"}, "items": items})

    def _get(self, group: str, version: str, plural: str, namespace: str, name: str) -> None:
        key = (group, plural, namespace, name)
        cluster = self.cluster
        with cluster.lock:
            body = cluster.objects.get(key)
            if body is None:
                return self._send(404, status(404, "NotFound", f'{plural} "{name}" not found'))
            cluster._reads[key] = reads = cluster._reads.get(key, 0) + 1
            if plural == "deployments":
                ready = (cluster.deployment_ready_after is not None
                         and reads >= cluster.deployment_ready_after)
                body["status"] = deployment_status(body, ready)
            if plural == "namespaces" and body["metadata"].get("deletionTimestamp"):
                gone = cluster.namespace_gone_after
                if gone is not None and reads >= gone:
                    del cluster.objects[key]
                    return self._send(404, status(404, "NotFound",
                                                  f'namespaces "{name}" not found'))
            payload = copy.deepcopy(body)
        payload["apiVersion"] = f"{group}/{version}" if group else version
        self._send(200, payload)

    def do_PATCH(self) -> None:  # noqa: N802
        request = self._record()
        route = self._route(request)
        assert route is not None
        group, version, rest = route
        namespace, plural, name = self._parse(rest)
        kind, namespaced = plural_info(group, version, plural)
        cluster = self.cluster
        with cluster.lock:
            if namespaced and ("", "namespaces", "", namespace) not in cluster.objects:
                return self._send(404, status(404, "NotFound",
                                              f'namespaces "{namespace}" not found'))
            key = (group, plural, namespace, name)
            old = cluster.objects.get(key)
            new = copy.deepcopy(request.body)
            meta = new.setdefault("metadata", {})
            if old is not None and spec_of(old) == spec_of(new):
                payload = copy.deepcopy(old)
            else:
                cluster._version += 1
                old_meta = (old or {}).get("metadata") or {}
                meta["resourceVersion"] = str(cluster._version)
                meta["uid"] = old_meta.get("uid") or str(uuid.uuid4())
                meta["generation"] = int(old_meta.get("generation") or 0) + 1
                meta["managedFields"] = [{"manager": request.query["fieldManager"][0],
                                          "operation": "Apply"}]
                new["status"] = (old or {}).get("status") or (
                    {"phase": "Active"} if kind == "Namespace" else {})
                cluster.objects[key] = new
                cluster._reads.pop(key, None)
                if kind == "Deployment":
                    cluster.run_pods(new)
                payload = copy.deepcopy(new)
        self._send(200, payload)

    def do_DELETE(self) -> None:  # noqa: N802
        request = self._record()
        route = self._route(request)
        assert route is not None
        group, version, rest = route
        namespace, plural, name = self._parse(rest)
        cluster = self.cluster
        with cluster.lock:
            key = (group, plural, namespace, name)
            body = cluster.objects.get(key)
            if body is None:
                return self._send(404, status(404, "NotFound", f'{plural} "{name}" not found'))
            if plural == "namespaces":
                body["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
                body["status"] = {"phase": "Terminating"}
                cluster._reads[key] = 0
                for other in [k for k in cluster.objects if k[2] == name]:
                    del cluster.objects[other]
            else:
                del cluster.objects[key]
        self._send(200, {"kind": "Status", "status": "Success"})

    # --- websocket: exec and port-forward -------------------------------------------------
    def _websocket(self, request: Request, namespace: str, pod: str, verb: str) -> None:
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        sock = self.connection
        if verb == "exec":
            call = ExecCall(pod, namespace, request.query.get("container", [""])[0],
                            request.query.get("command", []))
            self.cluster.execs.append(call)
            out, err, code = self.cluster.exec_handler(call)
            if out:
                send_frame(sock, b"\x01" + out.encode())
            if err:
                send_frame(sock, b"\x02" + err.encode())
            result = ({"status": "Success"} if code == 0 else
                      {"status": "Failure", "reason": "NonZeroExitCode",
                       "message": f"command terminated with non-zero exit code: {code}",
                       "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}})
            send_frame(sock, b"\x03" + json.dumps(result).encode())
            send_frame(sock, b"", opcode=0x8)
            return
        port = int(request.query["ports"][0])
        send_frame(sock, b"\x00" + struct.pack("<H", port))
        send_frame(sock, b"\x01" + struct.pack("<H", port))
        while True:
            frame = read_frame(sock)
            if frame is None or frame[0] == 0x8:
                return
            data = frame[1]
            if data[:1] == b"\x00" and len(data) > 1:
                send_frame(sock, b"\x00" + self.cluster.forward_handler(data[1:]))


def send_frame(sock: socket.socket, payload: bytes, opcode: int = 0x2) -> None:
    """A server-to-client websocket frame (unmasked)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    sock.sendall(head + payload)


def read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    """A client-to-server websocket frame (masked): (opcode, payload)."""
    head = read_exactly(sock, 2)
    if head is None:
        return None
    opcode, n = head[0] & 0x0F, head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", read_exactly(sock, 2) or b"\0\0")[0]
    elif n == 127:
        n = struct.unpack(">Q", read_exactly(sock, 8) or b"\0" * 8)[0]
    mask = read_exactly(sock, 4) if head[1] & 0x80 else b"\0\0\0\0"
    payload = read_exactly(sock, n) if n else b""
    if mask is None or payload is None:
        return None
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def deployment_status(body: dict[str, Any], ready: bool) -> dict[str, Any]:
    replicas = int((body.get("spec") or {}).get("replicas", 1))
    generation = int(body["metadata"].get("generation") or 1)
    if not ready:
        return {"observedGeneration": generation, "replicas": replicas,
                "updatedReplicas": replicas, "availableReplicas": 0,
                "conditions": [{"type": "Available", "status": "False"}]}
    return {"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [{"type": "Available", "status": "True"}]}


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up mid-stream (closing a websocket) is not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


# --- fixtures ---------------------------------------------------------------------------------


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": CONTEXT,
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "learner", "user": {"token": TOKEN}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": "fake", "user": "learner"}}],
    }))
    return path


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No istioctl on PATH, no prefix, discovery cache in tmp."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LAB_NAMESPACE_PREFIX", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return bin_dir


@pytest.fixture
def cluster(tmp_path: Path, isolated: Path) -> Iterator[tuple[FakeCluster, Path]]:
    """A fake cluster with istio-system and the ingress gateway Service, and its kubeconfig."""
    state = FakeCluster()
    handler = type("BoundHandler", (Handler,), {"cluster": state})
    server = QuietServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for ns in ("default", "kube-system"):
        state.add_namespace(ns)
    put_manifests(state, "lablib/local/istio_system.yaml")  # Istio's demo profile, as objects
    state.put("", "services", ingress_service())
    for ns in ("default", "bookinfo-test"):
        put_manifests(state, "samples/bookinfo/platform/kube/bookinfo.yaml", ns)
    config = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{server.server_port}")
    try:
        yield state, config
    finally:
        server.shutdown()
        server.server_close()


def ingress_service(lb: list[dict[str, str]] | None = None, node_port: int = 31380
                    ) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
            "spec": {"type": "LoadBalancer", "selector": {"istio": "ingressgateway"},
                     "ports": [{"name": "status-port", "port": 15021, "targetPort": 15021,
                                "nodePort": 31021},
                               {"name": "http2", "port": 80, "targetPort": 8080,
                                "nodePort": node_port}]},
            "status": {"loadBalancer": {"ingress": lb} if lb else {}}}


def connect(config: Path, **kwargs: Any) -> Any:
    backend = kube.KubernetesBackend(config_file=str(config), **kwargs)
    backend.poll_interval = 0.01
    backend.config_timeout = 0.5
    backend.rollout_timeout = 2.0
    backend.namespace_timeout = 2.0
    return backend


def fake_istioctl(bin_dir: Path, script: str) -> Path:
    """An `istioctl` on PATH that logs its argv to istioctl.log and runs `script` (sh)."""
    log = bin_dir.parent / "istioctl.log"
    path = bin_dir / "istioctl"
    path.write_text(f'#!/bin/sh\nPATH=/usr/bin:/bin\necho "$@" >> {log}\n{script}\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return log


def config_dump_with(*markers: str) -> str:
    routes = [{"route_config": {"name": "9080", "virtual_hosts": [{"routes": [
        {"metadata": {"filter_metadata": {"istio": {"config": m}}}} for m in markers]}]}}]
    return json.dumps({"configs": [{"@type": "type.googleapis.com/envoy.admin.v3."
                                             "RoutesConfigDump", "dynamic_route_configs": routes}]})


VS_REVIEWS = {
    "apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
    "metadata": {"name": "reviews"},
    "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
}


# --- connecting -------------------------------------------------------------------------------


def test_connects_with_the_kubeconfig_token(cluster):
    state, config = cluster
    backend = connect(config)
    assert backend.name == "kubernetes" and backend.context == CONTEXT
    assert state.requests[0].path == "/version"
    assert {r.headers.get("authorization") for r in state.requests} == {f"Bearer {TOKEN}"}


def test_the_current_kubeconfig_is_the_default(cluster, monkeypatch):
    _, config = cluster
    monkeypatch.setenv("KUBECONFIG", str(config))
    backend = kube.KubernetesBackend()
    assert backend.context == CONTEXT and backend.server.startswith("http://127.0.0.1:")
    assert backend.istioctl.flags == []  # istioctl reads KUBECONFIG itself


def test_connect_kubernetes_gives_this_backend(cluster, monkeypatch):
    """lablib.connect("kubernetes") and LAB_BACKEND=kubernetes choose it."""
    import lablib

    _, config = cluster
    monkeypatch.setenv("KUBECONFIG", str(config))
    assert isinstance(lablib.connect("kubernetes"), kube.KubernetesBackend)
    monkeypatch.setenv("LAB_BACKEND", "kubernetes")
    assert lablib.connect().name == "kubernetes"


def test_unreachable_cluster_says_where_and_what_to_do(tmp_path, isolated):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connection refused
    config = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        kube.KubernetesBackend(config_file=str(config))
    message = str(err.value)
    assert f"http://127.0.0.1:{port}" in message and f'"{CONTEXT}"' in message
    assert "kubectl cluster-info" in message and "make cluster" in message
    assert "refused" in message.lower()
    assert time.monotonic() - started < 15


def test_missing_kubeconfig_says_how_to_get_a_cluster(tmp_path, isolated):
    with pytest.raises(BackendError) as err:
        kube.KubernetesBackend(config_file=str(tmp_path / "nope"))
    assert "no usable kubeconfig" in str(err.value) and "make cluster" in str(err.value)


def test_forbidden_requests_name_the_rights_needed(cluster):
    state, config = cluster
    backend = connect(config)
    state.forbidden = True
    with pytest.raises(BackendError) as err:
        backend.get("pods", namespace="default")
    assert "403" in str(err.value) and "kubectl auth can-i" in str(err.value)


def test_a_bad_prefix_is_refused_at_connect(cluster, monkeypatch):
    _, config = cluster
    monkeypatch.setenv("LAB_NAMESPACE_PREFIX", "Alice!")
    with pytest.raises(BackendError, match="LAB_NAMESPACE_PREFIX"):
        connect(config)


# --- apply -----------------------------------------------------------------------------------


def test_apply_is_a_server_side_apply_by_lablib_in_the_named_namespace(cluster):
    state, config = cluster
    state.add_namespace("bookinfo-test")
    backend = connect(config)
    lines = backend.apply("samples/bookinfo/networking/bookinfo-gateway.yaml", "bookinfo-test")
    assert lines == ["gateway.networking.istio.io/bookinfo-gateway created",
                     "virtualservice.networking.istio.io/bookinfo created"]
    patches = state.sent("PATCH")
    assert [p.path for p in patches] == [
        "/apis/networking.istio.io/v1alpha3/namespaces/bookinfo-test/gateways/bookinfo-gateway",
        "/apis/networking.istio.io/v1alpha3/namespaces/bookinfo-test/virtualservices/bookinfo"]
    for p in patches:
        assert p.headers["content-type"] == "application/apply-patch+yaml"
        assert p.query["fieldManager"] == ["lablib"] and p.query["force"] == ["true"]
        assert p.body["metadata"]["namespace"] == "bookinfo-test"
    assert patches[1].body["spec"]["gateways"] == ["bookinfo-gateway"]


def test_apply_keeps_the_manifests_own_namespace(cluster):
    state, config = cluster
    state.add_namespace("elsewhere")
    put_manifests(state, "samples/bookinfo/platform/kube/bookinfo.yaml", "elsewhere")
    backend = connect(config)
    body = {**VS_REVIEWS, "metadata": {"name": "reviews", "namespace": "elsewhere"}}
    backend.apply(body)
    assert state.sent("PATCH")[-1].path.endswith("/namespaces/elsewhere/virtualservices/reviews")
    backend.apply({**VS_REVIEWS})  # no namespace anywhere: default, as kubectl does
    assert state.sent("PATCH")[-1].path.endswith("/namespaces/default/virtualservices/reviews")


def test_a_manifest_read_back_applies_without_what_the_server_wrote(cluster):
    state, config = cluster
    backend = connect(config)
    svc = backend.get("svc", "istio-ingressgateway", "istio-system")[0]
    svc["metadata"].update(uid="u-1", resourceVersion="7", creationTimestamp="2024-01-01")
    svc["spec"]["ports"].append({"name": "http-3000", "port": 3000, "targetPort": 3000})
    assert backend.apply(svc) == ["service/istio-ingressgateway configured"]
    sent = state.sent("PATCH")[-1]
    assert sent.path == "/api/v1/namespaces/istio-system/services/istio-ingressgateway"
    assert "status" not in sent.body
    assert not {"uid", "resourceVersion", "creationTimestamp"} & set(sent.body["metadata"])
    assert sent.body["spec"]["ports"][-1]["port"] == 3000


def test_apply_refuses_a_namespace_clash_before_sending_anything(cluster):
    state, config = cluster
    backend = connect(config)
    body = {**VS_REVIEWS, "metadata": {"name": "reviews", "namespace": "elsewhere"}}
    with pytest.raises(ConfigError) as err:
        backend.apply(body, namespace="bookinfo-test")
    assert err.value.diagnostics[0].code == "LAB0105"
    assert not state.sent("PATCH")


def test_apply_reports_created_unchanged_configured(cluster):
    state, config = cluster
    backend = connect(config)
    assert backend.apply(VS_REVIEWS, "default") == [
        "virtualservice.networking.istio.io/reviews created"]
    assert backend.apply(VS_REVIEWS, "default") == [
        "virtualservice.networking.istio.io/reviews unchanged"]
    changed = copy.deepcopy(VS_REVIEWS)
    changed["spec"]["http"][0]["timeout"] = "1s"
    assert backend.apply(changed, "default") == [
        "virtualservice.networking.istio.io/reviews configured"]


def test_invalid_input_raises_the_local_config_error_and_sends_nothing(cluster):
    state, config = cluster
    backend = connect(config)
    bad = copy.deepcopy(VS_REVIEWS)
    bad["spec"]["http"][0]["route"][0]["weight"] = "abc"
    with pytest.raises(ConfigError) as err:
        backend.apply(bad, "default")
    assert "weight" in str(err.value)
    assert not state.sent("PATCH")


def test_analysis_refuses_what_the_local_mesh_refuses(cluster):
    state, config = cluster
    state.add_namespace("bookinfo-test", {"istio-injection": "enabled"})
    backend = connect(config)
    backend.apply("samples/bookinfo/platform/kube/bookinfo.yaml", "bookinfo-test")
    patches = len(state.sent("PATCH"))
    to_missing_namespace = {**VS_REVIEWS, "metadata": {"name": "r", "namespace": "nowhere"}}
    with pytest.raises(ConfigError) as err:
        backend.apply(to_missing_namespace)
    assert "LAB0204" in [d.code for d in err.value.diagnostics]
    assert len(state.sent("PATCH")) == patches


def test_apply_waits_until_deployments_are_available(cluster):
    state, config = cluster
    state.add_namespace("shop")
    state.deployment_ready_after = 4
    backend = connect(config)
    lines = backend.apply("samples/bookinfo/platform/kube/bookinfo.yaml", "shop")
    assert "deployment.apps/reviews-v2 created" in lines
    reads = [r for r in state.sent("GET", "/apis/apps/v1/namespaces/shop/deployments/")
             if r.path.endswith("/productpage-v1")]
    assert len(reads) >= 4  # one read before the apply, then polls until available


def test_a_deployment_that_never_becomes_available_times_out_with_reasons(cluster):
    state, config = cluster
    state.add_namespace("shop")
    state.deployment_ready_after = None
    state.add_pod("details-v1-abc", "shop", {"app": "details", "version": "v1"},
                  status={"phase": "Pending", "containerStatuses": [
                      {"name": "details", "ready": False, "state": {"waiting": {
                          "reason": "ImagePullBackOff", "message": "no such image"}}}]})
    backend = connect(config)
    backend.rollout_timeout = 0.2
    with pytest.raises(BackendError) as err:
        backend.apply("samples/bookinfo/platform/kube/bookinfo.yaml", "shop")
    message = str(err.value)
    assert 'deployment "details-v1" in shop is not available after' in message
    assert "0 of 1 updated replicas are available" in message
    assert "details-v1-abc: details: ImagePullBackOff (no such image)" in message
    assert "kubectl -n shop describe deployment details-v1" in message


def test_a_refusal_by_the_api_server_is_a_config_error(cluster):
    state, config = cluster
    backend = connect(config)
    backend._analysis_store = lambda namespaces: None  # a learner who may not list it all
    with pytest.raises(ConfigError) as err:
        backend.apply({**VS_REVIEWS, "metadata": {"name": "r", "namespace": "nowhere"}})
    diagnostic = err.value.diagnostics[0]
    assert diagnostic.code == "LAB0301" and 'namespaces "nowhere" not found' in diagnostic.message
    assert 'mesh.create_namespace("nowhere")' in diagnostic.fix


def test_the_labs_set_up_runs_on_the_cluster(cluster):
    state, config = cluster
    backend = connect(config)
    labs.ensure_bookinfo(backend, "shop", destination_rules=True)
    assert backend.get("namespace", "shop")[0]["metadata"]["labels"] == {
        "istio-injection": "enabled"}
    pods = backend.get("pods", namespace="shop")
    assert len(pods) == 6
    assert all([c["name"] for c in p["spec"]["containers"]][-1] == "istio-proxy" for p in pods)
    assert [r["metadata"]["name"] for r in backend.get("dr", namespace="shop")] == [
        "details", "productpage", "ratings", "reviews"]
    assert labs.reset_routing(backend, "shop") == [
        f'destinationrule.networking.istio.io "{name}" deleted'
        for name in ("details", "productpage", "ratings", "reviews")]
    assert [v["metadata"]["name"] for v in backend.get("vs", namespace="shop")] == ["bookinfo"]
    labs.ensure_bookinfo(backend, "shop")  # a second time: nothing new
    assert not [r for r in state.sent("PATCH") if r.path == "/api/v1/namespaces/shop"][1:]


# --- waiting for the proxies -----------------------------------------------------------------


def test_without_istioctl_apply_polls_the_proxies_config_until_the_route_is_there(cluster):
    state, config = cluster
    state.add_namespace("bookinfo-test")
    state.add_pod("productpage-v1-abc", "bookinfo-test", {"app": "productpage"})
    marker = "/apis/networking.istio.io/v1alpha3/namespaces/bookinfo-test/virtual-service/reviews"
    polls = []

    def admin(call: ExecCall) -> tuple[str, str, int]:
        if call.command[:3] == ["pilot-agent", "request", "GET"]:
            polls.append(call)
            return (config_dump_with(marker) if len(polls) >= 3 else config_dump_with()), "", 0
        return "", "", 1

    state.exec_handler = admin
    backend = connect(config)
    backend.config_timeout = 5.0
    backend.apply(VS_REVIEWS, "bookinfo-test")
    assert len(polls) == 3
    assert polls[0] == ExecCall("productpage-v1-abc", "bookinfo-test", "istio-proxy",
                                ["pilot-agent", "request", "GET", "config_dump"])
    exec_requests = state.sent("GET", "/exec")
    assert exec_requests[0].path == "/api/v1/namespaces/bookinfo-test/pods/productpage-v1-abc/exec"
    assert exec_requests[0].query["stdout"] == ["true"]


def test_a_delete_waits_until_the_route_is_gone(cluster):
    state, config = cluster
    state.add_namespace("bookinfo-test")
    state.add_pod("productpage-v1-abc", "bookinfo-test", {"app": "productpage"})
    marker = "/apis/networking.istio.io/v1alpha3/namespaces/bookinfo-test/virtual-service/reviews"
    polls: list[ExecCall] = []
    state.exec_handler = lambda call: (polls.append(call) or (
        config_dump_with(marker) if len(polls) < 3 else config_dump_with()), "", 0)
    backend = connect(config)
    backend.config_timeout = 5.0
    backend.apply(VS_REVIEWS, "bookinfo-test")
    polls.clear()
    backend.delete({"apiVersion": VS_REVIEWS["apiVersion"], "kind": "VirtualService",
                    "metadata": {"name": "reviews"}}, "bookinfo-test")
    assert len(polls) == 3


def test_a_proxy_that_never_gets_the_config_is_reported_not_fatal(cluster, capsys):
    state, config = cluster
    state.add_namespace("bookinfo-test")
    state.add_pod("productpage-v1-abc", "bookinfo-test", {"app": "productpage"})
    state.exec_handler = lambda call: (config_dump_with(), "", 0)
    backend = connect(config)
    backend.config_timeout = 0.2
    assert backend.apply(VS_REVIEWS, "bookinfo-test")
    out = capsys.readouterr().out
    assert "productpage-v1-abc.bookinfo-test did not show the change after" in out


def test_with_istioctl_apply_waits_with_istioctl_x_wait(cluster, isolated):
    state, config = cluster
    state.add_namespace("bookinfo-test")
    log = fake_istioctl(isolated, "exit 0")
    backend = connect(config)
    backend.apply(VS_REVIEWS, "bookinfo-test")
    assert log.read_text().splitlines() == [
        f"x wait --for=distribution --timeout 1s virtualservice reviews.bookinfo-test "
        f"--kubeconfig {config}"]
    assert not state.execs


def test_when_istiod_does_not_track_distribution_the_proxies_are_polled(cluster, isolated):
    state, config = cluster
    state.add_namespace("bookinfo-test")
    state.add_pod("productpage-v1-abc", "bookinfo-test", {"app": "productpage"})
    marker = "/namespaces/bookinfo-test/virtual-service/reviews"
    state.exec_handler = lambda call: (config_dump_with("/apis/x/v1" + marker), "", 0)
    log = fake_istioctl(isolated, 'echo "Error: Pilot Version tracking is disabled." >&2; exit 1')
    backend = connect(config)
    backend.apply(VS_REVIEWS, "bookinfo-test")
    assert "x wait" in log.read_text()
    assert [c.command[-1] for c in state.execs] == ["config_dump"]


# --- get and delete --------------------------------------------------------------------------


def test_get_lists_with_kind_api_version_and_no_managed_fields(cluster):
    state, config = cluster
    backend = connect(config)
    backend.apply(VS_REVIEWS, "default")
    items = backend.get("vs", namespace="default")
    assert [(i["kind"], i["apiVersion"], i["metadata"]["name"]) for i in items] == [
        ("VirtualService", "networking.istio.io/v1beta1", "reviews")]
    assert "managedFields" not in items[0]["metadata"]
    assert state.requests[-1].path == "/apis/networking.istio.io/v1beta1/namespaces/default/" \
                                      "virtualservices"


def test_get_by_selector_sends_a_label_selector(cluster):
    state, config = cluster
    state.add_pod("sleep-1", "default", {"app": "sleep"})
    state.add_pod("other-1", "default", {"app": "other"})
    backend = connect(config)
    pods = backend.get("pods", namespace="default", selector={"app": "sleep"})
    assert [p["metadata"]["name"] for p in pods] == ["sleep-1"]
    assert state.requests[-1].query["labelSelector"] == ["app=sleep"]
    assert backend.pod_name({"app": "sleep"}, "default") == "sleep-1"


def test_get_a_missing_object_is_not_found_in_kubectls_words(cluster):
    _, config = cluster
    backend = connect(config)
    with pytest.raises(NotFoundError, match='services "nope" not found'):
        backend.get("svc", "nope", "default")
    assert backend.get("svc", "istio-ingressgateway", "istio-system")[0]["spec"]["ports"]


def test_get_without_a_namespace_looks_everywhere(cluster):
    _, config = cluster
    backend = connect(config)
    assert [s["metadata"]["namespace"] for s in backend.get("svc", "istio-ingressgateway")] == [
        "istio-system"]


def test_delete_ignores_missing_unless_asked(cluster):
    state, config = cluster
    backend = connect(config)
    backend.apply(VS_REVIEWS, "default")
    assert backend.delete(VS_REVIEWS, "default") == [
        'virtualservice.networking.istio.io "reviews" deleted']
    assert state.sent("DELETE")[-1].path == ("/apis/networking.istio.io/v1alpha3/namespaces/"
                                             "default/virtualservices/reviews")
    assert backend.delete(VS_REVIEWS, "default") == []
    with pytest.raises(NotFoundError, match='"reviews" not found'):
        backend.delete(VS_REVIEWS, "default", ignore_missing=False)


def test_namespaces_are_created_with_labels_and_deleted_until_gone(cluster):
    state, config = cluster
    state.namespace_gone_after = 3
    backend = connect(config)
    assert backend.create_namespace("bookinfo-test", {"istio-injection": "enabled"}) == [
        "namespace/bookinfo-test created"]
    ns = backend.get("namespace", "bookinfo-test")[0]
    assert ns["metadata"]["labels"] == {"istio-injection": "enabled"}
    assert backend.delete_namespace("bookinfo-test") == ['namespace "bookinfo-test" deleted']
    assert ("", "namespaces", "", "bookinfo-test") not in state.objects
    reads = state.sent("GET", "/api/v1/namespaces/bookinfo-test")
    assert len(reads) >= 3


def test_a_namespace_stuck_terminating_times_out_with_advice(cluster):
    state, config = cluster
    state.namespace_gone_after = None
    backend = connect(config)
    backend.create_namespace("bookinfo-test")
    backend.namespace_timeout = 0.2
    with pytest.raises(BackendError, match="still terminating.*kubectl get namespace"):
        backend.delete_namespace("bookinfo-test")


def test_wait_ready_waits_for_every_pod_and_explains_a_timeout(cluster):
    state, config = cluster
    state.add_pod("ok-1", "default", {"app": "ok"})
    state.add_pod("bad-1", "default", {"app": "bad"}, status={
        "phase": "Running", "containerStatuses": [
            {"name": "app", "ready": False, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]})
    backend = connect(config)
    with pytest.raises(BackendError, match=r"bad-1: app: CrashLoopBackOff"):
        backend.wait_ready("default", timeout=0.1)
    state.add_pod("bad-1", "default", {"app": "bad"})
    backend.wait_ready("default", timeout=1)


# --- exec and the proxies --------------------------------------------------------------------


def test_exec_returns_output_and_the_exit_code_from_the_error_channel(cluster):
    state, config = cluster
    state.add_pod("sleep-1", "default", {"app": "sleep"}, containers=("sleep", "istio-proxy"),
                  annotations={"kubectl.kubernetes.io/default-container": "sleep"})
    state.exec_handler = lambda call: ("out\n", "warn\n", 7)
    backend = connect(config)
    done = backend.exec("sleep-1", ["curl", "-s", "http://productpage:9080/"], "default")
    assert (done.returncode, done.stdout, done.stderr) == (7, "out\n", "warn\n")
    assert done.args == ["curl", "-s", "http://productpage:9080/"]
    assert state.execs[-1] == ExecCall("sleep-1", "default", "sleep",
                                       ["curl", "-s", "http://productpage:9080/"])
    state.exec_handler = lambda call: ("fine", "", 0)
    assert backend.exec("sleep-1", ["true"], "default", container="istio-proxy").returncode == 0
    assert state.execs[-1].container == "istio-proxy"


def test_exec_checks_the_pod_and_container(cluster):
    state, config = cluster
    state.add_pod("sleep-1", "default", {"app": "sleep"}, containers=("sleep", "istio-proxy"))
    backend = connect(config)
    with pytest.raises(BackendError, match="container nope is not valid for pod sleep-1"):
        backend.exec("sleep-1", ["true"], "default", container="nope")
    with pytest.raises(NotFoundError, match='pods "ghost" not found'):
        backend.exec("ghost", ["true"], "default")
    assert not state.execs


def test_logs_read_the_container_log_through_the_api(cluster):
    state, config = cluster
    state.add_pod("httpbin-1", "default", {"app": "httpbin"}, containers=("httpbin", "istio-proxy"))
    line = '127.0.0.6 - - [04/Dec/2026:15:40:00 +0000] "GET /headers HTTP/1.1" 200 5 "-" "curl"\n'
    state.logs[("default", "httpbin-1", "httpbin")] = line
    backend = connect(config)
    assert backend.logs("httpbin-1", "default") == line
    with pytest.raises(BackendError, match="container nope is not valid for pod httpbin-1"):
        backend.logs("httpbin-1", "default", container="nope")


def test_proxy_admin_runs_pilot_agent_in_istio_proxy(cluster):
    state, config = cluster
    state.add_pod("productpage-v1-abc", "default", {"app": "productpage"})
    state.exec_handler = lambda call: ("server.live: 1\n", "", 0)
    backend = connect(config)
    assert backend.proxy_admin("productpage-v1-abc", "default", "stats") == "server.live: 1\n"
    assert state.execs[-1] == ExecCall("productpage-v1-abc", "default", "istio-proxy",
                                       ["pilot-agent", "request", "GET", "stats"])
    backend.proxy_admin("productpage-v1-abc", "default", "logging?level=debug", method="POST")
    assert state.execs[-1].command == ["pilot-agent", "request", "POST", "logging?level=debug"]
    assert backend.proxy_url("productpage-v1-abc", "default") is None
    state.add_pod("plain-1", "default", {"app": "plain"}, containers=("app",))
    with pytest.raises(BackendError, match="has no istio-proxy container"):
        backend.proxy_admin("plain-1", "default", "stats")


# What istioctl 1.20 prints: tabwriter columns, cells may hold one space ("NOT SENT").
PROXY_STATUS = "\n".join("     ".join(row) for row in [
    ("NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD", "VERSION"),
    ("istio-ingressgateway-6b8b8d9f7-x2x4k.istio-system", "Kubernetes", "SYNCED", "SYNCED",
     "SYNCED", "NOT SENT", "NOT SENT", "istiod-7d4f8b7d8c-abcde", "1.20.3"),
    ("productpage-v1-6b746f74dc-9stvs.bookinfo-test", "Kubernetes", "SYNCED", "SYNCED",
     "SYNCED", "SYNCED", "NOT SENT", "istiod-7d4f8b7d8c-abcde", "1.20.3"),
])


def test_proxy_status_parses_istioctl(cluster, isolated):
    _, config = cluster
    fake_istioctl(isolated, f"cat <<'EOF'\n{PROXY_STATUS}\nEOF")
    rows = connect(config).proxy_status()
    assert [r["proxy"] for r in rows] == ["istio-ingressgateway-6b8b8d9f7-x2x4k.istio-system",
                                          "productpage-v1-6b746f74dc-9stvs.bookinfo-test"]
    assert rows[0]["RDS"] == "NOT SENT" and rows[1]["RDS"] == "SYNCED"
    assert rows[0]["version"] == "1.20.3" and rows[0]["istiod"] == "istiod-7d4f8b7d8c-abcde"


def test_proxy_status_without_istioctl_asks_istiod(cluster):
    state, config = cluster
    state.add_pod("istiod-1", "istio-system", {"app": "istiod"}, containers=("discovery",))
    syncz = [{"proxy": "productpage-v1-abc.bookinfo-test", "istio_version": "1.20.3",
              "cluster_sent": "n1", "cluster_acked": "n1", "listener_sent": "n2",
              "listener_acked": "n1", "route_sent": "n3", "route_acked": "n3"}]
    state.exec_handler = lambda call: (json.dumps(syncz), "", 0)
    rows = connect(config).proxy_status()
    assert state.execs[-1] == ExecCall("istiod-1", "istio-system", "discovery",
                                       ["pilot-discovery", "request", "GET", "/debug/syncz"])
    assert rows[0]["proxy"] == "productpage-v1-abc.bookinfo-test"
    assert (rows[0]["CDS"], rows[0]["LDS"], rows[0]["EDS"]) == ("SYNCED", "STALE", "NOT SENT")


# --- Istio itself ----------------------------------------------------------------------------


def test_install_without_istioctl_says_where_to_get_it(cluster):
    _, config = cluster
    with pytest.raises(BackendError) as err:
        connect(config).install()
    assert "istioctl" in str(err.value)
    assert "https://istio.io/latest/docs/setup/getting-started/#download" in str(err.value)


def test_install_runs_istioctl_with_the_demo_profile_and_values(cluster, isolated):
    _, config = cluster
    log = fake_istioctl(isolated, "printf '✔ Istio core installed\\n✔ Istiod installed\\n"
                                  "✔ Installation complete\\n'")
    lines = connect(config).install(values={"values.pilot.env.ENABLE_TLS_ON_SIDECAR_INGRESS":
                                            "true"})
    assert lines == ["Istio core installed", "Istiod installed", "Installation complete"]
    assert log.read_text().split() == [
        "install", "--set", "profile=demo", "-y", "--set",
        "values.pilot.env.PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING=true", "--set",
        "values.pilot.env.ENABLE_TLS_ON_SIDECAR_INGRESS=true", "--kubeconfig", str(config)]


def test_a_failed_install_shows_istioctls_words(cluster, isolated):
    _, config = cluster
    fake_istioctl(isolated, "echo 'Error: failed to install manifests: boom' >&2; exit 1")
    with pytest.raises(BackendError, match="failed \\(exit 1\\):\nError: failed to install"):
        connect(config).install()


def test_verify_install_parses_istioctl(cluster, isolated):
    _, config = cluster
    fake_istioctl(isolated, """cat <<'EOF'
1 Istio control planes detected, checking --revision "default" only
✔ Deployment: istiod.istio-system checked successfully
✘ Deployment: istio-egressgateway.istio-system: not ready
✔ CustomResourceDefinition: gateways.networking.istio.io.istio-system checked successfully
✔ Istio is installed and verified successfully
EOF""")
    rows = connect(config).verify_install()
    assert [(r["component"], r["kind"], r["ok"]) for r in rows] == [
        ("istiod", "Deployment", True), ("istio-egressgateway", "Deployment", False),
        ("gateways.networking.istio.io", "CustomResourceDefinition", True)]
    assert rows[1]["detail"] == "not ready"


def test_verify_install_without_istioctl_checks_the_deployments(cluster):
    state, config = cluster
    backend = connect(config)
    del state.objects[("apps", "deployments", "istio-system", "istio-egressgateway")]
    rows = {r["component"]: r for r in backend.verify_install()}
    assert rows["istiod"]["ok"] and rows["istio-ingressgateway"]["ok"]
    assert not rows["istio-egressgateway"]["ok"]
    assert rows["istio-egressgateway"]["detail"] == "not found"


def test_uninstall_purges_istio_and_deletes_the_lab_namespaces(cluster, isolated):
    state, config = cluster
    log = fake_istioctl(isolated, "exit 0")
    backend = connect(config)
    backend.create_namespace("bookinfo-test", {"istio-injection": "enabled"})
    state.add_namespace("someone-elses")  # not applied by lablib: left alone
    backend.uninstall()
    assert "uninstall --purge -y" in log.read_text()
    deleted = [r.path for r in state.sent("DELETE")]
    assert deleted == ["/api/v1/namespaces/bookinfo-test", "/api/v1/namespaces/istio-system"]


def test_uninstall_without_istioctl_says_where_to_get_it(cluster):
    _, config = cluster
    with pytest.raises(BackendError, match="getting-started/#download"):
        connect(config).uninstall()


# --- the ingress address ---------------------------------------------------------------------


def test_ingress_is_the_load_balancer_address_when_there_is_one(cluster, capsys):
    state, config = cluster
    state.put("", "services", ingress_service(lb=[{"ip": "172.18.255.200"}]))
    assert connect(config).ingress_address() == ("172.18.255.200", 80)
    assert "load balancer" in capsys.readouterr().out


def test_ingress_is_a_node_and_its_node_port_when_reachable(cluster, capsys):
    state, config = cluster
    with socket.create_server(("127.0.0.1", 0)) as node:
        port = node.getsockname()[1]
        state.put("", "services", ingress_service(node_port=port))
        state.put("", "nodes", {"apiVersion": "v1", "kind": "Node",
                                "metadata": {"name": "lab-control-plane"},
                                "status": {"addresses": [{"type": "InternalIP",
                                                          "address": "127.0.0.1"}]}})
        assert connect(config).ingress_address("http2") == ("127.0.0.1", port)
    assert "node lab-control-plane at 127.0.0.1, NodePort" in capsys.readouterr().out


def test_ingress_falls_back_to_a_port_forward_to_the_gateway_pod(cluster, capsys):
    state, config = cluster
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    state.put("", "services", ingress_service(node_port=closed))
    state.put("", "nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                            "status": {"addresses": [{"type": "InternalIP",
                                                      "address": "127.0.0.1"}]}})
    state.add_pod("istio-ingressgateway-1", "istio-system", {"istio": "ingressgateway"},
                  containers=("istio-proxy",))
    backend = connect(config)
    try:
        host, port = backend.ingress_address()
        assert (host, port) == ("127.0.0.1", closed)  # the NodePort's number, bound here
        assert backend.ingress_address() == (host, port)  # one forward, reused
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            conn.settimeout(5)
            assert conn.recv(100) == b"echo:GET / HTTP/1.0\r\n\r\n"
        forwards = state.sent("GET", "/portforward")
        assert forwards[-1].path == ("/api/v1/namespaces/istio-system/pods/"
                                     "istio-ingressgateway-1/portforward")
        assert forwards[-1].query["ports"] == ["8080"]
        assert "forwarding 127.0.0.1:" in capsys.readouterr().out
    finally:
        backend.close()


def test_an_unknown_ingress_port_names_the_ones_there_are(cluster):
    _, config = cluster
    with pytest.raises(NotFoundError, match="has no port named \"tcp\".*http2"):
        connect(config).ingress_address("tcp")


# --- Istio's addons: istioctl dashboard, and Prometheus for the telemetry labs ----------------


def prometheus_service() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "prometheus", "namespace": "istio-system"},
            "spec": {"selector": {"app.kubernetes.io/name": "prometheus"},
                     "ports": [{"name": "http", "port": 9090, "targetPort": 9090}]}}


def test_dashboard_forwards_a_local_port_to_the_addon_pod(cluster, capsys):
    state, config = cluster
    state.put("", "services", prometheus_service())
    state.add_pod("prometheus-7b8b9dd44c-abcde", "istio-system",
                  {"app.kubernetes.io/name": "prometheus"}, containers=("prometheus-server",))
    backend = connect(config)
    try:
        url = backend.dashboard_url("prometheus")
        assert url.startswith("http://127.0.0.1:")
        assert backend.dashboard_url("prometheus") == url  # one forward, reused
        assert backend.telemetry_endpoints() == {"prometheus": url, "metrics": "", "note": ""}
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"GET /-/ready HTTP/1.0\r\n\r\n")
            conn.settimeout(5)
            assert conn.recv(100) == b"echo:GET /-/ready HTTP/1.0\r\n\r\n"
        forward = state.sent("GET", "/portforward")[-1]
        assert forward.path == ("/api/v1/namespaces/istio-system/pods/"
                                "prometheus-7b8b9dd44c-abcde/portforward")
        assert forward.query["ports"] == ["9090"]
        assert "forwarding 127.0.0.1:" in capsys.readouterr().out
    finally:
        backend.close()


def test_without_the_addon_telemetry_says_how_to_install_it(cluster):
    _, config = cluster
    backend = connect(config)
    found = backend.telemetry_endpoints()
    assert found["prometheus"] == "" and found["metrics"] == ""
    assert "no Service istio-system/prometheus" in found["note"]
    assert "make istio" in found["note"] and "samples/addons/prometheus.yaml" in found["note"]
    from lablib import telemetry

    with pytest.raises(BackendError, match="no metrics to read: Istio's prometheus addon"):
        telemetry.connect(backend)
    with pytest.raises(NotFoundError, match="kiali addon is not installed"):
        backend.dashboard_url("kiali")
    with pytest.raises(BackendError, match='unknown dashboard "jaeger"'):
        backend.dashboard_url("jaeger")


# --- a classroom: one namespace prefix per learner -------------------------------------------


def test_a_prefix_moves_everything_into_the_learners_namespaces(cluster, monkeypatch):
    state, config = cluster
    monkeypatch.setenv("LAB_NAMESPACE_PREFIX", "alice")
    state.add_namespace("bob-bookinfo-test")
    put_manifests(state, "samples/bookinfo/platform/kube/bookinfo.yaml", "alice-bookinfo-test")
    backend = connect(config)
    backend.create_namespace("bookinfo-test", {"istio-injection": "enabled"})
    assert state.sent("PATCH")[-1].path == "/api/v1/namespaces/alice-bookinfo-test"
    vs = copy.deepcopy(VS_REVIEWS)
    vs["spec"]["http"][0]["route"][0]["destination"]["host"] = (
        "reviews.bookinfo-test.svc.cluster.local")
    assert backend.apply(vs, "bookinfo-test") == [
        "virtualservice.networking.istio.io/reviews created"]
    sent = state.sent("PATCH")[-1]
    assert sent.path.endswith("/namespaces/alice-bookinfo-test/virtualservices/reviews")
    assert sent.body["metadata"]["namespace"] == "alice-bookinfo-test"
    assert sent.body["spec"]["http"][0]["route"][0]["destination"]["host"] == (
        "reviews.alice-bookinfo-test.svc.cluster.local")
    # Read back, it is as the lab wrote it; other learners' namespaces are not shown.
    got = backend.get("vs", "reviews", "bookinfo-test")[0]
    assert got["metadata"]["namespace"] == "bookinfo-test"
    assert got["spec"]["http"][0]["route"][0]["destination"]["host"] == (
        "reviews.bookinfo-test.svc.cluster.local")
    names = {n["metadata"]["name"] for n in backend.get("namespace")}
    assert "bookinfo-test" in names and "istio-system" in names
    assert not names & {"bob-bookinfo-test", "alice-bookinfo-test", "default"}


def test_a_prefix_gives_each_learner_a_default_namespace(cluster, monkeypatch):
    state, config = cluster
    monkeypatch.setenv("LAB_NAMESPACE_PREFIX", "alice-")
    put_manifests(state, "samples/bookinfo/platform/kube/bookinfo.yaml", "alice-default")
    backend = connect(config)
    backend.apply(VS_REVIEWS)
    assert ("", "namespaces", "", "alice-default") in state.objects
    assert state.sent("PATCH")[-1].path.endswith("/namespaces/alice-default/virtualservices/"
                                                 "reviews")


def test_a_prefix_applies_to_exec_and_proxy_output(cluster, monkeypatch):
    state, config = cluster
    monkeypatch.setenv("LAB_NAMESPACE_PREFIX", "alice")
    state.add_pod("productpage-v1-abc", "alice-bookinfo-test", {"app": "productpage"})
    state.exec_handler = lambda call: (
        '{"name": "outbound|9080|v1|reviews.alice-bookinfo-test.svc.cluster.local"}', "", 0)
    backend = connect(config)
    dump = backend.proxy_admin("productpage-v1-abc", "bookinfo-test", "config_dump")
    assert dump == '{"name": "outbound|9080|v1|reviews.bookinfo-test.svc.cluster.local"}'
    assert state.execs[-1].namespace == "alice-bookinfo-test"
    assert backend.pod_name({"app": "productpage"}, "bookinfo-test") == "productpage-v1-abc"


def test_with_a_prefix_install_leaves_the_shared_istio_alone(cluster, monkeypatch, isolated):
    state, config = cluster
    monkeypatch.setenv("LAB_NAMESPACE_PREFIX", "alice")
    log = fake_istioctl(isolated, "exit 0")
    backend = connect(config)
    istiod = state.objects.pop(("apps", "deployments", "istio-system", "istiod"))
    with pytest.raises(BackendError, match="ask whoever runs the cluster"):
        backend.install()
    state.put("apps", "deployments", istiod)
    assert "left as it is" in backend.install()[0]
    backend.create_namespace("bookinfo-test")
    state.add_namespace("bob-bookinfo-test")
    backend.uninstall()
    assert [r.path for r in state.sent("DELETE")] == ["/api/v1/namespaces/alice-bookinfo-test"]
    assert not log.exists()


# --- connect() and import weight -------------------------------------------------------------


def test_importing_lablib_does_not_import_kubernetes() -> None:
    import subprocess

    code = ("import sys, lablib, lablib.labs, lablib.traffic, lablib.proxyconfig, lablib.tables, "
            "lablib.kube, lablib.kube.namespaces; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"
