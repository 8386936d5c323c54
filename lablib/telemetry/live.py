"""Figures that redraw themselves while a cell runs, for a bounded time.

    live = SomeLiveFigure(...)      # a subclass with build() -> go.Figure
    display(live.widget)
    live.run(seconds=20, every=2)   # redraws in place; returns after 20 s at most
"""

from __future__ import annotations

import time
from collections.abc import Callable

import plotly.graph_objects as go

__all__ = ["MAX_SECONDS", "LiveFigure", "redraw", "refresh_for"]

# No live view runs longer than this, whatever it is asked: a forgotten cell must end.
MAX_SECONDS = 300.0


def redraw(widget: go.FigureWidget, figure: go.Figure) -> None:
    """Show `figure` in an existing FigureWidget (one message to the browser)."""
    with widget.batch_update():
        widget.data = []
        widget.add_traces(list(figure.data))
        layout = figure.layout.to_plotly_json()
        # The widget has the same default template; re-sending it costs a second each time.
        layout.pop("template", None)
        # update() merges: lists the new figure lacks (annotations, shapes) must be emptied.
        widget.layout.annotations = layout.pop("annotations", [])
        widget.layout.shapes = layout.pop("shapes", [])
        widget.layout.update(layout)


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
    """One FigureWidget redrawn from `build()`; subclasses say what to draw."""

    def __init__(self) -> None:
        self.widget = go.FigureWidget()
        self.refresh()

    def build(self) -> go.Figure:
        raise NotImplementedError

    def refresh(self) -> None:
        """Redraw now."""
        redraw(self.widget, self.build())

    def run(self, seconds: float = 20.0, every: float = 2.0) -> int:
        """Redraw every `every` seconds for `seconds`; returns how many times it drew."""
        return refresh_for(self.refresh, seconds, every)
