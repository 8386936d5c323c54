"""lablib.load's throughput next to `hey` (Debian's hey), against the same httpbin in one run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from lablib.load import load

from . import envoy_baseline as bare
from .stats import median

CONNECTIONS = 4
SECONDS = 5
ROUNDS = 3  # the two clients take turns, so drift in the machine's load hits both alike
AIM = 0.5
PATH = "/get"
_HEY_RATE = re.compile(r"Requests/sec:\s+([0-9.]+)")
_HEY_CODE = re.compile(r"\[(\d{3})\]\s+(\d+) responses")


def hey_rate(url: str) -> tuple[float, dict[int, int]]:
    """`hey -c CONNECTIONS -z SECONDSs url`: requests per second and responses per status."""
    # No proxy variables: the comparison is client against client, straight to the server.
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    done = subprocess.run(["hey", "-c", str(CONNECTIONS), "-z", f"{SECONDS}s", url], env=env,
                          capture_output=True, text=True, timeout=SECONDS + 60, check=True)
    rate = _HEY_RATE.search(done.stdout)
    if rate is None:
        raise RuntimeError(f"hey printed no Requests/sec line:\n{done.stdout}\n{done.stderr}")
    codes = {int(code): int(count) for code, count in _HEY_CODE.findall(done.stdout)}
    return float(rate.group(1)), codes


def load_rate(url: str) -> tuple[float, dict[int, int]]:
    """lablib.load with the same settings: requests per second and responses per status."""
    result = load(url, connections=CONNECTIONS, qps=0, duration=SECONDS, timeout=10)
    return len(result.frame) / result.elapsed_s, result.codes()


def _rates(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def _codes(codes: dict[int, int]) -> str:
    return ", ".join(f"{code}: {count}" for code, count in sorted(codes.items())) or "-"


def run(workdir: Path) -> str:
    """Both clients against one httpbin under waitress, alternating; a Markdown section."""
    have_hey = shutil.which("hey") is not None
    hey: list[float] = []
    ours: list[float] = []
    codes: dict[str, dict[int, int]] = {"hey": {}, "lablib.load": {}}
    with bare.upstream(workdir, "load-vs-hey-httpbin") as port:
        url = f"http://127.0.0.1:{port}{PATH}"
        load(url, connections=CONNECTIONS, n=200)  # warm-up: imports, first connections
        for _ in range(ROUNDS):
            if have_hey:
                rate, seen = hey_rate(url)
                hey.append(rate)
                codes["hey"] = seen
            rate, seen = load_rate(url)
            ours.append(rate)
            codes["lablib.load"] = seen
    ours_rate = median(ours)
    lines = [
        "## Load generator against hey",
        "",
        f"Throughput of `lablib.load(url, connections={CONNECTIONS}, qps=0, "
        f"duration={SECONDS})` and of `hey -c {CONNECTIONS} -z {SECONDS}s url` against the same "
        f"httpbin under waitress (`GET {PATH}` on 127.0.0.1), {ROUNDS} rounds each, taking "
        "turns. Both clients share the machine's cores with the server.",
        "",
        "| client | req/s per round | req/s, median | status codes (last round) |",
        "|---|---|---|---|",
    ]
    if have_hey:
        hey_median = median(hey)
        ratio = ours_rate / hey_median if hey_median > 0 else float("nan")
        lines += [
            f"| hey | {_rates(hey)} | {hey_median:.0f} | {_codes(codes['hey'])} |",
            f"| lablib.load | {_rates(ours)} | {ours_rate:.0f} | {_codes(codes['lablib.load'])} |",
            f"| **ratio lablib.load / hey** | | **{ratio:.2f}×** | |",
            "",
            f"Aim: at least {AIM}× hey's throughput: {'met' if ratio >= AIM else 'NOT met'}.",
        ]
    else:
        lines += [
            f"| lablib.load | {_rates(ours)} | {ours_rate:.0f} | {_codes(codes['lablib.load'])} |",
            "",
            "hey not installed, so there is no comparison: `apt-get install -y hey` "
            "(Debian's package) and run the benchmark again.",
        ]
    lines.append("")
    return "\n".join(lines)
