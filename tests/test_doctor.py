"""`lablib doctor`, `status` and `down` against real meshes and a stripped PATH."""

from __future__ import annotations

import os
import signal
import time

import pytest

import lablib
from lablib import cli
from lablib.doctor import checks


def row(rows, name):
    return next(r for r in rows if r["check"] == name)


def test_a_missing_required_tool_fails_with_its_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no curl, openssl or nc here
    rows = checks()
    curl = row(rows, "curl")
    assert curl["ok"] is False and curl["fix"] == "apt-get install curl"
    assert row(rows, "nc")["ok"] is None  # optional: reported, not failed
    assert row(rows, "envoy")["ok"] is True  # found in the venv, not on PATH
    assert cli.main(["doctor"]) == 1
    assert "fix: apt-get install curl" in capsys.readouterr().out


def test_an_unknown_backend_is_flagged_with_the_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("LAB_BACKEND", "kubernets")
    found = row(checks(), "backend")
    assert found["ok"] is False and '"kubernetes"' in found["fix"]
    monkeypatch.setenv("LAB_BACKEND", "kubernetes")
    assert row(checks(), "backend")["ok"] is True


@pytest.mark.envoy
def test_doctor_status_and_down_see_a_running_mesh(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("LAB_MESH", "workshop")
    mesh = lablib.connect("local")
    try:
        mesh.install()
        found = row(checks(), "mesh workshop")
        assert found["ok"] is True and "loopback ports" in found["detail"]
        assert cli.main(["status"]) == 0
        out = capsys.readouterr().out
        assert "kube-system.kube-proxy" in out and f"held by pid {os.getpid()}" in out
        assert_a_process_that_stays_down_is_reported(mesh, capsys)
        assert cli.main(["down", "--all"]) == 0
        assert "mesh workshop: stopped" in capsys.readouterr().out
        assert row(checks(), "mesh workshop")["detail"] == "not running"
    finally:
        if cli.attach("workshop"):
            mesh.uninstall()


def assert_a_process_that_stays_down_is_reported(mesh, capsys) -> None:
    """The kube-proxy stand-in killed with a broken bootstrap: every restart fails, and
    status and doctor say it is down until the bootstrap is good again."""
    [proc] = [r for r in mesh.processes() if r["name"] == "kube-system.kube-proxy"]
    bootstrap = mesh.state.envoy / "kube-proxy.json"
    good = bootstrap.read_text()
    bootstrap.write_text("{not json")
    try:
        os.kill(proc["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not [r for r in checks() if r["ok"] is False and "kube-proxy" in r["detail"]]:
            assert time.monotonic() < deadline, "doctor never said kube-proxy is down"
            time.sleep(0.1)
        assert cli.main(["status"]) == 0
        assert "DOWN" in capsys.readouterr().out
    finally:
        bootstrap.write_text(good)
    deadline = time.monotonic() + 30
    while [r for r in checks() if r["ok"] is False and r["check"] == "mesh workshop"]:
        assert time.monotonic() < deadline, "kube-proxy did not come back"
        time.sleep(0.2)
