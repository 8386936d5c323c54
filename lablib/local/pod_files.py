"""What the kubelet hands an app container from its pod spec, on the local mesh.

* Environment variables from `valueFrom`: the downward API's `fieldRef` (the pod's name,
  namespace, labels, annotations, service account, and its IPs, which are all 127.0.0.1
  here), `secretKeyRef` and `configMapKeyRef`; and `envFrom` Secrets and ConfigMaps.
* Files from Secret, ConfigMap (`data` and `binaryData`) and emptyDir volumes, with
  `items[].key/path/mode`, `defaultMode` and a mount's `subPath`, written under the pod's
  folder through containment.write_inside (plain names, O_NOFOLLOW at each step).

What is not given is refused when the Deployment is applied (LAB0108), naming the field:
a fieldRef or resourceFieldRef the local mesh has no value for, `subPathExpr`, a volume of
another type mounted by an app container, and a Secret, ConfigMap or key that does not
exist and is not `optional` (on a cluster the pod would wait, not start, until it exists).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.model import Resource
from ..config.store import ConfigStore
from ..errors import Diagnostic
from .containment import (
    host_env_problem,
    host_env_reason,
    is_plain_name,
    make_folder_inside,
    write_inside,
)
from .images import expand_env_references

__all__ = ["GATEWAY_IMAGE", "PILOT_IMAGE", "POD_SPEC_CODE", "PodFacts", "app_containers",
           "env_from_sources", "mount_volumes", "pod_spec_problems"]

POD_SPEC_CODE = "LAB0108"
GATEWAY_IMAGE = "istio/proxyv2"  # a gateway's or sidecar's image: the mesh runs its own
PILOT_IMAGE = "istio/pilot"  # istiod's: meshd is the control plane
POD_IP = "127.0.0.1"  # every local pod (and the host) is on loopback
SECRET_MODE = 0o600  # the kit's default for Secret files (their folders are 0700 anyway)
CONFIG_MODE = 0o644  # the kubelet's defaultMode
_LABEL_FIELD = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")
_VOLUME_KINDS = ("secret", "configMap", "emptyDir")


@dataclass(frozen=True)
class PodFacts:
    """What the downward API can tell a container about its pod."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    service_account: str

    def field(self, path: str) -> str | None:
        """The value of a fieldRef's fieldPath, or None for one the local mesh cannot give."""
        simple = {"metadata.name": self.name, "metadata.namespace": self.namespace,
                  "spec.serviceAccountName": self.service_account,
                  "status.podIP": POD_IP, "status.podIPs": POD_IP,
                  "status.hostIP": POD_IP, "status.hostIPs": POD_IP}
        if path in simple:
            return simple[path]
        found = _LABEL_FIELD.fullmatch(path)
        if found:
            source = self.labels if found[1] == "labels" else self.annotations
            return source.get(found[2], "")
        return None


def app_containers(template_spec: Mapping[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The containers the local mesh runs as app processes (not a sidecar it replaces, not
    a gateway's or istiod's, which the mesh runs itself), with their index."""
    for i, c in enumerate(template_spec.get("containers") or []):
        image = str((c or {}).get("image", ""))
        if GATEWAY_IMAGE in image or PILOT_IMAGE in image or c.get("name") == "istio-proxy":
            continue
        yield i, c


def _source_kind(ref_key: str) -> str:
    return "Secret" if ref_key.startswith("secret") else "ConfigMap"


def _data(store: ConfigStore, kind: str, namespace: str, name: str) -> dict[str, bytes] | None:
    """A Secret's or ConfigMap's keys as bytes (ConfigMap `binaryData` too), None if absent."""
    found = store.get(kind, namespace, name)
    if found is None:
        return None
    body = found.body
    if kind == "Secret":
        return {str(k): base64.b64decode(str(v)) for k, v in (body.get("data") or {}).items()}
    data = {str(k): str(v).encode() for k, v in (body.get("data") or {}).items()}
    data.update({str(k): base64.b64decode(str(v))
                 for k, v in (body.get("binaryData") or {}).items()})
    return data


def env_from_sources(container: Mapping[str, Any], pod: PodFacts, store: ConfigStore
                     ) -> dict[str, str]:
    """The container's variables as the kubelet sets them: `envFrom` first, then `env` in
    order (a later name wins, a value's `$(NAME)` expands an earlier one); an optional
    reference to what does not exist sets nothing."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        for ref_key in ("configMapRef", "secretRef"):
            ref = source.get(ref_key)
            if ref:
                data = _data(store, _source_kind(ref_key), pod.namespace, str(ref.get("name")))
                prefix = str(source.get("prefix") or "")
                # A name that acts on the host is refused at apply (LAB0107); one a later
                # change of the Secret or ConfigMap brings is left out.
                env.update({prefix + k: v.decode(errors="replace")
                            for k, v in (data or {}).items()
                            if host_env_reason(prefix + k) is None})
    for variable in container.get("env") or []:
        name = str(variable["name"])
        value_from = variable.get("valueFrom") or {}
        value: str | None = None
        ref_key = next((k for k in ("secretKeyRef", "configMapKeyRef") if k in value_from), "")
        if not value_from:
            value = expand_env_references(str(variable.get("value", "")), env)
        elif "fieldRef" in value_from:
            value = pod.field(str((value_from["fieldRef"] or {}).get("fieldPath", "")))
        elif ref_key:
            ref = value_from[ref_key] or {}
            data = _data(store, _source_kind(ref_key), pod.namespace, str(ref.get("name")))
            raw = (data or {}).get(str(ref.get("key")))
            value = None if raw is None else raw.decode(errors="replace")
        if value is not None:  # refused at apply when not optional (pod_spec_problems)
            env[name] = value
    return env


def _mode(value: Any, default: int) -> int:
    return int(value) & 0o777 if value is not None else default


def mount_volumes(root: Path, pod: PodFacts, volumes: Mapping[str, Mapping[str, Any]],
                  container: Mapping[str, Any], store: ConfigStore) -> dict[str, str]:
    """Write the Secret, ConfigMap and emptyDir volumes the container mounts under
    root/mounts/NS.POD/VOLUME, as the kubelet would; returns mountPath -> local path (a
    file or folder, with `subPath`), which the app gets as LAB_MOUNTS."""
    mounts = {}
    for mount in container.get("volumeMounts") or []:
        volume_name = str(mount.get("name"))
        volume = volumes.get(volume_name) or {}
        kind = next((k for k in _VOLUME_KINDS if k in volume), None)
        if kind is None:
            continue  # refused at apply for app containers (pod_spec_problems)
        folder = make_folder_inside(root, ["mounts", f"{pod.namespace}.{pod.name}",
                                           volume_name])
        if kind != "emptyDir":
            source = volume[kind] or {}
            secret = kind == "secret"
            default = _mode(source.get("defaultMode"), SECRET_MODE if secret else CONFIG_MODE)
            data = _data(store, "Secret" if secret else "ConfigMap", pod.namespace,
                         str(source.get("secretName") or source.get("name"))) or {}
            items = source.get("items")
            files = ([(str(i["path"]), data.get(str(i["key"])), _mode(i.get("mode"), default))
                      for i in items] if items else
                     [(key, value, default) for key, value in data.items()])
            for path, value, mode in files:
                if value is not None:
                    write_inside(folder, path.split("/"), value, mode)
        sub_path = str(mount.get("subPath") or "")
        local = folder.joinpath(*sub_path.split("/")) if sub_path else folder
        if not local.exists():  # the kubelet creates a subPath the volume lacks, as a folder
            make_folder_inside(folder, sub_path.split("/"))
        mounts[str(mount["mountPath"])] = str(local)
    return mounts


def _plain_path(path: str) -> bool:
    """A relative path of plain names, as write_inside takes them."""
    return all(is_plain_name(part) for part in path.split("/"))


def pod_spec_problems(deployment: Resource, store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0108 for each env source, volume and mount field of an app container the local
    mesh cannot honour, checked against `store` (the config the apply would leave)."""
    template = deployment.spec.get("template") or {}
    spec = template.get("spec") or {}
    meta = template.get("metadata") or {}
    facts = PodFacts("", deployment.namespace, meta.get("labels") or {},
                     meta.get("annotations") or {}, "")
    volumes = {str(v.get("name")): v for v in spec.get("volumes") or []}
    base = "spec.template.spec"
    mounted: set[str] = set()  # the secret, configMap and emptyDir volumes apps mount

    def problem(field: str, message: str, fix: str) -> Diagnostic:
        return Diagnostic(POD_SPEC_CODE, "Error", deployment.ref, message, field, fix)

    def missing(kind: str, name: str, key: str | None, field: str) -> Diagnostic | None:
        data = _data(store, kind, deployment.namespace, name)
        if data is not None and (key is None or key in data):
            return None
        what = f"{kind} {deployment.namespace}/{name}" + (
            f" has no key {key!r}" if data is not None else " does not exist")
        return problem(field, f"{what}: on a cluster the pod would not start until it does",
                       f"create the {kind} first, or mark the reference optional: true")

    for i, container in app_containers(spec):
        where = f"{base}.containers[{i}]"
        for j, source in enumerate(container.get("envFrom") or []):
            for ref_key in ("configMapRef", "secretRef"):
                ref = source.get(ref_key)
                if not ref:
                    continue
                field = f"{where}.envFrom[{j}].{ref_key}"
                ref_kind, name = _source_kind(ref_key), str(ref.get("name"))
                for data_key in _data(store, ref_kind, deployment.namespace, name) or {}:
                    found = host_env_problem(
                        deployment, str(source.get("prefix") or "") + data_key,
                        f" (key {data_key!r} of {ref_kind} {name})", field,
                        f"remove the key from the {ref_kind}, or use env with the variables "
                        "the app needs")
                    if found:
                        yield found
                if not ref.get("optional"):
                    found = missing(ref_kind, name, None, field)
                    if found:
                        yield found
        for j, variable in enumerate(container.get("env") or []):
            value_from = (variable or {}).get("valueFrom") or {}
            field = f"{where}.env[{j}].valueFrom"
            if "fieldRef" in value_from:
                path = str((value_from["fieldRef"] or {}).get("fieldPath", ""))
                if facts.field(path) is None:
                    yield problem(f"{field}.fieldRef.fieldPath",
                                  f"fieldPath {path!r} has no value on the local mesh (it "
                                  "gives metadata.name, metadata.namespace, metadata.labels"
                                  "['KEY'], metadata.annotations['KEY'], "
                                  "spec.serviceAccountName, status.podIP(s), status.hostIP(s))",
                                  "set the value literally, or run this lab with "
                                  "LAB_BACKEND=kubernetes")
            elif "resourceFieldRef" in value_from:
                yield problem(f"{field}.resourceFieldRef",
                              "the local mesh runs containers without resource requests or "
                              "limits, so it has no value for resourceFieldRef",
                              "set the value literally, or run this lab with "
                              "LAB_BACKEND=kubernetes")
            for ref_key in ("secretKeyRef", "configMapKeyRef"):
                ref = value_from.get(ref_key)
                if ref is not None and not ref.get("optional"):
                    found = missing(_source_kind(ref_key), str(ref.get("name")),
                                    str(ref.get("key")), f"{field}.{ref_key}")
                    if found:
                        yield found
        for j, mount in enumerate(container.get("volumeMounts") or []):
            field = f"{where}.volumeMounts[{j}]"
            if mount.get("subPathExpr"):
                yield problem(f"{field}.subPathExpr", "subPathExpr is not supported on the "
                              "local mesh", "use subPath, or run this lab with "
                              "LAB_BACKEND=kubernetes")
            sub_path = mount.get("subPath")
            if sub_path and not _plain_path(str(sub_path)):
                yield problem(f"{field}.subPath", f"subPath {sub_path!r} must be a relative "
                              "path of plain names", "name a file or folder inside the volume")
            volume = volumes.get(str(mount.get("name")))
            if volume is None:
                yield problem(f"{field}.name", f"no volume named {mount.get('name')!r} in "
                              f"{base}.volumes", "declare the volume, or remove the mount")
                continue
            kind = next((k for k in _VOLUME_KINDS if k in volume), None)
            if kind is None:
                other = next((k for k in volume if k != "name"), "?")
                yield problem(f"{field}.name", f"volume {volume.get('name')!r} is a {other} "
                              "volume: the local mesh mounts only secret, configMap and "
                              "emptyDir volumes into app containers",
                              "run this lab with LAB_BACKEND=kubernetes")
            else:
                mounted.add(str(volume.get("name")))
    for k, volume in enumerate(spec.get("volumes") or []):
        for kind in ("secret", "configMap"):
            source = (volume or {}).get(kind)
            if str(volume.get("name")) not in mounted or not isinstance(source, Mapping):
                continue
            name = str(source.get("secretName") or source.get("name"))
            field = f"{base}.volumes[{k}].{kind}"
            for n, item in enumerate(source.get("items") or []):
                if not _plain_path(str(item.get("path", ""))):
                    yield problem(f"{field}.items[{n}].path", f"path {item.get('path')!r} "
                                  "must be a relative path of plain names",
                                  "name a file inside the volume")
            if source.get("optional"):
                continue
            keys: list[str | None] = [str(i.get("key")) for i in source.get("items") or []]
            for key in keys or [None]:
                found = missing("Secret" if kind == "secret" else "ConfigMap", name, key, field)
                if found:
                    yield found
                    break
