"""Logs never break the mesh: a full disk loses log lines, not requests, and every log in the
state folder is capped with one older copy kept."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lablib import doctor
from lablib.local import state
from lablib.local.logcap import cap_logs
from lablib.telemetry.accesslog import LogTail

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (ENOSPC on write)")
def test_an_app_whose_log_disk_is_full_still_answers() -> None:
    """/dev/full fails every write with ENOSPC, as a full state disk does."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open("/dev/full", "wb") as full:
        app = subprocess.Popen([sys.executable, "-m", "lablib.apps.bookinfo.details", "--port",
                                str(port)], stdout=full, stderr=full, env=env)
    try:
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 15
        statuses = []
        while time.monotonic() < deadline and len(statuses) < 20:
            try:
                with direct.open(f"http://127.0.0.1:{port}/details/0", timeout=5) as answer:
                    statuses.append(answer.status)
            except urllib.error.URLError as exc:
                if not isinstance(exc.reason, ConnectionRefusedError):
                    raise
                time.sleep(0.1)  # still starting
        assert statuses == [200] * 20
        assert app.poll() is None
    finally:
        app.terminate()
        app.wait(timeout=10)


def test_a_log_over_the_cap_is_rotated_keeping_one_old_copy(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    with open(log, "ab") as writer:  # a writer holding O_APPEND, as every one of the mesh does
        writer.write(b"x" * 2000 + b"\n")
        writer.flush()
        small = tmp_path / "small.log"
        small.write_bytes(b"y" * 10)
        assert cap_logs(tmp_path, cap=1000) == [log]
        assert (tmp_path / "app.log.1").stat().st_size == 2001
        assert log.stat().st_size == 0
        assert small.read_bytes() == b"y" * 10 and not (tmp_path / "small.log.1").exists()
        writer.write(b"after\n")
        writer.flush()
    assert log.read_bytes() == b"after\n"  # appended at the new end, no hole
    (tmp_path / "app.log").write_bytes(b"z" * 3000)
    cap_logs(tmp_path, cap=1000)
    assert (tmp_path / "app.log.1").read_bytes() == b"z" * 3000  # one old copy, the latest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "app.log.1", "small.log"]


def test_the_access_log_reader_follows_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "proxy.access.log"
    log.write_text('{"n": 1}\n' * 50)
    tail = LogTail(str(log))
    assert len(tail.read()) == 50
    cap_logs(tmp_path, cap=100)
    with open(log, "a") as writer:
        writer.write('{"n": 2}\n')
    assert len(tail.read()) == 1


@pytest.mark.parametrize(("free", "chosen"), [(10 * 1024**2, "home"), (8 * 1024**3, "runtime")])
def test_the_default_state_root_is_a_folder_with_room(tmp_path: Path, free: int, chosen: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A small $XDG_RUNTIME_DIR tmpfs is passed over for ~/.cache."""
    runtime, home = tmp_path / "runtime", tmp_path / "home"
    runtime.mkdir()
    monkeypatch.delenv("LAB_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(state, "free_space", lambda path: free if path == runtime else 0)
    expected = {"home": home / ".cache" / "istio-lab-kit" / "run",
                "runtime": runtime / "istio-lab-kit"}[chosen]
    assert state.default_root() == expected


@pytest.mark.parametrize(("free", "ok"), [(50 * 1024**3, True), (500 * 1024**2, None),
                                          (10 * 1024**2, False)])
def test_doctor_reports_the_free_space_of_the_state_disk(tmp_path: Path, free: int,
                                                         ok: bool | None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "free_space", lambda path: free)
    row = doctor.state_disk_row(tmp_path)
    assert row["ok"] is ok
    assert f"{free / 1024**3:.1f} GiB free for {tmp_path}" in row["detail"]
    assert ("LAB_STATE_DIR" in row["fix"]) is (ok is not True)


def test_free_space_is_measured_on_the_nearest_existing_folder(tmp_path: Path) -> None:
    assert state.free_space(tmp_path / "not" / "yet") == state.free_space(tmp_path) > 0
