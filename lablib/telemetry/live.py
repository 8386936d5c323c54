"""Figures that redraw themselves while a cell runs, for a bounded time.

    live = SomeLiveFigure(...)      # a subclass with build() -> go.Figure
    display(live.widget)
    live.run(seconds=20, every=2)   # redraws in place; returns after 20 s at most
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ipywidgets
import plotly.graph_objects as go

from ..charts import show_in

__all__ = ["MAX_SECONDS", "LiveFigure", "refresh_for"]

# No live view runs longer than this, whatever it is asked: a forgotten cell must end.
MAX_SECONDS = 300.0


def refresh_for(refresh: Callable[[], object], seconds: float, every: float) -> int:
    """Call `refresh` every `every` seconds for `seconds` (at most MAX_SECONDS), then once more
    at the end; the number of calls."""
    if every <= 0:
        raise ValueError(f"every must be positive, got {every}")
    if not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be between 0 and {MAX_SECONDS:g}, got {seconds}")
    end = time.monotonic() + seconds
    calls = 0
    while True:
        started = time.monotonic()
        refresh()
        calls += 1
        if started >= end:
            return calls
        time.sleep(max(0.0, min(every - (time.monotonic() - started), end - time.monotonic())))


class LiveFigure:
    """One figure redrawn from `build()` in the output `widget`; subclasses say what to draw.
    `figure` is the one drawn last."""

    def __init__(self) -> None:
        self.widget = ipywidgets.Output()
        self.figure = go.Figure()
        self.refresh()

    def build(self) -> go.Figure:
        raise NotImplementedError

    def refresh(self) -> None:
        """Redraw now."""
        self.figure = self.build()
        show_in(self.widget, self.figure)

    def run(self, seconds: float = 20.0, every: float = 2.0) -> int:
        """Redraw every `every` seconds for `seconds`; returns how many times it drew."""
        return refresh_for(self.refresh, seconds, every)
