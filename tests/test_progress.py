"""Progress bars: a widget in a notebook, one redrawn line on a terminal, nothing elsewhere."""

from __future__ import annotations

import http.server
import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lablib import progress
from lablib.load import load
from lablib.local.client import LocalBackend
from lablib.progress import Progress, progress_mode


class Terminal(io.StringIO):
    """A stream that says it is a TTY."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def no_throttle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "REFRESH_S", 0.0)
    monkeypatch.delenv("LAB_PROGRESS", raising=False)


def test_the_mode_follows_where_output_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert progress_mode(io.StringIO()) == "off"  # a pipe, a file, CI
    assert progress_mode(Terminal()) == "terminal"
    monkeypatch.setenv("LAB_PROGRESS", "off")
    assert progress_mode(Terminal()) == "off"
    assert Progress("x").mode == "off"  # pytest captures stderr


def test_a_terminal_gets_one_line_redrawn_in_place() -> None:
    out = Terminal()
    with Progress("apply", 4, "pods", delay=0, stream=out) as bar:
        for done in range(1, 5):
            bar.update(done, step="ready")
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, ended once
    frames = text.rstrip("\n").split("\r")[1:]
    assert len(frames) == 5  # four updates and the outcome
    assert "1/4 pods ready" in frames[0] and "[" + "#" * 6 + "." * 18 + "]" in frames[0]
    assert "4/4 pods ready, done in" in frames[-1] and "#" * 24 in frames[-1]


def test_a_shorter_line_blanks_what_the_longer_one_left() -> None:
    out = Terminal()
    bar = Progress("apply", 2, delay=0, stream=out)
    bar.update(1, step="a long description of the step")
    bar.update(2, step="short")
    first, second = out.getvalue().split("\r")[1:]
    assert len(second) >= len(first)


def test_a_quick_operation_shows_nothing() -> None:
    out = Terminal()
    with Progress("apply", 3, delay=60, stream=out) as bar:
        bar.update(3)
    assert out.getvalue() == ""


def test_a_failure_is_shown_as_stopped() -> None:
    out = Terminal()
    with pytest.raises(KeyboardInterrupt), Progress("load", 10, delay=0, stream=out) as bar:
        bar.update(3)
        raise KeyboardInterrupt
    last = out.getvalue().split("\r")[-1]
    assert "3/10" in last and "stopped after" in last and "#" * 24 not in last
    bar.update(9)  # after close: ignored
    assert out.getvalue().split("\r")[-1] == last


def test_a_notebook_gets_a_widget_updated_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython.display

    shown: list[Any] = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    with Progress("istio install", 5, delay=0, mode="widget") as bar:
        bar.update(2, step="pods ready")
        bar.update(4, step="pods ready")
    assert len(shown) == 1  # displayed once, then updated
    widget, label = shown[0].children
    assert widget.max == progress.STEPS and widget.value == progress.STEPS
    assert widget.bar_style == "success"
    assert label.value.startswith("istio install: 4/5 pods ready, done in")


def test_an_unknown_total_shows_counts_only() -> None:
    out = Terminal()
    bar = Progress("send", delay=0, stream=out)
    bar.update(7)
    assert "send: 7," in out.getvalue() and "[" + "." * 24 + "]" in out.getvalue()


# --- where the bars are used ----------------------------------------------------------------


class Quick(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quick)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_load_run_draws_nothing_off_a_terminal(server, capsys) -> None:
    assert load(server, connections=2, duration=0.8).codes()[200] > 0
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_a_load_run_draws_its_bar_on_a_terminal(server, monkeypatch) -> None:
    out = Terminal()
    monkeypatch.setattr("sys.stderr", out)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    load(server, connections=2, duration=1.0)
    text = out.getvalue()
    assert text.startswith("\r[") and "load: " in text and " requests" in text
    assert "1/1 s" in text.splitlines()[-1] and "done in" in text


def test_meshd_progress_moves_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    client = LocalBackend.__new__(LocalBackend)
    answers = iter([{}, {"op": "x", "step": "pods ready", "done": 2, "total": 3}])
    monkeypatch.setattr(client, "call", lambda method, **kw: next(answers))
    bar = Progress("apply", delay=0, mode="terminal", stream=Terminal())
    read = client._progress_reader("x", bar)
    read()
    assert bar.done == 0 and bar.total is None  # meshd had not started the operation yet
    read()
    assert (bar.done, bar.total, bar.step) == (2, 3, "pods ready")
