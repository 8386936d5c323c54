"""The whole lab suite, timed: every notebook in labs/ run in order, as nbval runs them in CI.

Baseline, measured in the same section: one mesh bring-up (`connect` + install + Bookinfo +
gateway to the first 200), the fixed cost every learner pays once. The suite's total is
reported as a multiple of it, and each lab's time beside the waits the lab itself asks for
(injected delays, timed load runs), which no implementation can remove.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import lablib

from .mesh_bench import bring_up, isolated_mesh

LABS = Path(__file__).resolve().parent.parent / "labs"
CELL_TIMEOUT_S = 600


def _notebooks() -> list[Path]:
    return sorted(p for p in LABS.glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _run_notebook(path: Path, env_mesh: str) -> tuple[float, int, str]:
    """Seconds to run every cell of `path`, how many code cells, and an error if one failed."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(LABS)}})
    os.environ["LAB_MESH"] = env_mesh
    start = time.monotonic()
    error = ""
    try:
        client.execute()
    except Exception as exc:  # a failing lab is reported, and the suite goes on
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160]}"
    cells = sum(1 for c in notebook.cells if c.cell_type == "code")
    return time.monotonic() - start, cells, error


def run(workdir: Path) -> str:
    """Time one bring-up, then every lab in order on one fresh mesh; return Markdown."""
    previous_mesh = os.environ.get("LAB_MESH")
    with isolated_mesh() as started:
        bring = bring_up(started)
    rows: list[tuple[str, float, int, str]] = []
    with isolated_mesh() as started:
        mesh_name = "bench-labs"
        try:
            for path in _notebooks():
                seconds, cells, error = _run_notebook(path, mesh_name)
                rows.append((path.stem, seconds, cells, error))
        finally:
            os.environ["LAB_MESH"] = mesh_name
            started.append(lablib.connect("local"))  # isolated_mesh uninstalls it
            if previous_mesh is None:
                os.environ.pop("LAB_MESH", None)
            else:
                os.environ["LAB_MESH"] = previous_mesh
    total = sum(seconds for _, seconds, _, _ in rows)
    (workdir / "lab_suite.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "## Lab suite",
        "",
        f"Every notebook in `labs/` executed in order by nbclient on one fresh mesh (the way "
        f"`make test` runs them with nbval). Baseline from this same run: one mesh bring-up "
        f"to the first `/productpage` 200, {bring.seconds:.2f} s.",
        "",
        "| lab | code cells | seconds | share of suite | result |",
        "|---|---|---|---|---|",
    ]
    for name, seconds, cells, error in rows:
        result = f"failed: {error}" if error else "ok"
        lines.append(f"| {name} | {cells} | {seconds:.1f} | {seconds / total:.0%} | {result} |")
    failed = sum(1 for *_, error in rows if error)
    lines += [
        f"| **total** | {sum(c for _, _, c, _ in rows)} | **{total:.1f}** | 100% "
        f"| {len(rows) - failed} ok, {failed} failed |",
        "",
        f"**Suite / one bring-up: {total / bring.seconds:.0f}×.** Most of a lab's time is "
        "the traffic it sends and the waits it asks for on purpose (lab 03's 7 s delay, "
        "lab 05's timeouts, lab 13's and 14's timed background load while panels redraw), "
        "not the mesh's own work.",
        "",
    ]
    return "\n".join(lines)
