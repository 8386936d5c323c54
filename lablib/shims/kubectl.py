"""`kubectl` for the local mesh: the subset the Istio tasks type, with kubectl's flags, output
and errors. On the kubernetes backend it is the real kubectl.

    kubectl_main(["get", "svc", "-n", "istio-system", "-o", "wide"])  -> exit code
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config.install import GATEWAY_NAMES, PROFILE_ANNOTATION
from ..config.loader import KIT_ROOT, load
from ..errors import BackendError, ConfigError, NotFoundError
from ..local.client import LocalBackend
from ..local.state import StateDir
from . import addons as addons_
from . import jsonpath, podtools, printers
from .dispatch import Command, Tool
from .dispatch import err as _err
from .dispatch import out as _out
from .flags import Flag, Parsed, UsageError
from .kinds import ALL, Kind, by_kind, resolve
from .session import ISTIO_VERSION, Failure, connect

__all__ = ["kubectl_main"]

Item = dict[str, Any]

GLOBAL = [Flag("namespace", "n"), Flag("context"), Flag("kubeconfig"), Flag("cluster"),
          Flag("request-timeout"), Flag("v", "v"), Flag("help", "h", "bool")]
SHIM_VERSION = "lablib-shim (the kubectl subset of the Istio Lab Kit's local mesh)"


# --- helpers ------------------------------------------------------------------------------------


def _namespace(p: Parsed) -> str:
    return str(p.get("namespace") or "default")


def _not_found(kind: Kind, name: str) -> str:
    return f'Error from server (NotFound): {kind.resource} "{name}" not found'


@dataclass(frozen=True)
class Requirement:
    """One term of a label selector."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def __call__(self, labels: dict[str, str]) -> bool:
        if self.op in ("exists", "!exists"):
            return (self.key in labels) == (self.op == "exists")
        inside = labels.get(self.key) in self.values
        return inside if self.op in ("=", "in") else not inside


def _selector(text: str | None) -> Callable[[dict[str, str]], bool]:
    """A label selector (`a=b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`) as a test."""
    requirements: list[Requirement] = []
    for part in re.split(r",(?![^()]*\))", text or ""):
        part = part.strip()
        if not part:
            continue
        match = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", part)
        if match:
            values = frozenset(v.strip() for v in match[3].split(","))
            requirements.append(Requirement(match[1], match[2], values))
            continue
        match = re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)", part)
        if match:
            op = "!=" if match[2] == "!=" else "="
            requirements.append(Requirement(match[1], op, frozenset([match[3]])))
            continue
        match = re.fullmatch(r"(!?)([\w./-]+)", part)
        if not match:
            raise UsageError(f"unable to parse requirement: {part!r}")
        requirements.append(Requirement(match[2], "!exists" if match[1] else "exists"))
    return lambda labels: all(test(labels) for test in requirements)


def _labels(item: Item) -> dict[str, str]:
    return dict((item.get("metadata") or {}).get("labels") or {})


def _sorted(items: list[Item]) -> list[Item]:
    """The API server lists objects by namespace, then name."""
    return sorted(items, key=lambda i: (i["metadata"].get("namespace", ""),
                                        i["metadata"]["name"]))


def _targets(args: Sequence[str]) -> list[tuple[Kind, list[str]]]:
    """`svc,deploy a b` or `svc/a deploy/b`: each kind with the names asked for."""
    if not args:
        raise UsageError('You must specify the type of resource to get. Use "kubectl '
                         'api-resources" for a complete list of supported resources.')
    if any("/" in a for a in args):
        if not all("/" in a for a in args):
            raise UsageError("there is no need to specify a resource type as a separate "
                             "argument when passing arguments in resource/name form (e.g. "
                             "'kubectl get resource/<resource_name>' instead of 'kubectl get "
                             "resource resource/<resource_name>'")
        out: list[tuple[Kind, list[str]]] = []
        for arg in args:
            word, _, name = arg.partition("/")
            out.append((resolve(word), [name]))
        return out
    kinds: list[Kind] = []
    for word in args[0].split(","):
        kinds.extend(ALL if word == "all" else [resolve(word)])
    return [(k, list(args[1:])) for k in kinds]


def _istio_operators(mesh: LocalBackend, namespace: str | None) -> list[Item]:
    """The IstioOperator `istioctl install` leaves in istio-system, `installed-state`: the
    record of what it installed. The local mesh keeps its settings on istiod's Deployment
    (the `--set values.pilot.env.*` flags as container env), so it is read back from there."""
    if namespace not in (None, "istio-system"):
        return []
    istiod = [d for d in mesh.get("Deployment", namespace="istio-system")
              if d["metadata"]["name"] == "istiod"]
    if not istiod:
        return []
    containers = istiod[0]["spec"]["template"]["spec"]["containers"]
    env = {str(e["name"]): str(e.get("value", "")) for e in containers[0].get("env") or []}
    profile = (istiod[0]["metadata"].get("annotations") or {}).get(PROFILE_ANNOTATION, "demo")
    running = {d["metadata"]["name"] for d in mesh.get("Deployment", namespace="istio-system")}
    components: Item = {"base": {"enabled": True}, "pilot": {"enabled": True}}
    for part, name in GATEWAY_NAMES.items():
        components[part] = [{"name": name, "enabled": name in running}]
    spec: Item = {"profile": profile, "hub": "docker.io/istio", "tag": ISTIO_VERSION,
                  "components": components}
    if env:
        spec["values"] = {"pilot": {"env": env}}
    return [{"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
             "metadata": {"name": "installed-state", "namespace": "istio-system",
                          "creationTimestamp": istiod[0]["metadata"].get("creationTimestamp"),
                          "annotations": {"install.istio.io/ignoreReconcile": "true"}},
             "spec": spec}]


def _at_version(item: Item, kind: Kind) -> Item:
    """The object at the version asked for (`vs.v1alpha3.networking.istio.io`), else at the
    preferred one: versions of one Istio kind share a schema, so only apiVersion changes."""
    return {**item, "apiVersion": kind.api_version}


def _objects(mesh: LocalBackend, kind: Kind, namespace: str | None) -> list[Item]:
    """Every object of `kind` (in `namespace`, None for all), as the API server lists them."""
    if kind.kind == "IstioOperator":
        return _istio_operators(mesh, namespace if kind.namespaced else None)
    return [_at_version(i, kind)
            for i in mesh.get(kind.kind, namespace=namespace if kind.namespaced else None)]


def _read_only(kind: Kind) -> None:
    if kind.kind == "IstioOperator":
        raise Failure("error: the local mesh's IstioOperator only reports what `istioctl "
                      "install` set: change it with istioctl install --set ..., remove it "
                      "with istioctl uninstall --purge")


def _fetch(mesh: LocalBackend, kind: Kind, name: str, namespace: str | None) -> Item:
    """One object; kubectl's NotFound error if there is none."""
    try:
        if kind.kind == "IstioOperator":
            found = [i for i in _objects(mesh, kind, namespace)
                     if i["metadata"]["name"] == name]
        else:
            found = mesh.get(kind.kind, name, namespace if kind.namespaced else None)
    except NotFoundError:
        found = []
    if not found:
        raise Failure(_not_found(kind, name))
    return _at_version(found[0], kind)


def _editable(item: Item) -> Item:
    """What a client sends back: the object without the status the server computes."""
    body = copy.deepcopy(item)
    body.pop("status", None)
    return body


def _pod_of(mesh: LocalBackend, target: str, namespace: str) -> str:
    """`POD`, `pod/POD` or `deploy/NAME` (its first pod) as a pod name."""
    word, slash, name = target.partition("/")
    if not slash:
        return target
    kind = resolve(word)
    if kind.kind == "Pod":
        return name
    if kind.kind != "Deployment":
        raise UsageError(f"cannot attach to {kind.word}: not implemented")
    deployment = _fetch(mesh, kind, name, namespace)
    selector = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    pods = [p for p in mesh.get("pods", namespace=namespace, selector=selector)
            if p["metadata"]["name"].rsplit("-", 2)[0] == name]
    if not pods:
        raise Failure(f"error: no pods of {kind.word}/{name} found")
    return str(pods[0]["metadata"]["name"])


def _duration(text: str | None, default: float) -> float:
    """A Go duration (`300s`, `5m`, `1h30m`, `250ms`) in seconds."""
    if not text:
        return default
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        if text == "0":
            return 0.0
        raise UsageError(f'invalid argument "{text}" for "--timeout" flag: time: missing unit '
                         f'in duration "{text}"')
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


# --- sources of manifests -------------------------------------------------------------------


def _source(name: str) -> str:
    """What to hand `mesh.apply` for one `-f`: a path, or the text of stdin or a pipe."""
    if name == "-":
        return sys.stdin.read() + "\n"
    if re.match(r"https?://", name):
        raise Failure(f'error: unable to read URL "{name}": the local mesh works offline. '
                      f"Download the file where you have internet, then: kubectl apply -f FILE")
    path = Path(name).expanduser()
    for candidate in (path, KIT_ROOT / path):
        if candidate.exists():
            if not candidate.is_file() and not candidate.is_dir():
                return candidate.read_text() + "\n"  # a pipe: `-f <(istioctl kube-inject ...)`
            return str(candidate)
    raise Failure(f'error: the path "{name}" does not exist')


def _refused(exc: ConfigError, sources: Sequence[str], verb: str) -> Failure:
    """A refused apply: kubectl's NotFound for a missing namespace, else the analyzer's words."""
    errors = [d for d in exc.diagnostics if d.severity == "Error"]
    missing = {m[1] for d in errors for m in [re.match(r'namespace "([^"]+)" does not exist',
                                                      d.message)] if m}
    if len(missing) == 1:
        where = sources[0] if len(sources) == 1 else ", ".join(sources)
        return Failure(f'Error from server (NotFound): error when {verb} "{where}": namespaces '
                       f'"{missing.pop()}" not found')
    return Failure("error: " + str(exc))


# --- verbs ----------------------------------------------------------------------------------


def cmd_get(p: Parsed) -> int:
    fmt = p.get("output")
    if p.get("watch"):
        raise Failure("error: --watch is not supported by the local mesh's kubectl; run the "
                      "command again (or use `watch kubectl get ...`)")
    targets = _targets(p.args)
    matches = _selector(p.get("selector"))
    mesh = connect()
    all_ns = bool(p.get("all-namespaces"))
    namespace = None if all_ns else _namespace(p)
    items: list[Item] = []
    errors: list[str] = []
    named = 0
    for kind, names in targets:
        ns = namespace if kind.namespaced else None
        if names:
            for name in names:
                named += 1
                try:
                    items.append(_fetch(mesh, kind, name, ns))
                except Failure as exc:
                    if not p.get("ignore-not-found"):
                        errors.append(exc.message)
        else:
            items += _sorted([i for i in _objects(mesh, kind, ns)
                              if matches(_labels(i))])
    if fmt in (None, "wide"):
        if items:
            _out(printers.get_table(items, fmt == "wide", all_ns, bool(p.get("show-labels")),
                                    not p.get("no-headers")) + "\n")
        elif not errors:
            # kubectl: "No resources found" ends with a period only when it names a namespace.
            if all_ns or not all(k.namespaced for k, _ in targets):
                _err("No resources found")
            else:
                _err(f"No resources found in {namespace} namespace.")
    elif items or not errors:
        _out(printers.output(str(fmt), items, single=named == 1 and len(items) == 1))
    for message in errors:
        _err(message)
    return 1 if errors else 0


def cmd_describe(p: Parsed) -> int:
    targets = _targets(p.args)
    matches = _selector(p.get("selector"))
    mesh = connect()
    namespace = _namespace(p)
    texts, errors = [], []
    for kind, names in targets:
        ns = namespace if kind.namespaced else None
        listed = [i for i in _objects(mesh, kind, ns) if matches(_labels(i))]
        chosen = _sorted(listed)
        if names:
            chosen = []
            for name in names:
                exact = [i for i in listed if i["metadata"]["name"] == name]
                # As kubectl: a name that matches nothing exactly is tried as a prefix.
                found = exact or [i for i in listed if i["metadata"]["name"].startswith(name)]
                if not found:
                    errors.append(_not_found(kind, name))
                chosen += found
        for item in chosen:
            endpoints = _endpoints(mesh, item) if kind.kind == "Service" else None
            texts.append(printers.describe(item, endpoints))
    if texts:
        _out("\n\n\n".join(texts) + "\n")
    elif not errors:
        _err(f"No resources found in {namespace} namespace.")
    for message in errors:
        _err(message)
    return 1 if errors else 0


def _endpoints(mesh: LocalBackend, service: Item) -> dict[str, list[str]]:
    """targetPort -> the `127.0.0.1:port` of every pod behind a Service."""
    return {target: [f"127.0.0.1:{port}" for port in ports]
            for target, ports in mesh.service_endpoints(service).items()}


def _apply_sources(p: Parsed) -> list[str]:
    files = list(p.get("filename") or [])
    if not files:
        raise UsageError("must specify one of -f and -k")
    sources = []
    for name in files:
        addon = addons_.addon_of(name)
        local = addons_.local_file(addon) if addon else None
        if addon and local is None:
            _out(addons_.skipped(addon))
        elif local is not None:  # Istio's addon URL: the kit's own samples/addons file
            sources.append(str(local))
            if addon == "prometheus" and addons_.prometheus_note():
                _err(addons_.prometheus_note())
        else:
            sources.append(_source(name))
    return sources


def _selected(sources: list[str], p: Parsed) -> list[Any]:
    """`-l SELECTOR`: only the manifests whose labels match, as `kubectl apply -f F -l S`."""
    if not p.get("selector"):
        return list(sources)
    matches = _selector(p.get("selector"))
    return [r.body for r in load(sources, namespace=p.get("namespace")) if matches(r.labels)]


NO_OBJECTS = "no objects passed to apply"


def cmd_apply(p: Parsed) -> int:
    sources = _apply_sources(p)
    if not sources:
        return 0
    chosen = _selected(sources, p)
    if not chosen:
        raise Failure("error: no objects passed to apply")
    mesh = connect(start=True)
    try:
        lines = mesh.apply(chosen, namespace=p.get("namespace"))
    except ConfigError as exc:
        if [d.message for d in exc.diagnostics] == [NO_OBJECTS]:
            raise Failure(f"error: {NO_OBJECTS}") from None  # kubectl's words, alone
        raise _refused(exc, p.get("filename"), "creating") from None
    if not lines:
        raise Failure("error: no objects passed to apply")
    _print_applied(lines)
    return 0


def _print_applied(lines: list[str]) -> None:
    """The objects' lines on stdout; the mesh's warnings on stderr, as kubectl prints an
    admission webhook's."""
    for line in lines:
        if line.startswith("Warning: "):
            _err(line)
    _out("".join(line + "\n" for line in lines if not line.startswith("Warning: ")))


def _create_object(p: Parsed, body: Item, kind: Kind) -> int:
    """Create one object as `kubectl create` does: AlreadyExists if it is there."""
    namespace = _namespace(p)
    if kind.namespaced and p.get("namespace"):
        body["metadata"]["namespace"] = namespace
    dry_run = p.get("dry-run")
    if dry_run not in (None, "none"):
        if p.get("output"):
            _out(printers.output(str(p.get("output")), [body], single=True))
        else:
            _out(f"{kind.word}/{body['metadata']['name']} created (dry run)\n")
        return 0
    mesh = connect(start=True)
    name = body["metadata"]["name"]
    existing = mesh.get(kind.kind, namespace=namespace if kind.namespaced else None)
    if any(i["metadata"]["name"] == name for i in existing):
        raise Failure(f'Error from server (AlreadyExists): {kind.resource} "{name}" already '
                      f"exists")
    try:
        lines = mesh.apply(body, namespace=namespace if kind.namespaced else None)
    except ConfigError as exc:
        raise _refused(exc, [name], "creating") from None
    if p.get("output"):
        _out(printers.output(str(p.get("output")), [body], single=True))
    else:
        _print_applied([line.replace(" configured", " created") for line in lines])
    return 0


def _file_entries(specs: Iterable[str]) -> list[tuple[str, bytes]]:
    """`--from-file=[key=]path` (a folder gives one key per file) as (key, bytes)."""
    out = []
    for spec in specs:
        key, eq, path_text = spec.partition("=")
        if not eq:
            key, path_text = "", spec
        path = Path(path_text).expanduser()
        if path.is_dir():
            out += [(f.name, f.read_bytes()) for f in sorted(path.iterdir()) if f.is_file()]
        elif path.is_file():
            out.append((key or path.name, path.read_bytes()))
        else:
            raise Failure(f"error: error reading {path_text}: no such file or directory")
    return out


def _literals(specs: Iterable[str]) -> list[tuple[str, bytes]]:
    out = []
    for spec in specs:
        key, eq, value = spec.partition("=")
        if not eq or not key:
            raise UsageError(f'invalid literal source {spec}, expected key=value')
        out.append((key, value.encode()))
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def cmd_create(p: Parsed) -> int:
    if p.get("filename"):
        return _create_from_files(p)
    if not p.args:
        raise UsageError("must specify one of -f and -k")
    what, rest = p.args[0], p.args[1:]
    if what in ("ns", "namespace"):
        if len(rest) != 1:
            raise UsageError("exactly one NAME is required, got " + str(len(rest)))
        body: Item = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": rest[0]}}
        return _create_object(p, body, by_kind("Namespace"))
    if what in ("sa", "serviceaccount"):
        if len(rest) != 1:
            raise UsageError("exactly one NAME is required, got " + str(len(rest)))
        body = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": rest[0]}}
        return _create_object(p, body, by_kind("ServiceAccount"))
    if what in ("cm", "configmap"):
        if len(rest) != 1:
            raise UsageError("exactly one NAME is required, got " + str(len(rest)))
        data, binary = {}, {}
        for key, value in _file_entries(p.get("from-file")) + _literals(p.get("from-literal")):
            try:
                data[key] = value.decode()
            except UnicodeDecodeError:
                binary[key] = _b64(value)
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": rest[0]},
                "data": data}
        if binary:
            body["binaryData"] = binary
        return _create_object(p, body, by_kind("ConfigMap"))
    if what == "secret":
        return _create_secret(p, rest)
    raise UsageError(f'unknown command "{what}" for "kubectl create"')


def _create_secret(p: Parsed, rest: list[str]) -> int:
    if len(rest) != 2 or rest[0] not in ("generic", "tls"):
        raise UsageError("use `kubectl create secret generic NAME --from-file=...` or "
                         "`kubectl create secret tls NAME --cert=FILE --key=FILE`")
    flavour, name = rest
    if flavour == "tls":
        cert, key = p.get("cert"), p.get("key")
        if not cert or not key:
            raise UsageError("requires both --cert and --key")
        entries = _file_entries([f"tls.crt={cert}", f"tls.key={key}"])
        secret_type = "kubernetes.io/tls"
    else:
        entries = _file_entries(p.get("from-file")) + _literals(p.get("from-literal"))
        secret_type = str(p.get("type") or "Opaque")
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "type": secret_type, "data": {k: _b64(v) for k, v in entries}}
    return _create_object(p, body, by_kind("Secret"))


def _create_from_files(p: Parsed) -> int:
    sources = _apply_sources(p)
    namespace = p.get("namespace")
    resources = load(sources, namespace=namespace)
    mesh = connect(start=True)
    errors = []
    fresh = []
    for r in resources:
        kind = by_kind(r.kind)
        if any(i["metadata"]["name"] == r.name for i in mesh.get(
                r.kind, namespace=r.namespace if kind.namespaced else None)):
            errors.append(f'Error from server (AlreadyExists): error when creating '
                          f'"{r.source.split(",")[0]}": {kind.resource} "{r.name}" already exists')
        else:
            fresh.append(r.body)
    if fresh:
        try:
            lines = mesh.apply(fresh, namespace=namespace)
        except ConfigError as exc:
            raise _refused(exc, p.get("filename"), "creating") from None
        _print_applied(lines)
    for message in errors:
        _err(message)
    return 1 if errors else 0


def cmd_delete(p: Parsed) -> int:
    targets = [] if p.get("filename") else _targets(p.args)
    matches = _selector(p.get("selector"))
    if LocalBackend.attach(StateDir()) is None:
        # `istioctl uninstall --purge` stops the whole local mesh, namespaces included; the
        # tasks' cleanup deletes them afterwards, which on a cluster succeeds.
        _err(f'nothing to delete: the local mesh "{StateDir().mesh}" is not running (istioctl '
             f"uninstall --purge stops it with every namespace and object in it)")
        return 0
    mesh = connect()
    namespace = _namespace(p)
    refs: list[Item] = []
    errors: list[str] = []
    if p.get("filename"):
        if p.args:
            raise UsageError("there is no need to specify a resource type as a separate "
                             "argument when passing arguments in resource/name form")
        for name in p.get("filename"):
            for r in load(_source(name), namespace=p.get("namespace")):
                if not matches(r.labels):
                    continue
                kind = by_kind(r.kind)
                present = any(i["metadata"]["name"] == r.name for i in mesh.get(
                    r.kind, namespace=r.namespace if kind.namespaced else None))
                if present:
                    refs.append(_ref(kind, r.name, r.namespace))
                elif not p.get("ignore-not-found"):
                    errors.append(f'Error from server (NotFound): error when deleting "{name}": '
                                  f'{kind.resource} "{r.name}" not found')
    else:
        for kind, names in targets:
            if kind.kind == "Pod":
                raise Failure("error: deleting a pod is not supported by the local mesh; "
                              "`kubectl rollout restart deploy/NAME` gives a Deployment new "
                              "pods")
            _read_only(kind)
            ns = namespace if kind.namespaced else None
            existing = {i["metadata"]["name"]: i for i in mesh.get(kind.kind, namespace=ns)}
            if not names:
                if not (p.get("all") or p.get("selector")):
                    raise UsageError("resource(s) were provided, but no name was specified")
                names = [n for n, i in existing.items() if matches(_labels(i))]
            for name in names:
                if name in existing:
                    refs.append(_ref(kind, name, ns or ""))
                elif not p.get("ignore-not-found"):
                    errors.append(_not_found(kind, name))
    if refs:
        lines = mesh.delete(refs, ignore_missing=True)
        _out("".join(line + "\n" for line in lines))
    elif not errors and not p.get("filename"):
        _err("No resources found")
    for message in errors:
        _err(message)
    return 1 if errors else 0


def _ref(kind: Kind, name: str, namespace: str) -> Item:
    ref = kind.ref(name)
    if kind.namespaced:
        ref["metadata"] = {"name": name, "namespace": namespace}
    return ref


def _one_target(p: Parsed, verb: str) -> tuple[Kind, str, list[str]]:
    """`TYPE NAME rest...` or `TYPE/NAME rest...`."""
    if not p.args:
        raise UsageError(f"you must specify the type of resource to {verb}")
    if "/" in p.args[0]:
        word, _, name = p.args[0].partition("/")
        kind, rest = resolve(word), p.args[1:]
    elif len(p.args) < 2:
        raise UsageError(f"you must specify the name of the resource to {verb}")
    else:
        kind, name, rest = resolve(p.args[0]), p.args[1], p.args[2:]
    _read_only(kind)
    return kind, name, rest


def _update(mesh: LocalBackend, kind: Kind, body: Item, before: Item, word: str,
            unchanged: str) -> int:
    if body == before:
        _out(f"{kind.word}/{body['metadata']['name']} {unchanged}\n")
        return 0
    try:
        mesh.apply(body)
    except ConfigError as exc:
        raise Failure("error: " + str(exc)) from None
    _out(f"{kind.word}/{body['metadata']['name']} {word}\n")
    return 0


def _relabel(p: Parsed, field_name: str, verb: str, done: str) -> int:
    kind, name, changes = _one_target(p, verb)
    if kind.kind == "Pod":
        raise Failure(f"error: pods of the local mesh take their {field_name} from their "
                      f"Deployment; {verb} the deployment instead")
    if not changes:
        raise UsageError(f"at least one {field_name[:-1]} update is required")
    mesh = connect()
    before = _editable(_fetch(mesh, kind, name, _namespace(p)))
    body = copy.deepcopy(before)
    values = body.setdefault("metadata", {}).setdefault(field_name, {})
    for change in changes:
        if change.endswith("-") and "=" not in change:
            if values.pop(change[:-1], None) is None:
                _err(f'{field_name[:-1]} "{change[:-1]}" not found.')
            continue
        key, eq, value = change.partition("=")
        if not eq or not key:
            raise UsageError(f"invalid {field_name[:-1]} spec: {change}")
        if key in values and values[key] != value and not p.get("overwrite"):
            raise Failure(f"error: '{key}' already has a value ({values[key]}), and "
                          f"--overwrite is false")
        values[key] = value
    if not values:
        body["metadata"].pop(field_name)
    return _update(mesh, kind, body, before, done, f"not {done}")


def cmd_label(p: Parsed) -> int:
    return _relabel(p, "labels", "label", "labeled")


def cmd_annotate(p: Parsed) -> int:
    return _relabel(p, "annotations", "annotate", "annotated")


# Lists whose items a strategic merge patch merges by a key, as Kubernetes' schemas declare.
MERGE_KEYS = {"ports": "port", "containers": "name", "initContainers": "name", "env": "name",
              "volumes": "name", "volumeMounts": "mountPath"}


def merge_patch(target: Any, patch: Any, strategic: bool = False) -> Any:
    """RFC 7386 merge patch; `strategic` also merges lists of objects by their merge key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif (strategic and key in MERGE_KEYS and isinstance(value, list)
              and isinstance(out.get(key), list)):
            merge_key = MERGE_KEYS[key]
            merged = list(out[key])
            for item in value:
                at = next((i for i, old in enumerate(merged) if isinstance(old, dict)
                           and isinstance(item, dict) and old.get(merge_key) ==
                           item.get(merge_key)), None)
                if at is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[at] = merge_patch(merged[at], item, strategic)
            out[key] = merged
        else:
            out[key] = merge_patch(out.get(key), value, strategic)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise Failure(f"error: invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _container(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    for part in parts[:-1]:
        if isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            raise Failure(f'error: unable to apply the json patch: path "{path}" does not exist')
    return doc, parts[-1]


def json_patch(doc: Any, operations: list[Any]) -> Any:
    """RFC 6902: add, remove, replace, move, copy and test."""
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise Failure("error: unable to apply the json patch: each operation needs op and "
                          "path")
        kind, path = op["op"], str(op["path"])
        if kind in ("move", "copy"):
            src_parent, src_key = _container(doc, _pointer(op["from"]), op["from"])
            value = _read(src_parent, src_key, op["from"])
            if kind == "move":
                _remove(src_parent, src_key, op["from"])
            doc = _add(doc, path, copy.deepcopy(value))
        elif kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            parent, key = _container(doc, _pointer(path), path)
            _remove(parent, key, path)
        elif kind == "replace":
            parent, key = _container(doc, _pointer(path), path)
            _read(parent, key, path)
            if isinstance(parent, list):
                parent[int(key)] = copy.deepcopy(op.get("value"))
            else:
                parent[key] = copy.deepcopy(op.get("value"))
        elif kind == "test":
            parent, key = _container(doc, _pointer(path), path)
            if _read(parent, key, path) != op.get("value"):
                raise Failure(f'error: unable to apply the json patch: testing value {path} '
                              f'failed')
        else:
            raise Failure(f'error: unable to apply the json patch: unexpected operation "{kind}"')
    return doc


def _read(parent: Any, key: str, path: str) -> Any:
    if isinstance(parent, list) and key.isdigit() and int(key) < len(parent):
        return parent[int(key)]
    if isinstance(parent, dict) and key in parent:
        return parent[key]
    raise Failure(f'error: unable to apply the json patch: path "{path}" does not exist')


def _remove(parent: Any, key: str, path: str) -> None:
    _read(parent, key, path)
    if isinstance(parent, list):
        del parent[int(key)]
    else:
        del parent[key]


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, key = _container(doc, parts, path)
    if isinstance(parent, list):
        index = len(parent) if key == "-" else int(key) if key.isdigit() else -1
        if not 0 <= index <= len(parent):
            raise Failure(f'error: unable to apply the json patch: path "{path}" does not exist')
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[key] = value
    else:
        raise Failure(f'error: unable to apply the json patch: path "{path}" does not exist')
    return doc


def cmd_patch(p: Parsed) -> int:
    kind, name, rest = _one_target(p, "patch")
    if rest:
        raise UsageError(f"unexpected arguments: {' '.join(rest)}")
    text = p.get("patch")
    if text is None and p.get("patch-file"):
        text = Path(str(p.get("patch-file"))).read_text()
    if text is None:
        raise UsageError("must specify --patch or --patch-file containing the contents of the "
                         "patch")
    try:
        patch = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise Failure(f'error: unable to parse "{text}": {exc}') from None
    mode = str(p.get("type") or "strategic")
    if mode not in ("strategic", "merge", "json"):
        raise UsageError(f'--type must be one of [json merge strategic], not "{mode}"')
    mesh = connect()
    before = _editable(_fetch(mesh, kind, name, _namespace(p)))
    if mode == "json":
        if not isinstance(patch, list):
            raise Failure("error: unable to parse the json patch: a json patch is a list of "
                          "operations")
        body = json_patch(before, patch)
    else:
        if not isinstance(patch, dict):
            raise Failure(f'error: unable to parse "{text}": a {mode} patch is an object')
        body = merge_patch(before, patch, strategic=mode == "strategic")
    return _update(mesh, kind, body, before, "patched", "patched (no change)")


EDIT_HEADER = """\
# Please edit the object below. Lines beginning with a '#' will be ignored,
# and an empty file will abort the edit. If an error occurs while saving this file will be
# reopened with the relevant failures.
#
"""


def cmd_edit(p: Parsed) -> int:
    kind, name, _ = _one_target(p, "edit")
    mesh = connect()
    before = _editable(_fetch(mesh, kind, name, _namespace(p)))
    editor = os.environ.get("KUBE_EDITOR") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", prefix="kubectl-edit-", suffix=".yaml",
                                     delete=False) as handle:
        handle.write(EDIT_HEADER + printers.kube_yaml(before))
    path = handle.name
    status = subprocess.call(f"{editor} {shlex.quote(path)}", shell=True)
    if status != 0:
        raise Failure(f"error: there was a problem with the editor \"{editor}\"")
    text = "\n".join(line for line in Path(path).read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    try:
        body = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise Failure(f"error: the edited file is not valid YAML ({exc}); your changes are "
                      f"in {path}") from None
    if body is None or body == before:
        os.unlink(path)
        _out("Edit cancelled, no changes made.\n")
        return 0
    try:
        mesh.apply(body)
    except ConfigError as exc:
        raise Failure(f"error: {exc}\nA copy of your changes has been stored to \"{path}\""
                      ) from None
    os.unlink(path)
    _out(f"{kind.word}/{name} edited\n")
    return 0


def cmd_exec(p: Parsed) -> int:
    if not p.args:
        raise UsageError("expected 'exec POD_NAME COMMAND [ARG1] [ARG2] ... [ARGN]'.\nPOD_NAME "
                         "and COMMAND are required arguments for the exec command")
    command = p.command if p.command is not None else p.args[1:]
    if not command:
        raise UsageError("you must specify at least one command for the container")
    mesh = connect()
    namespace = _namespace(p)
    pod = _pod_of(mesh, p.args[0], namespace)
    # The command runs on this machine: give it the sample images' `nc` (see podtools).
    os.environ["PATH"] = podtools.exec_path(command, os.environ.get("PATH", ""))
    result = mesh.exec(pod, command, namespace=namespace, container=p.get("container"),
                       timeout=24 * 3600)
    sys.stdout.write(result.stdout or "")
    sys.stdout.flush()
    sys.stderr.write(result.stderr or "")
    if result.returncode:
        _err(f"command terminated with exit code {result.returncode}")
    return int(result.returncode)


def _condition_met(item: Item, condition: str) -> bool:
    """`condition=NAME[=VALUE]` on any kind: its `status.conditions` entry of that type has
    that status (default True), compared without case as kubectl compares them."""
    name, _, value = condition.partition("=")
    for entry in (item.get("status") or {}).get("conditions") or []:
        if str(entry.get("type", "")).lower() == name.lower():
            return str(entry.get("status", "")).lower() == (value or "true").lower()
    return False


@dataclass(frozen=True)
class WaitFor:
    """What `kubectl wait --for=…` waits for: `create`, `delete`, `condition=NAME[=VALUE]` or
    `jsonpath={PATH}[=VALUE]` (without a value: the path holds something)."""

    mode: str
    condition: str = ""
    path: str = ""
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> WaitFor:
        mode, _, rest = text.partition("=")
        mode = mode.lower()
        if mode in ("create", "delete") and not rest:
            return cls(mode)
        if mode == "condition" and rest:
            return cls(mode, condition=rest)
        if mode == "jsonpath" and rest:
            path, value = rest, None
            if rest.startswith("{"):
                close = rest.find("}")
                path, tail = rest[:close + 1], rest[close + 1:]
                if tail:
                    if not tail.startswith("="):
                        raise UsageError(f"unrecognized JSONPath expression: {rest}")
                    value = tail[1:]
            elif "=" in rest:
                path, value = rest.split("=", 1)
            return cls(mode, path=path, value=value)
        raise UsageError(f"unrecognized condition: \"{text}\"")

    def met(self, item: Item | None) -> bool:
        if self.mode == "delete":
            return item is None
        if item is None:
            return False
        if self.mode == "create":
            return True
        if self.mode == "condition":
            return _condition_met(item, self.condition)
        found = [jsonpath.text_of(v) for v in jsonpath.values(self.path, item)]
        if self.value is None:
            return any(found)
        return self.value in found


def cmd_wait(p: Parsed) -> int:
    wanted = str(p.get("for") or "")
    if not wanted:
        raise UsageError("--for must be specified")
    waiting = WaitFor.parse(wanted)
    timeout = _duration(p.get("timeout"), 30.0)
    matches = _selector(p.get("selector"))
    targets = _targets(p.args)
    mesh = connect()
    namespace = _namespace(p)
    deadline = time.monotonic() + timeout
    while True:
        pending: list[str] = []
        met: list[str] = []
        for kind, names in targets:
            if not names and not (p.get("all") or p.get("selector")):
                raise UsageError("resource(s) were provided, but no name was specified")
            ns = namespace if kind.namespaced else None
            items = {i["metadata"]["name"]: i for i in _objects(mesh, kind, ns)
                     if matches(_labels(i))}
            if not names and not items and waiting.mode != "delete":
                raise Failure("error: no matching resources found")
            for name in names or sorted(items):
                item = items.get(name)
                if item is None and waiting.mode not in ("create", "delete"):
                    raise Failure(_not_found(kind, name))
                (met if waiting.met(item) else pending).append(f"{kind.word}/{name}")
        if not pending:
            _out("".join(f"{name} condition met\n" for name in met))
            return 0
        if time.monotonic() >= deadline:
            word, _, name = pending[0].partition("/")
            raise Failure(f"error: timed out waiting for the condition on "
                          f"{resolve(word).plural}/{name}")
        time.sleep(0.2)


def cmd_logs(p: Parsed) -> int:
    selector = p.get("selector")
    if not p.args and not selector:
        raise UsageError("expected 'logs [-f] [-p] (POD | TYPE/NAME) [-c CONTAINER]'.\nPOD or "
                         "TYPE/NAME is a required argument for the logs command")
    if p.args and selector:
        raise UsageError("only a selector (-l) or a POD name is allowed")
    if p.get("follow"):
        raise Failure("error: -f (follow) is not supported by the local mesh's kubectl; run "
                      "the command again to see new lines")
    mesh = connect()
    namespace = _namespace(p)
    container = p.get("container") or (p.args[1] if len(p.args) > 1 else None)
    if selector:
        matches = _selector(selector)
        pods = [str(i["metadata"]["name"]) for i in _sorted(_objects(mesh, resolve("pods"),
                                                                     namespace))
                if matches(_labels(i))]
        if not pods:
            _err(f"No resources found in {namespace} namespace.")
            return 0
    else:
        pods = [_pod_of(mesh, p.args[0], namespace)]
    # As kubectl: every line by default for one pod, the last 10 of each pod for a selector.
    tail = int(p.get("tail") or (10 if selector else -1))
    out = []
    for pod in pods:
        try:
            lines = mesh.logs(pod, namespace, container).splitlines()
        except BackendError as exc:
            raise Failure(str(exc)) from None
        if tail >= 0:
            lines = lines[-tail:] if tail else []
        shown = container or mesh.pod_info(pod, namespace)["containers"][0]
        prefix = f"[pod/{pod}/{shown}] " if p.get("prefix") else ""
        out += [prefix + line + "\n" for line in lines]
    _out("".join(out))
    return 0


def cmd_cp(p: Parsed) -> int:
    if len(p.args) != 2:
        raise UsageError("source and destination are required")
    mesh = connect()
    namespace = _namespace(p)
    ends = []
    for arg in p.args:
        where, colon, path = arg.partition(":")
        if colon and not Path(arg).exists():
            ns, slash, pod = where.rpartition("/")
            info = mesh.pod_info(pod, ns if slash else namespace)
            container = p.get("container")
            if container and container not in info["containers"]:
                raise Failure(f"error: container {container} is not valid for pod {pod}")
            ends.append(path)
        else:
            ends.append(arg)
    # The local mesh's pods share this machine's files: the copy is a plain copy.
    source, dest = Path(ends[0]).expanduser(), Path(ends[1]).expanduser()
    if not source.exists():
        raise Failure(f"error: {ends[0]} doesn't exist in local filesystem")
    if ends[1].endswith("/") or dest.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        dest = dest / source.name
    if source.is_dir():
        shutil.copytree(source, dest, dirs_exist_ok=True)
    else:
        shutil.copyfile(source, dest)
    return 0


def cmd_rollout(p: Parsed) -> int:
    if not p.args or p.args[0] not in ("restart", "status"):
        raise UsageError("use `kubectl rollout restart|status deploy/NAME`")
    action = p.args[0]
    kind, name, _ = _one_target(Parsed(p.args[1:], p.values), "rollout")
    if kind.kind != "Deployment":
        raise Failure(f'error: no rollout support for {kind.resource} on the local mesh')
    mesh = connect()
    namespace = _namespace(p)
    item = _fetch(mesh, kind, name, namespace)
    if action == "status":
        deadline = time.monotonic() + _duration(p.get("timeout"), 600.0)
        while not _condition_met(item, "Available"):
            if time.monotonic() >= deadline:
                raise Failure("error: timed out waiting for the condition")
            time.sleep(0.2)
            item = _fetch(mesh, kind, name, namespace)
        _out(f'deployment "{name}" successfully rolled out\n')
        return 0
    body = _editable(item)
    template = body.setdefault("spec", {}).setdefault("template", {})
    annotations = template.setdefault("metadata", {}).setdefault("annotations", {})
    annotations["kubectl.kubernetes.io/restartedAt"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    mesh.apply(body)
    _out(f"{kind.word}/{name} restarted\n")
    return 0


def cmd_scale(p: Parsed) -> int:
    kind, name, _ = _one_target(p, "scale")
    replicas = p.get("replicas")
    if replicas is None or not str(replicas).isdigit():
        raise UsageError("--replicas=COUNT is required, and COUNT must be greater than or "
                         "equal to 0")
    if kind.kind != "Deployment":
        raise Failure(f"error: no scaler has been implemented for {kind.resource}")
    mesh = connect()
    before = _editable(_fetch(mesh, kind, name, _namespace(p)))
    body = copy.deepcopy(before)
    body.setdefault("spec", {})["replicas"] = int(replicas)
    return _update(mesh, kind, body, before, "scaled", "scaled")


def cmd_version(p: Parsed) -> int:
    fmt = p.get("output")
    client = {"gitVersion": SHIM_VERSION, "platform": sys.platform}
    if fmt in ("json", "yaml"):
        data = {"clientVersion": client}
        _out(json.dumps(data, indent=2) + "\n" if fmt == "json" else yaml.safe_dump(data))
        return 0
    _out(f"Client Version: {SHIM_VERSION}\n")
    if not p.get("client"):
        mesh = connect()
        _out(f'Server Version: local mesh "{mesh.state.mesh}" (lablib meshd)\n')
    return 0


def cmd_api_resources(p: Parsed) -> int:
    from .kinds import KINDS

    rows = [["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]]
    rows += [[k.plural, ",".join(k.short), k.api_version, str(k.namespaced).lower(), k.kind]
             for k in KINDS]
    _out(printers.rows_text(rows, 6, 3) + "\n")
    return 0


# --- the command table ------------------------------------------------------------------------

OUTPUT = Flag("output", "o")
SELECTOR = Flag("selector", "l")
FILENAME = Flag("filename", "f", "list")

COMMANDS: dict[str, Command] = {
    "get": Command(cmd_get, [OUTPUT, SELECTOR, Flag("all-namespaces", "A", "bool"),
                             Flag("show-labels", kind="bool"), Flag("no-headers", kind="bool"),
                             Flag("watch", "w", "bool"), Flag("ignore-not-found", kind="bool")],
                   "kubectl get KIND[,KIND...] [NAME...] [-n NS | -A] [-l SELECTOR] "
                   "[-o wide|yaml|json|name|jsonpath=...|custom-columns=...]"),
    "describe": Command(cmd_describe, [SELECTOR],
                        "kubectl describe KIND [NAME_PREFIX] [-n NS] [-l SELECTOR]"),
    "apply": Command(cmd_apply, [FILENAME, SELECTOR, Flag("recursive", "R", "bool")],
                     "kubectl apply -f FILE|DIR|URL|- [-n NS] [-l SELECTOR]"),
    "create": Command(cmd_create, [FILENAME, OUTPUT, Flag("from-file", kind="list"),
                                   Flag("from-literal", kind="list"), Flag("cert"), Flag("key"),
                                   Flag("type"), Flag("dry-run", optional="client"),
                                   Flag("save-config", kind="bool")],
                      "kubectl create ns NAME | secret generic|tls NAME ... | configmap NAME "
                      "--from-file=... | -f FILE"),
    "delete": Command(cmd_delete, [FILENAME, SELECTOR, Flag("all", kind="bool"),
                                   Flag("cascade", optional="background"),
                                   Flag("ignore-not-found", kind="bool"),
                                   Flag("wait", kind="bool"), Flag("now", kind="bool"),
                                   Flag("force", kind="bool"), Flag("grace-period")],
                      "kubectl delete -f FILE | KIND[,KIND...] NAME... [-n NS] [--cascade]"),
    "label": Command(cmd_label, [Flag("overwrite", kind="bool")],
                     "kubectl label KIND NAME KEY=VALUE... [KEY-] [--overwrite]"),
    "annotate": Command(cmd_annotate, [Flag("overwrite", kind="bool")],
                        "kubectl annotate KIND NAME KEY=VALUE... [KEY-] [--overwrite]"),
    "patch": Command(cmd_patch, [Flag("patch", "p"), Flag("patch-file"), Flag("type")],
                     "kubectl patch KIND NAME [--type strategic|merge|json] -p PATCH"),
    "edit": Command(cmd_edit, [OUTPUT], "kubectl edit KIND NAME [-n NS]"),
    "exec": Command(cmd_exec, [Flag("container", "c"), Flag("stdin", "i", "bool"),
                               Flag("tty", "t", "bool"), Flag("quiet", "q", "bool")],
                    "kubectl exec (POD | deploy/NAME) [-c CONTAINER] [-n NS] -- COMMAND..."),
    "wait": Command(cmd_wait, [SELECTOR, Flag("for"), Flag("all", kind="bool"),
                               Flag("timeout")],
                    "kubectl wait --for=create|delete|condition=NAME[=VALUE]|jsonpath={PATH}"
                    "[=VALUE] (KIND --all | KIND -l SEL | KIND/NAME...) [--timeout=30s]"),
    "logs": Command(cmd_logs, [Flag("container", "c"), Flag("tail"), Flag("follow", "f", "bool"),
                               Flag("previous", "p", "bool"), SELECTOR,
                               Flag("prefix", kind="bool")],
                    "kubectl logs (POD | deploy/NAME | -l SELECTOR) [-c CONTAINER] [--tail N] "
                    "[--prefix]"),
    "cp": Command(cmd_cp, [Flag("container", "c")],
                  "kubectl cp FILE [NS/]POD:PATH [-c CONTAINER]"),
    "rollout": Command(cmd_rollout, [Flag("timeout")],
                       "kubectl rollout restart|status deploy/NAME"),
    "scale": Command(cmd_scale, [Flag("replicas")], "kubectl scale deploy NAME --replicas=N"),
    "version": Command(cmd_version, [Flag("client", kind="bool"), OUTPUT],
                       "kubectl version [--client]"),
    "api-resources": Command(cmd_api_resources, [], "kubectl api-resources"),
}


TOOL = Tool("kubectl", GLOBAL, COMMANDS, error_word="error", verb_hint=True)


def kubectl_main(argv: Sequence[str] | None = None) -> int:
    """`kubectl ARGS...` on the local mesh (the real kubectl on the kubernetes backend)."""
    return TOOL.main(argv)
