"""lablib.local.containment: no manifest reaches outside its pod on the local mesh."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lablib.config.loader import load_one
from lablib.local.containment import (
    ContainmentError,
    host_env_problems,
    host_env_reason,
    make_folder_inside,
    write_inside,
)


@pytest.mark.parametrize("name", [
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME",
    "PYTHONUSERBASE", "PYTHONWARNINGS", "HOME", "PATH", "GCONV_PATH", "GLIBC_TUNABLES",
    "MALLOC_TRACE", "OPENSSL_CONF", "BASH_ENV", "ENV", "TMPDIR", "LAB_MOUNTS",
    "LAB_SUPERVISOR_DIR", "http_proxy", "HTTP_PROXY", "NO_PROXY",
])
def test_variables_that_act_on_the_host_are_named_with_a_reason(name: str) -> None:
    assert host_env_reason(name)


@pytest.mark.parametrize("name", ["LOG_DIR", "SERVICE_VERSION", "ENABLE_RATINGS",
                                  "STAR_COLOR", "MONGO_DB_URL", "LDAP_URL", "HOMEPAGE"])
def test_ordinary_variables_are_allowed(name: str) -> None:
    assert host_env_reason(name) is None


def test_each_refused_variable_names_resource_and_field() -> None:
    deployment = load_one("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: lab}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx
        env: [{name: LOG_DIR, value: /tmp}, {name: LD_PRELOAD, value: /tmp/x.so}]
      initContainers:
      - {name: init, image: nginx, env: [{name: PYTHONPATH, value: /tmp}]}
""")
    found = {(d.code, d.resource, d.field) for d in host_env_problems(deployment)}
    assert found == {
        ("LAB0107", "Deployment lab/web", "spec.template.spec.containers[0].env[1].name"),
        ("LAB0107", "Deployment lab/web", "spec.template.spec.initContainers[0].env[0].name"),
    }


def test_write_inside_writes_plain_names_with_their_mode(tmp_path: Path) -> None:
    folder = make_folder_inside(tmp_path, ["mounts", "ns.pod-abc", "certs"])
    write_inside(folder, ["tls.key"], b"secret", 0o600)
    written = folder / "tls.key"
    assert written.read_bytes() == b"secret"
    assert written.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "mounts").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("parts", [["..", "x"], ["../../x"], ["/tmp/x"], ["a/b"], [""],
                                   ["..hidden"]])
def test_write_inside_refuses_names_that_leave_the_folder(tmp_path: Path,
                                                          parts: list[str]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ContainmentError):
        write_inside(root, parts, b"x")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["root"]


def test_a_planted_symlink_fails_the_write_instead_of_redirecting_it(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "volume").symlink_to(outside)
    with pytest.raises(OSError):
        write_inside(root, ["volume", "key"], b"x")
    victim = outside / "victim"
    victim.write_text("untouched")
    (root / "file").symlink_to(victim)
    with pytest.raises(OSError):
        write_inside(root, ["file"], b"overwritten")
    assert victim.read_text() == "untouched"
    assert list(outside.iterdir()) == [victim]


def test_nothing_is_left_open(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for i in range(20):
        write_inside(tmp_path, ["a", "b", f"f{i}"], b"x")
        with pytest.raises(ContainmentError):
            write_inside(tmp_path, ["a", ".."], b"x")
    assert len(os.listdir("/proc/self/fd")) == before
