"""The labs run in any order and run twice: each starts by bringing the mesh to the state it
needs, whatever the labs before it left, and ends by cleaning up after itself.

`make test` runs the notebooks in their order, each in its own kernel. Here the mesh is
started by this test process, so a kernel that ends does not take it down: each notebook
finds what the one before left. The notebooks run last to first, and then one lab runs
again: every check cell must still pass. A new kernel per notebook is also what a learner
gets after a kernel restart. (Labs 10 and 12 reinstall Istio, which on the local mesh stops
it; the test then starts the next mesh itself, so the labs after them share one again.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import lablib

LABS = Path(__file__).resolve().parent.parent / "labs"
NOTEBOOKS = sorted(p for p in LABS.glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
CELL_TIMEOUT_S = 600
# Run twice at the end: it shifts weights live, so a left-over route would show at once.
AGAIN = "04_traffic_shifting.ipynb"


@pytest.fixture(scope="module")
def shared_mesh() -> Iterator[None]:
    """A local mesh of this test's own (LAB_MESH, LAB_STATE_DIR), uninstalled at the end."""
    root = tempfile.mkdtemp(prefix="lo-")  # short: meshd's socket path has a length limit
    saved = {k: os.environ.get(k) for k in ("LAB_MESH", "LAB_STATE_DIR", "LAB_BACKEND")}
    os.environ.update(LAB_MESH="lab-order", LAB_STATE_DIR=root, LAB_BACKEND="local")
    try:
        yield
    finally:
        lablib.connect().uninstall()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


def run_notebook(path: Path) -> None:
    """Every cell of `path` in a new kernel (which inherits LAB_MESH and LAB_STATE_DIR)."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(LABS)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed when run after the labs before it in this order:\n"
                    f"{exc}", pytrace=False)


def test_the_labs_run_last_to_first_then_one_again(shared_mesh: None) -> None:
    order = [*reversed(NOTEBOOKS), LABS / AGAIN]
    assert len(order) > 2, order
    done: list[str] = []
    for path in order:
        mesh = lablib.connect()  # this process's mesh: it outlives the notebook's kernel
        run_notebook(path)
        done.append(path.stem)
        # Each lab's clean-up leaves no namespace of its own behind except Bookinfo's, which
        # the labs share (and ensure), and Istio's.
        left = {ns["metadata"]["name"] for ns in lablib.connect().get("namespace")}
        extra = left - {"default", "istio-system", "bookinfo-test", "kube-system",
                        "kube-public", "kube-node-lease"}
        assert not extra, f"after {done}: namespaces left behind: {sorted(extra)}"
        mesh.close()
