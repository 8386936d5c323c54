"""The supervisor: starts, watches, restarts and stops every process of one local mesh.

Nothing may outlive the mesh, even when meshd is killed with SIGKILL. Three mechanisms:

* Each child asks the kernel (prctl PR_SET_PDEATHSIG) for SIGKILL when its parent dies. The
  kernel's "parent" is the *thread* that forked, so every spawn (first starts and restarts)
  happens on one spawner thread that lives exactly as long as the Supervisor.
* Each child leads its own process group, so `stop` reaches what it spawned too.
* Each child carries `LAB_SUPERVISOR_DIR=<mesh folder>` in its environment; `kill_stale`
  finds what a dead meshd left (grandchildren included) by that tag.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import re
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BackendError, NotFoundError
from .state import StateDir, explained

__all__ = [
    "CRASH_LOOP",
    "EXITED",
    "RESTARTING",
    "RUNNING",
    "STARTING",
    "ManagedProcess",
    "ProcessStartError",
    "Supervisor",
    "command_line",
    "kill_stale",
    "pid_alive",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

STARTING = "Starting"
RUNNING = "Running"
RESTARTING = "Restarting"  # exited unexpectedly, waiting out its back-off
EXITED = "Exited"
CRASH_LOOP = "CrashLoopBackOff"

OWNER_ENV = "LAB_SUPERVISOR_DIR"
BACKOFF_START = 0.1
# As the kubelet restarts a crashing container for ever with a doubling back-off (capped at
# five minutes there, ten seconds here: a learner should not wait long once the cause is gone).
BACKOFF_MAX = 10.0
FAST_CRASH_SECONDS = 10.0  # a run shorter than this counts towards a crash loop
TICK = 0.05  # how often the monitor looks at its processes
OWNER_POLL = 0.1  # owner liveness poll when pidfd_open is unavailable
TAIL_LINES = 20
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.~-]{0,199}")
PR_SET_PDEATHSIG = 1


class ProcessStartError(BackendError):
    """A process exited, or never became ready, while being started."""

    def __init__(self, name: str, headline: str, log_path: Path, tail: list[str]):
        if tail:
            shown = "\n".join("    " + line for line in tail)
            text = f"{headline}\nlast {len(tail)} lines of {log_path}:\n{shown}"
        else:
            text = f"{headline}\n({log_path} has nothing from this run)"
        super().__init__(text)
        self.name = name
        self.log_tail = tail


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl on Linux, resolved once in the parent (the child only calls it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn asking for SIGKILL when the spawning thread dies."""
    sigkill = int(signal.SIGKILL)

    def setup() -> None:
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, sigkill)
        # If the parent died between fork and prctl, nobody will ever send that signal.
        if os.getppid() != parent_pid:
            os._exit(1)

    return setup


def _describe_exit(code: int | None) -> str:
    """'code 1' or 'signal SIGKILL' for a Popen returncode."""
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _signal_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid`, if it still exists."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _read_tail(path: Path, n: int, start: int = 0) -> list[str]:
    """The last `n` lines of `path` after byte `start`, reading at most the last 64 KiB."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = start if start <= size else 0  # the log was rotated (logcap) since
            begin = max(start, size - 65536)
            f.seek(begin)
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode(errors="replace").splitlines()
    if begin > start and lines:
        lines = lines[1:]  # began mid-line
    return lines[-n:] if n > 0 else []


def _proc_stat_state(pid: int) -> str | None:
    """The one-letter state of `pid` from /proc (R, S, Z...), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return _proc_stat_state(pid) != "Z"


def _rss(pid: int | None) -> int | None:
    """Resident memory of `pid` in bytes, from /proc/<pid>/statm."""
    if pid is None:
        return None
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _wait_for_exit(pid: int, cancel: threading.Event) -> bool:
    """Block until `pid` exits (True) or `cancel` is set (False)."""
    fd: int | None = None
    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return True
        except OSError:
            fd = None  # ENOSYS on old kernels, EPERM in some sandboxes: poll instead
    try:
        while not cancel.is_set():
            if fd is not None:
                # A pidfd turns readable the moment the process exits, zombie or not.
                if select.select([fd], [], [], 0.25)[0]:
                    return True
            elif not pid_alive(pid):
                return True
            else:
                cancel.wait(OWNER_POLL)
        return False
    finally:
        if fd is not None:
            os.close(fd)


@dataclass(eq=False)
class ManagedProcess:
    """One supervised process: how to start it again, and how it is doing."""

    name: str
    argv: list[str]
    env: dict[str, str] | None
    cwd: str | None
    restart: bool
    ready_check: Callable[[], bool] | None
    ready_timeout: float
    log_path: Path
    state: str = STARTING
    ready: bool = False
    restarts: int = 0
    started_at: float = 0.0  # wall clock, for people
    exit_code: int | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    run_started: float = field(default=0.0, repr=False)  # monotonic, for crash-loop timing
    log_offset: int = field(default=0, repr=False)  # where this run's output starts
    fast_crashes: int = field(default=0, repr=False)
    restart_at: float = field(default=0.0, repr=False)
    ready_deadline: float = field(default=0.0, repr=False)
    stopping: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int | None:
        """The pid of the current run, or None when not running."""
        if self.popen is None or self.popen.returncode is not None:
            return None
        return self.popen.pid


class Supervisor:
    """Owns the child processes of one mesh; see the module docstring for the guarantees."""

    def __init__(
        self,
        state: StateDir,
        *,
        on_restart: Callable[[str], None] | None = None,
        crash_loop_limit: int = 5,
        backoff_max: float = BACKOFF_MAX,
    ):
        self.state = state
        self.on_restart = on_restart  # called with the name once a restarted process is ready
        self.crash_loop_limit = crash_loop_limit  # fast crashes in a row shown as CrashLoopBackOff
        self.backoff_max = backoff_max
        self._procs: dict[str, ManagedProcess] = {}
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._spawn_queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._spawner = threading.Thread(
            target=self._spawn_loop, name="supervisor-spawner", daemon=True
        )
        self._monitor = threading.Thread(
            target=self._monitor_loop, name="supervisor-monitor", daemon=True
        )
        self._events = ThreadPoolExecutor(max_workers=1, thread_name_prefix="supervisor-events")
        self._spawner.start()
        self._monitor.start()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- spawning ----------------------------------------------------------------------------
    def _spawn_loop(self) -> None:
        """Run every spawn request; children die with this thread (PR_SET_PDEATHSIG)."""
        while True:
            item = self._spawn_queue.get()
            if item is None:
                return
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)

    def _on_spawner(self, job: Callable[[], T]) -> T:
        """Run `job` on the spawner thread and wait for its result."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed.is_set():
                raise BackendError("the supervisor is closed: start the mesh again")
            self._spawn_queue.put((job, future))
        return future.result()

    def _spawn(self, proc: ManagedProcess) -> subprocess.Popen[bytes]:
        """Start one run of `proc` with its output appended to its log (spawner thread only)."""
        if not proc.log_path.parent.is_dir():
            self.state.ensure()  # the folder was cleared under us
        with explained(proc.log_path.parent, f"open the log of {proc.name}"):
            log_fd = os.open(
                proc.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        try:
            what = f"restart #{proc.restarts}" if proc.restarts else "start"
            header = (
                f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} supervisor: {what}: "
                f"{shlex.join(proc.argv)}\n"
            )
            with explained(proc.log_path.parent, f"write the log of {proc.name}"):
                os.write(log_fd, header.encode())
            proc.log_offset = os.fstat(log_fd).st_size
            env = {**os.environ, **(proc.env or {}), OWNER_ENV: str(self.state.path)}
            try:
                return subprocess.Popen(
                    proc.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=proc.cwd,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(os.getpid()),
                )
            except OSError as exc:
                raise ProcessStartError(
                    proc.name,
                    f"cannot run {proc.argv[0]!r} for {proc.name}: {exc.strerror or exc}",
                    proc.log_path,
                    [],
                ) from exc
        finally:
            os.close(log_fd)

    def _note(self, proc: ManagedProcess, text: str) -> None:
        """Append a supervisor remark to the process's log, where learners look."""
        line = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} supervisor: {text}\n"
        try:
            with open(proc.log_path, "a") as f:
                f.write(line)
        except OSError:
            pass  # a missing log must not stop supervision

    # --- public operations -------------------------------------------------------------------
    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        restart: bool = True,
        ready: Callable[[], bool] | None = None,
        ready_timeout: float = 10.0,
    ) -> ManagedProcess:
        """Start `argv` as `name` (env is added to ours) and wait until `ready()` is true."""
        if not NAME.fullmatch(name):
            raise BackendError(
                f"{name!r} is not a valid process name: use letters, digits, '.', '_', '~' and '-'"
            )
        proc = ManagedProcess(
            name,
            [str(a) for a in argv],
            dict(env) if env else None,
            os.fspath(cwd) if cwd is not None else None,
            restart,
            ready,
            ready_timeout,
            self.state.log_path(name),
        )
        with self._lock:
            old = self._procs.get(name)
            if old is not None and old.state not in (EXITED, CRASH_LOOP):
                raise BackendError(
                    f"a process called {name!r} is already running (pid {old.pid}); stop it first"
                )
            self._procs[name] = proc
            try:
                proc.popen = self._on_spawner(lambda: self._spawn(proc))
            except BaseException:
                proc.state = EXITED
                raise
            proc.started_at = time.time()
            proc.run_started = time.monotonic()
        self._wait_ready(proc)
        return proc

    def _wait_ready(self, proc: ManagedProcess) -> None:
        """Wait for the first run of `proc` to be ready; stop it and explain if it is not."""
        assert proc.popen is not None
        deadline = time.monotonic() + proc.ready_timeout
        while True:
            code = proc.popen.poll()
            if code is not None:
                with self._lock:
                    proc.state, proc.exit_code = EXITED, code
                headline = (
                    f"{proc.name} was stopped while starting"
                    if proc.stopping
                    else f"{proc.name} exited with {_describe_exit(code)} before it was ready"
                )
                raise ProcessStartError(proc.name, headline, proc.log_path, self._run_tail(proc))
            if proc.ready_check is None or self._check_ready(proc):
                break
            if time.monotonic() >= deadline:
                with self._lock:
                    proc.stopping = True
                self._note(proc, f"not ready after {proc.ready_timeout:g} s: stopping it")
                self._terminate([proc], timeout=1.0)
                raise ProcessStartError(
                    proc.name,
                    f"{proc.name} was not ready after {proc.ready_timeout:g} s, so it was stopped",
                    proc.log_path,
                    self._run_tail(proc),
                )
            time.sleep(0.02)
        with self._lock:
            if proc.state == STARTING:
                proc.state, proc.ready = RUNNING, True

    def _run_tail(self, proc: ManagedProcess) -> list[str]:
        """The last lines the current run of `proc` wrote."""
        return _read_tail(proc.log_path, TAIL_LINES, proc.log_offset)

    def _check_ready(self, proc: ManagedProcess) -> bool:
        """Call the readiness check; a check that raises means "not yet"."""
        assert proc.ready_check is not None
        try:
            return bool(proc.ready_check())
        except Exception:
            return False

    def stop(self, name: str, timeout: float = 2.0) -> None:
        """SIGTERM the process group of `name`, SIGKILL it after `timeout` s; unknown: no-op."""
        with self._lock:
            proc = self._procs.get(name)
            if proc is None:
                return
            proc.stopping = True
        self._terminate([proc], timeout)

    def stop_all(self, timeout: float = 2.0) -> None:
        """Stop every process at once (one shared `timeout`)."""
        with self._lock:
            procs = list(self._procs.values())
            for proc in procs:
                proc.stopping = True
        self._terminate(procs, timeout)

    def _terminate(self, procs: list[ManagedProcess], timeout: float) -> None:
        """SIGTERM each group, wait up to `timeout`, then SIGKILL whatever is left."""
        live = [p.popen for p in procs if p.popen is not None and p.popen.poll() is None]
        for popen in live:
            _signal_group(popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for popen in live:
            try:
                popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for popen in live:
            # Also reaches children that ignored SIGTERM after their parent exited.
            _signal_group(popen.pid, signal.SIGKILL)
            try:
                popen.wait(5.0)
            except subprocess.TimeoutExpired:  # stuck in the kernel (D state): nothing more to do
                log.warning("process %d did not die after SIGKILL", popen.pid)
        with self._lock:
            for proc in procs:
                if proc.state != EXITED or proc.popen in live:
                    if proc.popen is not None:
                        proc.exit_code = proc.popen.returncode
                    proc.state, proc.ready = EXITED, False
                    self._note(proc, f"stopped ({_describe_exit(proc.exit_code)})")

    def close(self) -> None:
        """Stop every process and the supervisor's threads; the object is unusable after."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self.stop_all()
        self._spawn_queue.put(None)
        self._spawner.join()
        self._monitor.join()
        self._events.shutdown(wait=False, cancel_futures=True)

    # --- monitoring --------------------------------------------------------------------------
    def _monitor_loop(self) -> None:
        """Notice exits, restart with back-off, and check restarted processes' readiness."""
        while not self._closed.wait(TICK):
            try:
                self._tick()
            except Exception:  # the monitor must outlive any one bad process
                log.exception("supervisor monitor tick failed")

    def _tick(self) -> None:
        """One pass of the monitor over every process."""
        with self._lock:
            for proc in self._procs.values():
                if proc.stopping:
                    continue
                if (
                    proc.state == RUNNING
                    and proc.popen is not None
                    and proc.popen.poll() is not None
                ):
                    self._on_exit(proc)
                if proc.state in (RESTARTING, CRASH_LOOP) and time.monotonic() >= proc.restart_at:
                    self._respawn(proc)
            waiting = [
                (p, p.popen)
                for p in self._procs.values()
                if p.state == RUNNING and not p.ready and not p.stopping
            ]
        # Readiness checks may take a moment (an HTTP call): do not hold the lock for them.
        for proc, popen in waiting:
            ok = self._check_ready(proc)
            with self._lock:
                if proc.popen is not popen or proc.state != RUNNING or proc.stopping:
                    continue
                if ok:
                    proc.ready = True
                    self._notify_restart(proc.name)
                elif time.monotonic() >= proc.ready_deadline and popen is not None:
                    self._note(
                        proc, f"not ready {proc.ready_timeout:g} s after restart: killing it"
                    )
                    _signal_group(popen.pid, signal.SIGKILL)  # next tick counts a crash

    def _on_exit(self, proc: ManagedProcess) -> None:
        """Record an unexpected exit and schedule a restart with back-off (lock held)."""
        assert proc.popen is not None
        proc.exit_code, proc.ready = proc.popen.returncode, False
        self._note(proc, f"exited with {_describe_exit(proc.exit_code)}")
        if not proc.restart:
            proc.state = EXITED
            return
        quick = time.monotonic() - proc.run_started < FAST_CRASH_SECONDS
        proc.fast_crashes = proc.fast_crashes + 1 if quick else 1
        backoff = min(BACKOFF_START * 2 ** (proc.fast_crashes - 1), self.backoff_max)
        proc.restart_at = time.monotonic() + backoff
        if proc.fast_crashes >= self.crash_loop_limit:
            proc.state = CRASH_LOOP
            self._note(
                proc,
                f"crashed {proc.fast_crashes} times in a row within "
                f"{FAST_CRASH_SECONDS:g} s of starting ({CRASH_LOOP}): next try in {backoff:g} s",
            )
            return
        proc.state = RESTARTING

    def _respawn(self, proc: ManagedProcess) -> None:
        """Start the next run of `proc` with its original argv and env (lock held)."""
        proc.restarts += 1
        try:
            proc.popen = self._on_spawner(lambda: self._spawn(proc))
        except Exception as exc:
            proc.state = EXITED
            self._note(proc, f"could not restart: {exc}")
            return
        proc.state, proc.exit_code = RUNNING, None
        proc.started_at, proc.run_started = time.time(), time.monotonic()
        if proc.ready_check is None:
            proc.ready = True
            self._notify_restart(proc.name)
        else:
            proc.ready = False
            proc.ready_deadline = time.monotonic() + proc.ready_timeout

    def _notify_restart(self, name: str) -> None:
        """Tell `on_restart` about `name` on the events thread, so the monitor never waits."""
        callback = self.on_restart
        if callback is None or self._closed.is_set():
            return

        def call() -> None:
            try:
                callback(name)
            except Exception:
                log.exception("on_restart(%r) failed", name)

        self._events.submit(call)

    # --- views -------------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """One row per process: name, pid, state, ready, restarts, started_at, log, rss..."""
        with self._lock:
            procs = [(p, p.pid) for p in self._procs.values()]
            rows = [
                {
                    "name": p.name,
                    "pid": pid,
                    "state": p.state,
                    "ready": p.ready,
                    "restarts": p.restarts,
                    "started_at": p.started_at,
                    "exit_code": p.exit_code,
                    "log": str(p.log_path),
                    "rss": None,
                }
                for p, pid in procs
            ]
        for row, (_, pid) in zip(rows, procs, strict=True):
            row["rss"] = _rss(pid)  # read outside the lock: /proc may be slow under load
        return rows

    def pids(self) -> dict[str, int]:
        """The pid of every process that is running now, by name."""
        with self._lock:
            return {p.name: pid for p in self._procs.values() if (pid := p.pid) is not None}

    def log_tail(self, name: str, n: int = TAIL_LINES) -> list[str]:
        """The last `n` lines of the log of `name` (every run, with supervisor remarks)."""
        path = self.state.log_path(name)
        if name not in self._procs and not path.exists():
            raise NotFoundError(f"no process called {name!r} has run in this mesh")
        return _read_tail(path, n)

    # --- owner -------------------------------------------------------------------------------
    def watch_owner(self, pid: int, on_exit: Callable[[], None]) -> None:
        """Call `on_exit()` (on a watcher thread) as soon as process `pid` ends."""

        def watch() -> None:
            if _wait_for_exit(pid, self._closed):
                log.info("owner process %d ended", pid)
                on_exit()

        threading.Thread(target=watch, name=f"supervisor-owner-{pid}", daemon=True).start()


# --- start-up clean-up -----------------------------------------------------------------------
def command_line(pid: int) -> str | None:
    """The command line of `pid`, space-joined, or None when unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _owned_by_us(pid: int) -> bool:
    """True when `pid` runs as this user."""
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.geteuid()
    except OSError:
        return False


def _is_daemon(pid: int, marker: str) -> bool:
    """True when `pid` is a live process of ours whose command line mentions `marker`."""
    if pid == os.getpid() or not pid_alive(pid) or not _owned_by_us(pid):
        return False
    return marker in (command_line(pid) or "")


def _tagged(pid: int, tag: bytes) -> bool:
    """True when `pid` was started with `tag` (b"KEY=value") in its environment."""
    try:
        return tag in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False  # gone, or another user's


def _ppid(pid: int) -> int | None:
    """The parent pid of `pid`, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _leftovers(state: StateDir, marker: str) -> tuple[list[int], int | None]:
    """Processes started for `state` whose supervisor is gone, and a live supervisor if any."""
    tag = f"{OWNER_ENV}={state.path}".encode()
    orphans = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        if not _tagged(pid, tag) or _proc_stat_state(pid) in (None, "Z"):
            continue
        parent = _ppid(pid)
        if parent is not None and _is_daemon(parent, marker):
            return [], parent  # a meshd runs this mesh even though meshd.pid does not say so
        # A tagged parent takes this one with it (same process group), or is legitimate.
        if parent is None or not _tagged(parent, tag):
            orphans.append(pid)
    return orphans, None


def kill_stale(state: StateDir, marker: str = "meshd") -> int | None:
    """Clean up after a dead meshd of this mesh; return the pid of a live one, if any.

    A meshd is live when meshd.pid names a running process of this user whose command line
    contains `marker`, or when such a process is the parent of a process started for this
    mesh. Otherwise every leftover process of this mesh is killed (with its process group)
    and the mesh folder is cleared, keeping the logs that may explain what happened.
    Call it before this process writes meshd.pid or opens its socket.
    """
    pid = state.read_pid()
    if pid is not None and _is_daemon(pid, marker):
        return pid
    for _ in range(5):
        orphans, live = _leftovers(state, marker)
        if live is not None:
            return live
        if not orphans:
            break
        for orphan in orphans:
            try:
                if os.getpgid(orphan) == orphan:
                    os.killpg(orphan, signal.SIGKILL)
                else:
                    os.kill(orphan, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)
    state.clear(keep_logs=True)
    state.ensure()
    return None
