"""Progress bars for long operations: a widget in a notebook, one line on a terminal, else nothing.

The mode is chosen once per bar: `widget` inside a Jupyter kernel (an ipywidgets IntProgress
and a label, updated in place), `terminal` when standard error is a TTY (one line redrawn
with a carriage return), `off` otherwise (CI, pipes, pytest). `LAB_PROGRESS=off` turns bars
off everywhere. An operation that ends within `delay` seconds shows nothing at all.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

__all__ = ["DELAY_S", "Progress", "progress_mode"]

DELAY_S = 0.5  # quicker operations show no bar
REFRESH_S = 0.1  # redraw at most this often
BAR_WIDTH = 24
STEPS = 1000  # the widget's resolution: done/total may be fractions (seconds of a run)
OFF_WORDS = ("0", "off", "no", "false")


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (IPython with a kernel), which can show widgets."""
    if "IPython" not in sys.modules:  # never import IPython just to find out
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def progress_mode(stream: TextIO | None = None) -> str:
    """`widget`, `terminal` or `off`, for a bar that would write to `stream` (stderr)."""
    if os.environ.get("LAB_PROGRESS", "").strip().lower() in OFF_WORDS:
        return "off"
    if _in_kernel():
        return "widget"
    stream = stream if stream is not None else sys.stderr
    try:
        return "terminal" if stream.isatty() else "off"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "off"


def _number(value: float) -> str:
    """3 for a count, 2.5 for seconds."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


class Progress:
    """One bar: `update(done, total, step)` as work advances, `close(ok)` at the end.

    Safe to update from several threads. Also a context manager that closes the bar as
    failed when the block raises (an interrupt included).
    """

    def __init__(self, description: str, total: float | None = None, unit: str = "", *,
                 delay: float | None = None, mode: str | None = None,
                 stream: TextIO | None = None):
        self.description = description
        self.total = total
        self.unit = unit
        self.done: float = 0
        self.step = ""
        self.delay = DELAY_S if delay is None else delay
        self.stream = stream if stream is not None else sys.stderr
        self.mode = mode or progress_mode(self.stream)
        self.started = time.monotonic()
        self.shown = False
        self.closed = False
        self._drawn_at = 0.0
        self._width = 0  # of the last terminal line, to blank what a shorter one leaves
        self._bar: Any = None
        self._label: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(ok=kind is None)

    def update(self, done: float, total: float | None = None, step: str | None = None) -> None:
        """Record progress (`done` of `total`, doing `step`) and redraw if it is time."""
        with self._lock:
            if self.closed:
                return
            self.done = done
            if total is not None:
                self.total = total
            if step is not None:
                self.step = step
            self._draw(final=False)

    def close(self, ok: bool = True) -> None:
        """Show the outcome (if the bar was shown at all) and stop updating."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.shown:
                self._draw(final=True, ok=ok)

    def text(self, final: bool = False, ok: bool = True) -> str:
        """`apply: 3/5 pods ready, 1.2 s` (what the label or the line says)."""
        parts = [f"{self.description}:"]
        if self.total:
            parts.append(f"{_number(self.done)}/{_number(self.total)}")
        elif self.done:
            parts.append(_number(self.done))
        if self.unit:
            parts.append(self.unit)
        if self.step:
            parts.append(self.step)
        elapsed = time.monotonic() - self.started
        outcome = ("done in" if ok else "stopped after") if final else ""
        return " ".join(parts) + f", {outcome + ' ' if outcome else ''}{elapsed:.1f} s"

    def fraction(self) -> float:
        """How far along, from 0 to 1 (0 while the total is unknown)."""
        if not self.total:
            return 0.0
        return min(max(self.done / self.total, 0.0), 1.0)

    # --- drawing (lock held) -------------------------------------------------------------------
    def _draw(self, final: bool, ok: bool = True) -> None:
        if self.mode == "off":
            return
        now = time.monotonic()
        if not self.shown:
            if now - self.started < self.delay:
                return
            self.shown = True
            if self.mode == "widget":
                self._show_widget()
        elif not final and now - self._drawn_at < REFRESH_S:
            return
        self._drawn_at = now
        if self.mode == "widget":
            self._draw_widget(final, ok)
        else:
            self._draw_line(final, ok)

    def _show_widget(self) -> None:
        import ipywidgets as widgets
        from IPython.display import display

        self._bar = widgets.IntProgress(min=0, max=STEPS, value=0,
                                        layout=widgets.Layout(width="280px"))
        self._label = widgets.Label()
        display(widgets.HBox([self._bar, self._label]))

    def _draw_widget(self, final: bool, ok: bool) -> None:
        if final and ok:
            self._bar.value = STEPS
        else:
            self._bar.value = round(self.fraction() * STEPS)
        if final:
            self._bar.bar_style = "success" if ok else "danger"
        self._label.value = self.text(final, ok)

    def _draw_line(self, final: bool, ok: bool) -> None:
        filled = BAR_WIDTH if final and ok else round(self.fraction() * BAR_WIDTH)
        line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.text(final, ok)}"
        pad = " " * max(self._width - len(line), 0)
        self._width = len(line)
        try:
            self.stream.write("\r" + line + pad + ("\n" if final else ""))
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: nothing left to show
            self.mode = "off"
