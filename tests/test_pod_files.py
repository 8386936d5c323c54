"""What an app container gets from its pod spec on the local mesh: env `valueFrom`/`envFrom`,
Secret/ConfigMap/emptyDir volume files (items, modes, subPath, binaryData), and LAB0108 for
what the local mesh cannot give. No mesh: a config store and a temporary folder."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from lablib.config.loader import load
from lablib.config.store import ConfigStore
from lablib.local.pod_files import PodFacts, env_from_sources, mount_volumes, pod_spec_problems

NS = "pods"
LOGO = base64.b64encode(b"\x89PNG\x00").decode()
CONFIG = f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: web, namespace: {NS}}}
data: {{nginx.conf: "server {{}}", index.html: hello}}
binaryData: {{logo.png: {LOGO}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds, namespace: {NS}}}
data: {{tls.key: {base64.b64encode(b"KEY").decode()}, user: {base64.b64encode(b"ann").decode()}}}
"""
FACTS = PodFacts("web-abc-12345", NS, {"app": "web"}, {"team": "a"}, "web-sa")


def store() -> ConfigStore:
    return ConfigStore.with_namespaces([NS]).with_applied(load(CONFIG))


def deployment(container: str, volumes: str = "[]"):
    text = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - {container}
      volumes: {volumes}
"""
    return load(text)[0]


def test_env_value_from_fields_secrets_and_config_maps() -> None:
    container = {"name": "web", "envFrom": [{"configMapRef": {"name": "web"}, "prefix": "CM_"}],
                 "env": [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "USER", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}},
        {"name": "PAGE", "valueFrom": {"configMapKeyRef": {"name": "web", "key": "index.html"}}},
        {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k",
                                                        "optional": True}}},
        {"name": "CM_index.html", "value": "env wins over envFrom"},
        {"name": "URL", "value": "http://$(IP):80/$(POD)/$$(POD)/$(LATER)"},
        {"name": "LATER", "value": "x"}]}
    env = env_from_sources(container, FACTS, store())
    assert env == {"POD": "web-abc-12345", "NS": NS, "IP": "127.0.0.1", "SA": "web-sa",
                   "APP": "web", "USER": "ann", "PAGE": "hello",
                   "CM_nginx.conf": "server {}", "CM_logo.png": "\ufffdPNG\x00",
                   "CM_index.html": "env wins over envFrom", "LATER": "x",
                   "URL": "http://127.0.0.1:80/web-abc-12345/$(POD)/$(LATER)"}


def test_volume_items_modes_binary_data_and_sub_path(tmp_path: Path) -> None:
    volumes = {
        "conf": {"name": "conf", "configMap": {"name": "web", "items": [
            {"key": "nginx.conf", "path": "conf.d/site.conf"},
            {"key": "logo.png", "path": "logo.png", "mode": 0o400}]}},
        "tls": {"name": "tls", "secret": {"secretName": "creds", "defaultMode": 0o440}},
        "scratch": {"name": "scratch", "emptyDir": {}},
    }
    container = {"name": "web", "volumeMounts": [
        {"name": "conf", "mountPath": "/etc/nginx"},
        {"name": "tls", "mountPath": "/etc/tls/server.key", "subPath": "tls.key"},
        {"name": "scratch", "mountPath": "/tmp"},
        {"name": "scratch", "mountPath": "/var/cache", "subPath": "cache"}]}
    mounts = mount_volumes(tmp_path, FACTS, volumes, container, store())
    conf = Path(mounts["/etc/nginx"])
    assert sorted(str(p.relative_to(conf)) for p in conf.rglob("*") if p.is_file()) == [
        "conf.d/site.conf", "logo.png"]  # only the items, under their paths
    assert (conf / "conf.d" / "site.conf").read_text() == "server {}"
    assert (conf / "logo.png").read_bytes() == b"\x89PNG\x00"
    assert stat.S_IMODE((conf / "logo.png").stat().st_mode) == 0o400
    key = Path(mounts["/etc/tls/server.key"])
    assert key.read_bytes() == b"KEY" and stat.S_IMODE(key.stat().st_mode) == 0o440
    assert Path(mounts["/var/cache"]) == Path(mounts["/tmp"]) / "cache"
    assert Path(mounts["/var/cache"]).is_dir()
    assert all(Path(m).is_relative_to(tmp_path / "mounts" / f"{NS}.web-abc-12345")
               for m in mounts.values())


def problems(container: str, volumes: str = "[]") -> list[tuple[str, str]]:
    return [(d.field, d.message) for d in pod_spec_problems(deployment(container, volumes),
                                                            store())]


def test_supported_sources_raise_nothing() -> None:
    assert problems(
        "{name: web, image: nginx, env: [{name: A, valueFrom: {fieldRef: {fieldPath: "
        "status.podIP}}}, {name: B, valueFrom: {secretKeyRef: {name: creds, key: user}}}], "
        "volumeMounts: [{name: c, mountPath: /c, subPath: nginx.conf}, {name: s, mountPath: /s}]}",
        "[{name: c, configMap: {name: web, items: [{key: nginx.conf, path: nginx.conf}]}}, "
        "{name: s, secret: {secretName: absent, optional: true}}]") == []


@pytest.mark.parametrize(("container", "volumes", "field", "words"), [
    ("{name: web, image: nginx, env: [{name: U, valueFrom: {fieldRef: {fieldPath: "
     "metadata.uid}}}]}", "[]",
     "spec.template.spec.containers[0].env[0].valueFrom.fieldRef.fieldPath", "metadata.uid"),
    ("{name: web, image: nginx, env: [{name: M, valueFrom: {resourceFieldRef: {resource: "
     "limits.memory}}}]}", "[]",
     "spec.template.spec.containers[0].env[0].valueFrom.resourceFieldRef", "resource"),
    ("{name: web, image: nginx, env: [{name: K, valueFrom: {secretKeyRef: {name: creds, "
     "key: password}}}]}", "[]",
     "spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef", "no key 'password'"),
    ("{name: web, image: nginx, envFrom: [{secretRef: {name: nope}}]}", "[]",
     "spec.template.spec.containers[0].envFrom[0].secretRef", "does not exist"),
    ("{name: web, image: nginx, volumeMounts: [{name: d, mountPath: /d, subPathExpr: "
     "$(POD)}]}", "[{name: d, emptyDir: {}}]",
     "spec.template.spec.containers[0].volumeMounts[0].subPathExpr", "subPathExpr"),
    ("{name: web, image: nginx, volumeMounts: [{name: h, mountPath: /h}]}",
     "[{name: h, hostPath: {path: /etc}}]",
     "spec.template.spec.containers[0].volumeMounts[0].name", "hostPath"),
    ("{name: web, image: nginx, volumeMounts: [{name: c, mountPath: /c}]}",
     "[{name: c, configMap: {name: web, items: [{key: nginx.conf, path: ../x}]}}]",
     "spec.template.spec.volumes[0].configMap.items[0].path", "plain names"),
    ("{name: web, image: nginx, volumeMounts: [{name: s, mountPath: /s}]}",
     "[{name: s, secret: {secretName: absent}}]",
     "spec.template.spec.volumes[0].secret", "does not exist"),
])
def test_what_the_local_mesh_cannot_give_is_refused_by_field(container: str, volumes: str,
                                                             field: str, words: str) -> None:
    found = problems(container, volumes)
    assert [f for f, _ in found] == [field]
    assert words in found[0][1]


def test_env_from_may_not_bring_a_variable_that_acts_on_the_host() -> None:
    hostile = ConfigStore.with_namespaces([NS]).with_applied(load(f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: hostile, namespace: {NS}}}
data: {{LD_PRELOAD: /tmp/evil.so, GREETING: hi}}
"""))
    container = "{name: web, image: nginx, envFrom: [{configMapRef: {name: hostile}}]}"
    [found] = pod_spec_problems(deployment(container), hostile)
    assert (found.code, found.field) == (
        "LAB0107", "spec.template.spec.containers[0].envFrom[0].configMapRef")
    assert "LD_PRELOAD" in found.message
    # Should the ConfigMap gain the key after the apply, the variable is still left out.
    env = env_from_sources({"envFrom": [{"configMapRef": {"name": "hostile"}}]}, FACTS, hostile)
    assert env == {"GREETING": "hi"}


def test_volumes_only_the_replaced_sidecar_mounts_are_not_checked() -> None:
    assert problems("{name: istio-proxy, image: docker.io/istio/proxyv2:1.20.3, volumeMounts: "
                    "[{name: token, mountPath: /var/run/secrets/tokens}]}",
                    "[{name: token, projected: {sources: []}}, "
                    "{name: ca, configMap: {name: istio-ca-root-cert}}]") == []
