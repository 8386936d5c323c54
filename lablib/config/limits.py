"""The API server's own limits on a manifest: names, namespaces, data keys, sizes, replicas.

Kubernetes refuses these before any controller sees them (apimachinery's `IsDNS1123Label`,
`IsDNS1035Label`, `IsDNS1123Subdomain`, `IsConfigMapKey`, `IsEnvVarName`, the 1 MiB cap on a
Secret's or ConfigMap's data and etcd's 1.5 MiB request limit), and so does the kit, with the
same words and the limit in the message. Each rule yields (field path, message, fix);
`schema.validate` turns them into diagnostics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["MAX_DATA_BYTES", "MAX_OBJECT_BYTES", "object_rules"]

Problem = tuple[str, str, str]  # (field path, message, fix)

LABEL_MAX = 63
SUBDOMAIN_MAX = 253
MAX_DATA_BYTES = 1024 * 1024  # Kubernetes' MaxSecretSize, also applied to ConfigMaps
MAX_OBJECT_BYTES = 3 * 1024 * 1024 // 2  # etcd's default --max-request-bytes

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")

# Which rule a kind's metadata.name follows in Kubernetes (or in Istio's validation, which
# wants a Gateway's name to be a DNS label); every other kind is a DNS-1123 subdomain.
_LABEL_NAMED = frozenset({"Namespace", "Gateway"})
_DNS1035_NAMED = frozenset({"Service"})


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dns_label_problem(value: str, rule: str = "DNS-1123") -> str | None:
    """Kubernetes' message for a value that is no DNS label, or None if it is one."""
    pattern, start = (_DNS1035, "start with an alphabetic character") if rule == "DNS-1035" \
        else (_LABEL, "start with an alphanumeric character")
    if len(value) > LABEL_MAX:
        return f"must be no more than {LABEL_MAX} characters (it has {len(value)})"
    if not pattern.fullmatch(value):
        return (f"a {rule} label must consist of lower case alphanumeric characters or '-', "
                f"{start}, and end with an alphanumeric character")
    return None


def _subdomain_problem(value: str) -> str | None:
    if len(value) > SUBDOMAIN_MAX:
        return f"must be no more than {SUBDOMAIN_MAX} characters (it has {len(value)})"
    if not _SUBDOMAIN.fullmatch(value):
        return ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character")
    return None


def _suggested(name: str, limit: int, dots: bool) -> str:
    allowed = "a-z0-9.-" if dots else "a-z0-9-"
    cleaned = re.sub(f"[^{allowed}]+", "-", name.lower()).strip("-.")[:limit].strip("-.")
    return cleaned or "my-resource"


def name_problem(kind: str, name: str) -> Problem | None:
    """metadata.name as the API server checks it for `kind`."""
    if kind in _DNS1035_NAMED:
        problem, limit, rule = _dns_label_problem(name, "DNS-1035"), LABEL_MAX, "DNS-1035 label"
    elif kind in _LABEL_NAMED:
        problem, limit, rule = _dns_label_problem(name), LABEL_MAX, "DNS-1123 label"
    else:
        problem, limit, rule = _subdomain_problem(name), SUBDOMAIN_MAX, "DNS-1123 subdomain"
    if problem is None:
        return None
    shown = name if len(name) <= 60 else name[:57] + "..."
    dots = rule.endswith("subdomain")
    why = "" if dots else " (no dots: the name becomes a single DNS label)"
    return ("metadata.name", f'invalid {kind} name "{shown}": {problem}{why}',
            f"rename it to a {rule} of at most {limit} characters, e.g. "
            f'"{_suggested(name, limit, dots)}"')


def namespace_problem(namespace: str) -> Problem | None:
    """A namespace is a DNS-1123 label of at most 63 characters."""
    problem = _dns_label_problem(namespace)
    if problem is None:
        return None
    return ("metadata.namespace", f'invalid namespace "{namespace[:70]}": {problem}',
            f"use a DNS-1123 label of at most {LABEL_MAX} characters, e.g. "
            f'"{_suggested(namespace, LABEL_MAX, False)}"')


def _data_rules(body: dict[str, Any], encoded: tuple[str, ...]) -> Iterator[Problem]:
    """Secret/ConfigMap keys are file names in a volume: `[-._a-zA-Z0-9]+`, not `..`; the
    data (decoded, keys included) holds at most 1 MiB."""
    total = 0
    for section in ("data", "stringData", "binaryData"):
        values = body.get(section)
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            text = str(key)
            if isinstance(value, str):
                total += len(text) + (len(value) * 3 // 4 if section in encoded
                                      else len(value.encode()))
            if len(text) > SUBDOMAIN_MAX or not _DATA_KEY.fullmatch(text) or \
                    text.startswith(".."):
                shown = text if len(text) <= 60 else text[:57] + "..."
                yield (f'{section}["{shown}"]',
                       f'invalid key "{shown}": a valid config key must consist of '
                       "alphanumeric characters, '-', '_' or '.', must not start with '..' "
                       f"and has at most {SUBDOMAIN_MAX} characters",
                       "name the key like a plain file name, e.g. tls.crt or app-config.yaml")
    if total > MAX_DATA_BYTES:
        yield ("data", f"Too long: must have at most {MAX_DATA_BYTES} bytes (the data holds "
               f"{total} bytes)",
               "split it into several Secrets/ConfigMaps of at most 1 MiB each, or keep large "
               "files outside the cluster")


def _pod_rules(pod: dict[str, Any], path: str) -> Iterator[Problem]:
    """Container and volume names are DNS labels; mounts name a volume; env names are valid."""
    volumes = _list(pod.get("volumes"))
    volume_names: set[str] = set()
    for i, volume in enumerate(volumes):
        name = volume.get("name") if isinstance(volume, dict) else None
        if isinstance(name, str):
            volume_names.add(name)
            problem = _dns_label_problem(name)
            if problem:
                yield (f"{path}.volumes[{i}].name", f'invalid volume name "{name[:70]}": '
                       f"{problem}", "name the volume like config-volume")
    for group in ("containers", "initContainers"):
        containers = _list(pod.get(group))
        for i, container in enumerate(containers):
            if not isinstance(container, dict):
                continue
            where = f"{path}.{group}[{i}]"
            name = container.get("name")
            if isinstance(name, str) and (problem := _dns_label_problem(name)):
                yield (f"{where}.name", f'invalid container name "{name[:70]}": {problem}',
                       "name the container like my-app")
            mounts = container.get("volumeMounts")
            for j, mount in enumerate(mounts if isinstance(mounts, list) else []):
                volume = mount.get("name") if isinstance(mount, dict) else None
                if isinstance(volume, str) and volume not in volume_names:
                    known = ", ".join(sorted(volume_names)) or "none"
                    yield (f"{where}.volumeMounts[{j}].name",
                           f'Not found: "{volume[:70]}" (the pod\'s volumes: {known})',
                           "name one of spec.template.spec.volumes, or add that volume")
            env = container.get("env")
            for j, variable in enumerate(env if isinstance(env, list) else []):
                name = variable.get("name") if isinstance(variable, dict) else None
                if isinstance(name, str) and not _ENV_NAME.fullmatch(name):
                    yield (f"{where}.env[{j}].name",
                           f'invalid environment variable name "{name[:70]}": a valid '
                           "environment variable name must consist of alphabetic characters, "
                           "digits, '_', '-', or '.', and must not start with a digit",
                           "use a name like MY_SETTING")


def _deployment_rules(body: dict[str, Any]) -> Iterator[Problem]:
    spec = _dict(body.get("spec"))
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and not isinstance(replicas, bool) and replicas < 0:
        yield ("spec.replicas", f"must be greater than or equal to 0, got {replicas}",
               "set replicas to 0 (no pods) or more")
    pod = _dict(spec.get("template")).get("spec")
    if isinstance(pod, dict):
        yield from _pod_rules(pod, "spec.template.spec")


def _service_rules(body: dict[str, Any]) -> Iterator[Problem]:
    ports = _list(_dict(body.get("spec")).get("ports"))
    for i, port in enumerate(ports):
        name = port.get("name") if isinstance(port, dict) else None
        if isinstance(name, str) and name and (problem := _dns_label_problem(name)):
            yield (f"spec.ports[{i}].name", f'invalid port name "{name[:70]}": {problem}',
                   "name the port like http or tcp-echo")


def _size_problem(body: dict[str, Any]) -> Problem | None:
    size = len(json.dumps(body, separators=(",", ":"), default=str))
    if size <= MAX_OBJECT_BYTES:
        return None
    return ("", f"the object is {size} bytes; the API server stores at most {MAX_OBJECT_BYTES} "
            "bytes per object (etcd's request limit)",
            "make it smaller: split the data over several objects")


_KIND_RULES: dict[str, Callable[[dict[str, Any]], Iterator[Problem]]] = {
    "Secret": lambda body: _data_rules(body, ("data",)),
    "ConfigMap": lambda body: _data_rules(body, ("binaryData",)),
    "Deployment": _deployment_rules,
    "Service": _service_rules,
}


def object_rules(kind: str, namespace: str, body: dict[str, Any]) -> Iterator[Problem]:
    """Every limit the API server puts on this manifest, as (field, message, fix)."""
    metadata = body.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if isinstance(name, str) and (problem := name_problem(kind, name)):
        yield problem
    if namespace and (problem := namespace_problem(namespace)):
        yield problem
    rules = _KIND_RULES.get(kind)
    if rules:
        yield from rules(body)
    if (problem := _size_problem(body)) is not None:
        yield problem
