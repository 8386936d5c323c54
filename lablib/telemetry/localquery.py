"""The metrics read straight from the proxies, for machines without a Prometheus binary.

`LocalMetrics` scrapes the mesh's metrics endpoint every second in a background thread and
keeps ten minutes of samples in memory. It answers the small part of PromQL the labs use, with
the same DataFrame shapes as `PrometheusClient`:

- selectors with `=`, `!=`, `=~`, `!~` matchers, and range selectors inside functions;
- `rate`, `irate`, `increase`, `last_over_time` and `histogram_quantile`;
- `sum`, `avg`, `min`, `max`, `count`, each with an optional `by (...)`;
- `+ - * /` between a vector and a number, or between vectors with the same labels.

Anything else is refused with a `PromQLError` that says so. It is not Prometheus: `rate`
divides the increase between the first and last samples of the window by the time between
them, without Prometheus' extrapolation to the window's edges.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pandas as pd

from .prometheus import INSTALL_HINT, PromQLError, frame

__all__ = ["LocalMetrics", "evaluate", "parse"]

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]
Snapshot = tuple[float, dict[Labels, float]]  # (time, series with __name__ -> value)

AGGREGATIONS = {"sum", "avg", "min", "max", "count"}
FUNCTIONS = {"rate", "irate", "increase", "last_over_time", "histogram_quantile"}
LOOKBACK_S = 300.0
# A query scrapes first unless the last scrape is this recent: a snapshot of four counters,
# or a panel's several range queries, then cost one scrape, not one each.
FRESH_S = 0.5
HISTORY_S = 600.0
TOKEN = re.compile(r"""\s*(?:
    (?P<duration>\d+(?:ms|s|m|h|d))(?![A-Za-z0-9_])
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op>=~|!~|!=|==|[-+*/=(){}\[\],])
)""", re.VERBOSE)
SAMPLE = re.compile(r'(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+'
                    r'(?P<value>\S+)(?:\s+\S+)?$')
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _unsupported(what: str) -> PromQLError:
    return PromQLError(f"{what}: without Prometheus, lablib reads the proxies' metrics directly "
                       "and understands only selectors, rate/irate/increase/last_over_time, "
                       "histogram_quantile, sum/avg/min/max/count [by (...)] and + - * /; "
                       f"for full PromQL, {INSTALL_HINT}")


# --- parsing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    kind: str  # number | selector | call | agg | binary
    value: Any = None
    args: tuple[Node, ...] = ()
    by: tuple[str, ...] | None = None


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise PromQLError(f"parse error at char {pos + 1}: unexpected "
                              f"{text[pos:].strip()[:1]!r} in {text!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "", len(self.text))

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        k, v, pos = self.peek()
        if (value is not None and v != value) or (kind is not None and k != kind):
            wanted = value or kind
            found = "end of input" if k == "end" else repr(v)
            raise PromQLError(f"parse error at char {pos + 1}: expected {wanted!r}, found "
                              f"{found} in {self.text!r}")
        self.i += 1
        return v

    def parse(self) -> Node:
        node = self.expr()
        if self.peek()[0] != "end":
            raise PromQLError(f"parse error at char {self.peek()[2] + 1}: unexpected "
                              f"{self.peek()[1]!r} in {self.text!r}")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek()[1] in ("+", "-"):
            op = self.take()
            node = Node("binary", op, (node, self.term()))
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek()[1] in ("*", "/"):
            op = self.take()
            node = Node("binary", op, (node, self.unary()))
        return node

    def unary(self) -> Node:
        kind, value, _ = self.peek()
        if kind == "number":
            self.take()
            return Node("number", float(value))
        if value == "(":
            self.take("(")
            node = self.expr()
            self.take(")")
            return node
        if kind == "ident" and value in AGGREGATIONS:
            return self.aggregation()
        if kind == "ident" and self.i + 1 < len(self.tokens) and self.tokens[self.i + 1][1] == "(":
            if value not in FUNCTIONS:
                raise _unsupported(f"function {value}()")
            return self.call()
        if kind == "ident" or value == "{":
            return self.selector()
        raise PromQLError(f"parse error at char {self.peek()[2] + 1}: unexpected "
                          f"{value or 'end of input'!r} in {self.text!r}")

    def labels(self) -> tuple[str, ...]:
        self.take("(")
        names = []
        while self.peek()[1] != ")":
            names.append(self.take(kind="ident"))
            if self.peek()[1] == ",":
                self.take(",")
        self.take(")")
        return tuple(names)

    def aggregation(self) -> Node:
        op = self.take()
        by = None
        if self.peek()[1] == "by":
            self.take("by")
            by = self.labels()
        elif self.peek()[1] == "without":
            raise _unsupported("`without`")
        self.take("(")
        inner = self.expr()
        self.take(")")
        if self.peek()[1] == "by":
            self.take("by")
            by = self.labels()
        return Node("agg", op, (inner,), by)

    def call(self) -> Node:
        name = self.take()
        self.take("(")
        args = [self.expr()]
        while self.peek()[1] == ",":
            self.take(",")
            args.append(self.expr())
        self.take(")")
        return Node("call", name, tuple(args))

    def selector(self) -> Node:
        name = self.take(kind="ident") if self.peek()[0] == "ident" else ""
        matchers: list[tuple[str, str, str]] = [("__name__", "=", name)] if name else []
        if self.peek()[1] == "{":
            self.take("{")
            while self.peek()[1] != "}":
                label = self.take(kind="ident")
                op = self.take()
                if op not in ("=", "!=", "=~", "!~"):
                    raise PromQLError(f"parse error: unexpected {op!r} after label {label!r} "
                                      f"in {self.text!r}")
                raw = self.take(kind="string")
                matchers.append((label, op, re.sub(r"\\(.)", r"\1", raw[1:-1])))
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("}")
        if not matchers:
            raise PromQLError(f"parse error: a selector needs a metric name or a matcher in "
                              f"{self.text!r}")
        window = None
        if self.peek()[1] == "[":
            self.take("[")
            text = self.take(kind="duration")
            window = float(text[:-2] if text.endswith("ms") else text[:-1]) * UNITS[
                "ms" if text.endswith("ms") else text[-1]]
            self.take("]")
        return Node("selector", (tuple(matchers), window))


def parse(text: str) -> Node:
    """The syntax tree of a query, or a PromQLError naming where it went wrong."""
    return _Parser(text).parse()


# --- evaluation --------------------------------------------------------------------------------
def _selected(key: Labels, matchers: tuple[tuple[str, str, str], ...]) -> bool:
    """Whether a series matches; a metric name is tested first, on the frozenset itself,
    since building a dict of Istio's 27 labels for every series is what costs."""
    name, op, want = matchers[0]
    if name == "__name__" and op == "=" and ("__name__", want) not in key:
        return False
    return _matches(dict(key), matchers)


def _matches(labels: dict[str, str], matchers: tuple[tuple[str, str, str], ...]) -> bool:
    for name, op, want in matchers:
        have = labels.get(name, "")
        if op == "=" and have != want or op == "!=" and have == want:
            return False
        if op in ("=~", "!~") and bool(re.fullmatch(want, have)) != (op == "=~"):
            return False
    return True


def _drop_name(labels: Labels) -> Labels:
    return frozenset((k, v) for k, v in labels if k != "__name__")


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over (upper bound, cumulative count) pairs."""
    buckets.sort()
    if len(buckets) < 2 or buckets[-1][0] != math.inf or buckets[-1][1] == 0:
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    rank = q * buckets[-1][1]
    for i, (bound, count) in enumerate(buckets):
        if count >= rank:
            if bound == math.inf:
                return buckets[-2][0]
            lower, below = (buckets[i - 1][0], buckets[i - 1][1]) if i else (0.0, 0.0)
            if i == 0 and bound <= 0:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below) \
                if count > below else bound
    return math.nan


class _Evaluator:
    def __init__(self, history: list[Snapshot], at: float):
        self.history = [s for s in history if s[0] <= at]
        self.at = at

    def run(self, node: Node) -> Vector | float:
        if node.kind == "number":
            return float(node.value)
        if node.kind == "selector":
            matchers, window = node.value
            if window is not None:
                raise PromQLError("a range vector such as x[1m] is only allowed inside rate(), "
                                  "irate() or increase() here")
            return self.instant(matchers)
        if node.kind == "call":
            return self.call(node)
        if node.kind == "agg":
            return self.aggregate(node)
        return self.binary(node)

    def instant(self, matchers: tuple[tuple[str, str, str], ...]) -> Vector:
        recent = [s for s in self.history if s[0] >= self.at - LOOKBACK_S]
        if not recent:
            return {}
        return {k: v for k, v in recent[-1][1].items() if _selected(k, matchers)}

    def call(self, node: Node) -> Vector:
        if node.value == "histogram_quantile":
            if len(node.args) != 2 or node.args[0].kind != "number":
                raise PromQLError("histogram_quantile(φ, buckets) needs a number and a vector")
            q, inner = float(node.args[0].value), self.run(node.args[1])
            if not isinstance(inner, dict):
                raise PromQLError("histogram_quantile needs a vector of buckets")
            groups: dict[Labels, list[tuple[float, float]]] = {}
            for labels, value in inner.items():
                le = dict(labels).get("le")
                if le is not None:
                    key = frozenset((k, v) for k, v in labels if k not in ("le", "__name__"))
                    groups.setdefault(key, []).append((float(le), value))
            return {k: _quantile(q, b) for k, b in groups.items()}
        arg = node.args[0] if len(node.args) == 1 else None
        if arg is None or arg.kind != "selector" or arg.value[1] is None:
            raise PromQLError(f"{node.value}() needs one range vector, such as "
                              f"{node.value}(istio_requests_total[1m])")
        matchers, window = arg.value
        samples = [s for s in self.history if s[0] > self.at - window]
        if node.value == "last_over_time":
            last: Vector = {}
            for _, series in samples:
                last.update({_drop_name(k): v for k, v in series.items()
                             if _selected(k, matchers)})
            return last
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return {}
        if node.value == "irate":
            samples = samples[-2:]
        first_t, last_t = samples[0][0], samples[-1][0]
        out: Vector = {}
        keys = {k for _, series in samples for k in series if _selected(k, matchers)}
        for key in keys:
            # The collector starts every series at 0, so a series absent from an earlier
            # scrape had not been counted yet.
            values = [series.get(key, 0.0) for _, series in samples]
            increase = sum(b - a if b >= a else b  # a drop is a counter reset
                           for a, b in zip(values, values[1:], strict=False))
            rate = increase / (last_t - first_t)
            out[_drop_name(key)] = increase if node.value == "increase" else rate
        return out

    def aggregate(self, node: Node) -> Vector:
        inner = self.run(node.args[0])
        if not isinstance(inner, dict):
            raise PromQLError(f"{node.value}() needs a vector")
        groups: dict[Labels, list[float]] = {}
        for labels, value in inner.items():
            key = frozenset((k, v) for k, v in labels if node.by is not None and k in node.by)
            groups.setdefault(key, []).append(value)
        ops: dict[str, Callable[[list[float]], float]] = {
            "sum": sum, "min": min, "max": max, "count": len,
            "avg": lambda xs: sum(xs) / len(xs)}
        return {k: float(ops[node.value](v)) for k, v in groups.items()}

    def binary(self, node: Node) -> Vector | float:
        left, right = (self.run(a) for a in node.args)
        op: Callable[[float, float], float] = {
            "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
            "/": lambda a, b: a / b if b else (math.nan if a == 0 else math.copysign(
                math.inf, a))}[node.value]
        if isinstance(left, float) and isinstance(right, float):
            return op(left, right)
        if isinstance(right, float):
            assert isinstance(left, dict)
            return {_drop_name(k): op(v, right) for k, v in left.items()}
        if isinstance(left, float):
            return {_drop_name(k): op(left, v) for k, v in right.items()}
        by_labels = {_drop_name(k): v for k, v in right.items()}
        return {_drop_name(k): op(v, by_labels[_drop_name(k)]) for k, v in left.items()
                if _drop_name(k) in by_labels}


def evaluate(promql: str, history: list[Snapshot], at: float) -> Vector | float:
    """`promql` at time `at` over scraped snapshots (time, {labels: value})."""
    return _Evaluator(history, at).run(parse(promql))


def _as_data(result: Vector | float, at: float) -> dict[str, Any]:
    if isinstance(result, float):
        return {"resultType": "scalar", "result": [at, str(result)]}
    return {"resultType": "vector", "result": [
        {"metric": dict(k), "value": [at, str(v)]} for k, v in result.items()]}


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda c: "\n" if c[1] == "n" else c[1], value)


def parse_text(text: str) -> dict[Labels, float]:
    """Prometheus text format as {labels including __name__: value}.

    A regular expression per line: prometheus_client's parser reads a character at a time,
    too slowly for Istio's long label sets every second.
    """
    out: dict[Labels, float] = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m is None:
            continue
        labels = {k: _unescape(v) if "\\" in v else v
                  for k, v in LABEL.findall(m["labels"] or "")}
        labels["__name__"] = m["name"]
        out[frozenset(labels.items())] = float(m["value"])
    return out


class LocalMetrics:
    """PromQL-shaped answers from the proxies' own metrics, scraped every second."""

    kind = "proxies"

    def __init__(self, metrics_url: str, interval: float = 1.0, note: str = ""):
        self.url = metrics_url
        self.note = note
        self.interval = interval
        self.history: deque[Snapshot] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.scrape()
        self._thread = threading.Thread(target=self._loop, name="local-metrics", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"LocalMetrics({self.url!r})"

    def scrape(self) -> None:
        """Read the metrics endpoint once and remember the samples."""
        text = httpx.get(self.url, timeout=10, trust_env=False).text
        now = time.time()
        with self._lock:
            self.history.append((now, parse_text(text)))
            while self.history and self.history[0][0] < now - HISTORY_S:
                self.history.popleft()

    def _scrape_if_stale(self) -> None:
        with self._lock:
            last = self.history[-1][0] if self.history else 0.0
        if time.time() - last > FRESH_S:
            self.scrape()

    def _loop(self) -> None:
        failing_since = None
        while not self._stop.wait(self.interval):
            try:
                self.scrape()
                failing_since = None
            except httpx.HTTPError:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > 60:  # the mesh is gone
                    return

    def close(self) -> None:
        self._stop.set()

    def targets(self) -> pd.DataFrame:
        """The proxies it reads, in the shape of `PrometheusClient.targets()`."""
        url = self.url.rsplit("/stats/prometheus", 1)[0] + "/targets"
        found = httpx.get(url, timeout=10, trust_env=False).json()
        return pd.DataFrame([{**{k: v for k, v in t["labels"].items()
                                 if not k.startswith("__")}, "health": "up", "last_error": "",
                              "scrape_url": f"http://{t['targets'][0]}{t['labels']['__metrics_path__']}"}
                             for t in found]).fillna("")

    def _history(self) -> list[Snapshot]:
        with self._lock:
            return list(self.history)

    def query(self, promql: str, at: float | datetime | None = None) -> pd.DataFrame:
        """`promql` now (after a fresh scrape) or at `at`, from the samples kept."""
        if at is None:
            self._scrape_if_stale()
        when = time.time() if at is None else (at.timestamp() if isinstance(at, datetime)
                                               else float(at))
        return frame(_as_data(evaluate(promql, self._history(), when), when))

    def query_range(self, promql: str, start: float | datetime, end: float | datetime,
                    step: float | str = 1.0) -> pd.DataFrame:
        """`promql` at each `step` from `start` to `end`, from the samples kept."""
        self._scrape_if_stale()
        t0, t1 = (t.timestamp() if isinstance(t, datetime) else float(t) for t in (start, end))
        seconds = float(str(step).rstrip("s"))
        tree, history, series = parse(promql), self._history(), []
        t = t0
        while t <= t1 + 1e-9:
            result = _Evaluator(history, t).run(tree)
            series.append(frame(_as_data(result, t)))
            t += seconds
        frames = [f for f in series if not f.empty]
        if not frames:
            return frame({"resultType": "matrix", "result": []})
        out = pd.concat(frames, ignore_index=True)
        labels = [c for c in out.columns if c not in ("timestamp", "value")]
        return out.sort_values([*labels, "timestamp"]).reset_index(drop=True)
