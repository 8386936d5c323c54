"""The per-mesh state folder: location, modes, atomic writes, clear errors, no collisions."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from lablib.errors import LabError
from lablib.local import state as state_module
from lablib.local.state import StateDir, StateDirError, default_root


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No LAB_* or XDG_RUNTIME_DIR from the caller; HOME is a fresh folder."""
    for name in ("LAB_STATE_DIR", "LAB_MESH", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_root_prefers_lab_state_dir(clean_env: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path / "explicit"))
    assert default_root() == tmp_path / "explicit"


def test_root_uses_writable_xdg_runtime_dir(clean_env: Path, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_root() == tmp_path / "istio-lab-kit"


def test_root_falls_back_to_cache_when_xdg_is_missing(clean_env: Path, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "does-not-exist"))
    assert default_root() == clean_env / ".cache" / "istio-lab-kit" / "run"


def test_layout_and_modes(clean_env: Path) -> None:
    old_umask = os.umask(0o022)  # a usual umask would leave 0755 folders and 0644 files
    try:
        sd = StateDir()
        key = sd.write_private(sd.certs / "workload.key", b"secret")
        relative = sd.write_private("certs/ca.key", "also secret")
    finally:
        os.umask(old_umask)
    assert sd.path == clean_env / ".cache" / "istio-lab-kit" / "run" / "default"
    assert mode(sd.path) == 0o700
    assert mode(sd.certs) == 0o700
    assert sd.logs.is_dir() and sd.envoy.is_dir()
    assert key.read_bytes() == b"secret" and mode(key) == 0o600
    assert relative == sd.certs / "ca.key" and mode(relative) == 0o600
    assert sd.pid_path.name == "meshd.pid" and sd.socket_path.name == "meshd.sock"
    assert sd.log_path("reviews-v1") == sd.logs / "reviews-v1.log"
    assert list(sd.certs.glob(".*.tmp")) == []  # no temp file left behind


def test_loose_existing_folder_is_tightened(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir(mode=0o755)
    os.chmod(tmp_path / "m", 0o755)
    assert mode(StateDir("m", root=tmp_path).path) == 0o700


def test_json_round_trip_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = StateDir("m", root=tmp_path)
    assert sd.read_json() == {}
    sd.write_json({"pods": ["a", "b"], "xds_port": 15010})
    assert sd.read_json() == {"pods": ["a", "b"], "xds_port": 15010}
    assert mode(sd.state_file) == 0o600

    def fail(*_: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    # A write that fails half-way leaves the previous content, not a truncated file.
    monkeypatch.setattr(state_module.os, "fsync", fail)
    with pytest.raises(StateDirError):
        sd.write_json({"pods": []})
    assert sd.read_json() == {"pods": ["a", "b"], "xds_port": 15010}
    assert [p.name for p in sd.path.iterdir() if p.name.endswith(".tmp")] == []


def test_corrupt_json_says_how_to_recover(tmp_path: Path) -> None:
    sd = StateDir("m", root=tmp_path)
    sd.state_file.write_text("{not json")
    with pytest.raises(StateDirError, match="reset the mesh"):
        sd.read_json()


def test_meshes_do_not_collide(clean_env: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path / "root"))
    monkeypatch.setenv("LAB_MESH", "alice-test1")
    first = StateDir()
    monkeypatch.setenv("LAB_MESH", "alice-test2")
    second = StateDir()
    assert first.path != second.path
    assert first.path.parent == second.path.parent == tmp_path / "root"
    first.write_json({"owner": "first"})
    second.write_json({"owner": "second"})
    first.pid_path.write_text("111")
    assert first.read_json() == {"owner": "first"}
    assert second.read_json() == {"owner": "second"}
    assert second.read_pid() is None and first.read_pid() == 111
    first.clear()
    assert not first.path.exists()
    assert second.read_json() == {"owner": "second"}


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "x" * 64])
def test_bad_mesh_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(StateDirError, match="not a valid mesh name"):
        StateDir(name, root=tmp_path)


def test_clear_can_keep_logs(tmp_path: Path) -> None:
    sd = StateDir("m", root=tmp_path)
    sd.log_path("app").write_text("why it crashed\n")
    sd.write_private(sd.certs / "k.pem", b"k")
    sd.write_private(sd.envoy / "p.json", b"{}")
    sd.write_json({"a": 1})
    sd.pid_path.write_text("1")
    sd.clear(keep_logs=True)
    assert sorted(p.name for p in sd.path.iterdir()) == ["logs"]
    assert sd.log_path("app").read_text() == "why it crashed\n"
    sd.clear()
    assert not sd.path.exists()
    sd.clear()  # clearing twice is harmless
    sd.write_json({"b": 2})  # and the folder comes back on the next write
    assert sd.read_json() == {"b": 2} and mode(sd.path) == 0o700


def test_unwritable_folder_gives_clear_error(tmp_path: Path, monkeypatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        # root writes anywhere, so make mkdir answer what it answers a learner.
        def refuse(self: Path, *_: object, **__: object) -> None:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))

        monkeypatch.setattr(Path, "mkdir", refuse)
    else:
        os.chmod(locked, 0o555)
    with pytest.raises(StateDirError) as info:
        StateDir("m", root=locked / "run")
    text = str(info.value)
    assert "not writable" in text and "Permission denied" in text
    assert "LAB_STATE_DIR" in text and str(locked / "run") in text
    os.chmod(locked, 0o755)


@pytest.mark.parametrize(
    ("code", "why"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "not writable"),
        (errno.EACCES, "not writable"),
    ],
)
def test_disk_errors_say_what_to_do(tmp_path: Path, monkeypatch, code: int, why: str) -> None:
    sd = StateDir("m", root=tmp_path)

    def fail(*_: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(state_module.os, "fsync", fail)
    with pytest.raises(LabError) as info:
        sd.write_private("certs/k.pem", b"x")
    assert isinstance(info.value, StateDirError)
    assert why in str(info.value) and "fix: " in str(info.value)
    assert "LAB_STATE_DIR" in str(info.value)


def test_folder_under_a_file_is_explained(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateDirError, match="cannot create the mesh state folder"):
        StateDir("m", root=tmp_path / "file")


def test_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a folder to another user")
    (tmp_path / "m").mkdir()
    os.chown(tmp_path / "m", 65534, 65534)
    with pytest.raises(StateDirError, match="belongs to another user"):
        StateDir("m", root=tmp_path)


def test_too_long_socket_path_is_explained(tmp_path: Path) -> None:
    sd = StateDir("m", root=tmp_path / ("x" * 120))
    with pytest.raises(StateDirError, match="shorter folder"):
        _ = sd.socket_path
