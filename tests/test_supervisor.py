"""The supervisor: logs, restarts, stops, and nothing outliving it, even after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lablib.errors import BackendError, NotFoundError
from lablib.local import supervisor as supervisor_module
from lablib.local.ports import allocate_port, port_accepts
from lablib.local.state import StateDir
from lablib.local.supervisor import (
    CRASH_LOOP,
    EXITED,
    OWNER_ENV,
    RUNNING,
    ProcessStartError,
    Supervisor,
    kill_stale,
)

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SLEEP = [PY, "-c", "import time; time.sleep(60)"]


def gone(pid: int) -> bool:
    """True when `pid` no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def eventually(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir("t", root=tmp_path)


@pytest.fixture
def sup(state: StateDir) -> Iterator[Supervisor]:
    seen: set[int] = set()
    supervisor = Supervisor(state)
    original = supervisor._spawn

    def recording_spawn(proc):  # remember every pid, restarts included
        popen = original(proc)
        seen.add(popen.pid)
        return popen

    supervisor._spawn = recording_spawn  # type: ignore[method-assign]
    yield supervisor
    supervisor.close()
    assert [pid for pid in seen if not gone(pid)] == []


def host(state: StateDir, child: list[str], *marker: str) -> subprocess.Popen[str]:
    """A Python process that runs a Supervisor starting `child`, then prints the child's pid."""
    code = (
        "import sys, time\n"
        "from lablib.local.state import StateDir\n"
        "from lablib.local.supervisor import Supervisor\n"
        "state = StateDir(sys.argv[1], root=sys.argv[2])\n"
        "state.pid_path.write_text(str(__import__('os').getpid()))\n"
        "sup = Supervisor(state)\n"
        "proc = sup.start('child', sys.argv[sys.argv.index('--') + 1 :])\n"
        "print(proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    return subprocess.Popen(
        [PY, "-c", code, state.mesh, str(state.root), *marker, "--", *child],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_output_goes_to_the_log_with_env(sup: Supervisor, state: StateDir) -> None:
    code = "import os, sys; print('out', os.environ['GREETING']); print('err', file=sys.stderr)"
    proc = sup.start("hello", [PY, "-c", code], env={"GREETING": "hi"}, restart=False)
    assert eventually(lambda: sup.status()[0]["state"] == EXITED)
    lines = state.log_path("hello").read_text().splitlines()
    assert "out hi" in lines and "err" in lines
    assert lines[0].startswith("--- ") and "supervisor: start: " in lines[0]
    assert lines[-1].startswith("--- ") and lines[-1].endswith("exited with code 0")
    assert sup.log_tail("hello", 2) == lines[-2:]
    assert sup.log_tail("hello", 100) == lines
    assert proc.exit_code == 0 and proc.pid is None


def test_children_are_tagged_with_their_mesh(sup: Supervisor, state: StateDir) -> None:
    proc = sup.start("tagged", SLEEP)
    environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    assert f"{OWNER_ENV}={state.path}".encode() in environ
    assert f"PATH={os.environ['PATH']}".encode() in environ  # env adds to ours


def test_status_and_pids(sup: Supervisor, state: StateDir) -> None:
    log = state.log_path("sleeper")
    code = "import time; print('up', flush=True); time.sleep(60)"
    proc = sup.start("sleeper", [PY, "-c", code], ready=lambda: log.read_text().endswith("\nup\n"))
    (row,) = sup.status()
    assert row["name"] == "sleeper" and row["pid"] == proc.pid
    assert row["state"] == RUNNING and row["ready"] and row["restarts"] == 0
    assert row["log"] == str(state.log_path("sleeper"))
    assert row["rss"] > 4_000_000  # a running Python interpreter is several MB
    assert abs(row["started_at"] - time.time()) < 5
    assert sup.pids() == {"sleeper": proc.pid}
    with pytest.raises(BackendError, match="already running"):
        sup.start("sleeper", SLEEP)
    assert sup.pids() == {"sleeper": proc.pid}
    with pytest.raises(NotFoundError):
        sup.log_tail("nobody")


def test_ready_waits_for_the_port(sup: Supervisor) -> None:
    port = allocate_port()
    code = (
        "import socket, time\n"
        "time.sleep(0.3)\n"
        f"s = socket.create_server(('127.0.0.1', {port}))\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    sup.start("server", [PY, "-c", code], ready=lambda: port_accepts(port))
    assert time.monotonic() - started >= 0.3
    assert port_accepts(port)


def test_exit_before_ready_shows_the_log(sup: Supervisor) -> None:
    code = "import sys; print('config error: boom', flush=True); sys.exit(4)"
    with pytest.raises(ProcessStartError) as info:
        sup.start("broken", [PY, "-c", code], ready=lambda: False)
    assert "broken exited with code 4 before it was ready" in str(info.value)
    assert "config error: boom" in info.value.log_tail
    assert sup.status()[0]["state"] == EXITED


def test_not_ready_in_time_is_stopped(sup: Supervisor) -> None:
    with pytest.raises(ProcessStartError, match="not ready after 0.3 s") as info:
        sup.start("slow", SLEEP, ready=lambda: False, ready_timeout=0.3)
    assert info.value.name == "slow"
    assert sup.status()[0]["state"] == EXITED and sup.pids() == {}


def test_missing_program_is_explained(sup: Supervisor) -> None:
    with pytest.raises(ProcessStartError, match="cannot run '/no/such/envoy'"):
        sup.start("ghost", ["/no/such/envoy"])


def test_restart_after_crash_calls_on_restart(sup: Supervisor, tmp_path: Path) -> None:
    port = allocate_port()
    flag = tmp_path / "crashed-once"
    # First run serves, then crashes; the second run serves for good.
    code = (
        "import os, socket, sys, time\n"
        f"s = socket.create_server(('127.0.0.1', {port}))\n"
        f"if not os.path.exists({str(flag)!r}):\n"
        f"    open({str(flag)!r}, 'w').close()\n"
        "    time.sleep(0.2); print('crashing', flush=True); os._exit(3)\n"
        "print('second run', flush=True); time.sleep(60)\n"
    )
    calls: list[tuple[str, bool]] = []
    sup.on_restart = lambda name: calls.append((name, port_accepts(port)))
    first = sup.start("app", [PY, "-c", code], ready=lambda: port_accepts(port))
    first_pid = first.pid
    assert eventually(lambda: bool(calls))
    assert calls == [("app", True)]  # called once, and only after the new run was ready
    (row,) = sup.status()
    assert row["state"] == RUNNING and row["restarts"] == 1 and row["pid"] != first_pid
    assert gone(first_pid)
    log = "\n".join(sup.log_tail("app", 50))
    assert "crashing" in log and "exited with code 3" in log
    assert "restart #1" in log and "second run" in log


def test_a_crash_loop_is_shown_and_retried_with_capped_back_off(state: StateDir) -> None:
    """As the kubelet does: CrashLoopBackOff is a state between tries, never giving up."""
    calls: list[str] = []
    with Supervisor(state, on_restart=calls.append, crash_loop_limit=3, backoff_max=0.4) as sup:
        code = "import time, sys; time.sleep(0.05); sys.exit(1)"
        sup.start("loop", [PY, "-c", code])
        assert eventually(lambda: sup.status()[0]["state"] == CRASH_LOOP, timeout=5)
        assert "(CrashLoopBackOff): next try in" in sup.log_tail("loop", 1)[0]
        # Back-off capped at 0.4 s: many more tries follow within a few seconds.
        assert eventually(lambda: sup.status()[0]["restarts"] >= 8, timeout=8)
        assert sup.status()[0]["exit_code"] in (1, None)
        sup.stop("loop")
        stopped = sup.status()[0]["restarts"]
        time.sleep(0.6)
        assert sup.status()[0]["restarts"] == stopped and sup.status()[0]["state"] == EXITED


def test_restart_false_stays_exited(sup: Supervisor) -> None:
    sup.start("once", [PY, "-c", "import time; time.sleep(0.1)"], restart=False)
    assert eventually(lambda: sup.status()[0]["state"] == EXITED)
    time.sleep(0.3)
    assert sup.status()[0]["restarts"] == 0


def test_stop_leaves_no_process(sup: Supervisor) -> None:
    # The child starts a grandchild in its process group, and ignores SIGTERM.
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(g.pid, flush=True); time.sleep(60)\n"
    )
    proc = sup.start("stubborn", [PY, "-c", code])
    assert eventually(lambda: sup.log_tail("stubborn", 1)[0].isdigit())
    grandchild = int(sup.log_tail("stubborn", 1)[0])
    pid = proc.pid
    assert pid is not None
    started = time.monotonic()
    sup.stop("stubborn", timeout=0.3)
    assert time.monotonic() - started < 2
    assert gone(pid) and eventually(lambda: gone(grandchild), 1)
    (row,) = sup.status()
    assert row["state"] == EXITED and row["exit_code"] == -signal.SIGKILL
    time.sleep(0.2)
    assert sup.pids() == {}  # the monitor did not restart a stopped process
    sup.stop("stubborn")  # stopping twice, or an unknown name, is harmless
    sup.stop("unknown")
    sup.start("stubborn", SLEEP)  # and the name can be started again
    assert sup.status()[0]["state"] == RUNNING


def test_stop_all_stops_everything_at_once(sup: Supervisor) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    pids = [sup.start(f"p{i}", [PY, "-c", code]).pid for i in range(3)]
    time.sleep(0.2)  # let them install their handlers
    started = time.monotonic()
    sup.stop_all(timeout=0.3)
    assert time.monotonic() - started < 1.5  # one shared timeout, not one each
    assert all(gone(pid) for pid in pids if pid)


def test_child_outlives_the_thread_that_asked_for_it(sup: Supervisor) -> None:
    # Control: a child forked directly by a short-lived thread dies with that thread.
    direct: list[subprocess.Popen[bytes]] = []

    def spawn_directly() -> None:
        parent = os.getpid()
        direct.append(
            subprocess.Popen(SLEEP, preexec_fn=supervisor_module._die_with_parent(parent))
        )

    t = threading.Thread(target=spawn_directly)
    t.start()
    t.join()
    assert eventually(lambda: direct[0].poll() is not None, 2)
    assert direct[0].returncode == -signal.SIGKILL

    # Through the supervisor, the spawner thread forks, so the child lives on.
    started = []
    t = threading.Thread(target=lambda: started.append(sup.start("kept", SLEEP)))
    t.start()
    t.join()
    time.sleep(0.5)
    assert started[0].popen.poll() is None
    assert sup.status()[0]["state"] == RUNNING


def test_children_die_when_the_supervisor_is_killed(state: StateDir) -> None:
    for _ in range(5):
        owner = host(state, SLEEP)
        assert owner.stdout is not None
        child = int(owner.stdout.readline())
        assert not gone(child)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        owner.stdout.close()
        assert eventually(lambda child=child: gone(child), 2), f"child {child} survived"


def test_kill_stale_cleans_up_after_a_killed_meshd(state: StateDir) -> None:
    # The child's own child is not covered by PR_SET_PDEATHSIG: the tag finds it.
    code = (
        "import subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(g.pid, flush=True); time.sleep(60)\n"
    )
    owner = host(state, [PY, "-c", code])
    assert owner.stdout is not None
    child = int(owner.stdout.readline())
    assert eventually(lambda: state.log_path("child").read_text().strip()[-1:].isdigit())
    grandchild = int(state.log_path("child").read_text().split()[-1])
    state.write_private("certs/k.pem", b"key")
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    owner.stdout.close()
    assert eventually(lambda: gone(child), 2)
    assert not gone(grandchild)  # orphaned: this is what kill_stale is for

    assert kill_stale(state) is None
    assert eventually(lambda: gone(grandchild), 1)
    assert not state.pid_path.exists() and not (state.certs / "k.pem").exists()
    assert state.log_path("child").exists()  # kept: it explains what happened


def test_kill_stale_leaves_a_live_meshd_alone(state: StateDir) -> None:
    owner = host(state, SLEEP, "meshd")  # "meshd" on its command line: ours
    try:
        assert owner.stdout is not None
        child = int(owner.stdout.readline())
        state.write_private("certs/k.pem", b"key")
        assert kill_stale(state) == owner.pid
        assert not gone(child) and state.pid_path.exists()
        # Without meshd.pid, the live meshd is found as the parent of the mesh's processes.
        state.pid_path.unlink()
        assert kill_stale(state) == owner.pid
        assert not gone(child) and (state.certs / "k.pem").exists()
        # A live process that is not a meshd (a reused pid) is stale, and so is what it runs.
        state.pid_path.write_text(str(child))
        assert kill_stale(state, marker="no-such-daemon") is None
        assert eventually(lambda: gone(child), 1)
        assert not state.pid_path.exists() and not (state.certs / "k.pem").exists()
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout:
            owner.stdout.close()


def test_kill_stale_on_a_dead_pid_clears_files(state: StateDir) -> None:
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    state.pid_path.write_text(str(dead.pid))
    state.write_json({"left": "over"})
    assert kill_stale(state) is None
    assert state.read_json() == {} and state.read_pid() is None
    assert state.path.is_dir()


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "poll"])
def test_watch_owner_fires_when_the_owner_dies(sup: Supervisor, monkeypatch, pidfd: bool) -> None:
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    elif not hasattr(os, "pidfd_open"):
        pytest.skip("no os.pidfd_open here")
    owner = subprocess.Popen(SLEEP)
    fired = threading.Event()
    sup.watch_owner(owner.pid, fired.set)
    time.sleep(0.3)
    assert not fired.is_set()
    killed = time.monotonic()
    owner.kill()
    assert fired.wait(2.0)
    assert time.monotonic() - killed < 0.5
    owner.wait()


def test_watch_owner_of_a_dead_process_fires_at_once(sup: Supervisor) -> None:
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    fired = threading.Event()
    sup.watch_owner(dead.pid, fired.set)
    assert fired.wait(1.0)


def test_closed_supervisor_refuses_to_start(state: StateDir) -> None:
    sup = Supervisor(state)
    pid = sup.start("s", SLEEP).pid
    sup.close()
    assert pid is not None and gone(pid)
    with pytest.raises(BackendError, match="closed"):
        sup.start("t", SLEEP)
