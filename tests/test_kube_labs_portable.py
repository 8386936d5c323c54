"""Every lab runs unchanged on either backend: no notebook (nor a lablib helper it imports)
reaches past the `lablib.Backend` interface into one backend's insides."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from lablib.backend import Backend

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p for p in (ROOT / "labs").rglob("*.ipynb")
                   if ".ipynb_checkpoints" not in p.parts)
# Implementation packages: a lab that imports one is tied to a backend.
BACKEND_PACKAGES = ("lablib.local", "lablib.kube", "lablib.controlplane", "lablib.shims",
                    "lablib.apps")
IMPLEMENTATIONS = {"LocalBackend": ROOT / "lablib/local/client.py",
                   "KubernetesBackend": ROOT / "lablib/kube/backend.py"}
INTERFACE = frozenset(n for n in dir(Backend) if not n.startswith("_"))


def implementation_names() -> dict[str, str]:
    """Public methods and attributes each backend has beyond the interface, by name."""
    names: dict[str, str] = {}
    for cls_name, path in IMPLEMENTATIONS.items():
        tree = ast.parse(path.read_text())
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
        for node in cls.body:  # methods and class attributes
            if isinstance(node, ast.FunctionDef):
                names.setdefault(node.name, cls_name)
            targets = (node.targets if isinstance(node, ast.Assign) else
                       [node.target] if isinstance(node, ast.AnnAssign) else [])
            for target in targets:
                if isinstance(target, ast.Name):
                    names.setdefault(target.id, cls_name)
        for node in ast.walk(cls):  # instance attributes
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name) and node.value.id == "self"):
                names.setdefault(node.attr, cls_name)
    return {n: c for n, c in names.items() if not n.startswith("_") and n not in INTERFACE}


PRIVATE = implementation_names()
# Local-mesh internals flagged on any receiver, however the mesh object was passed around.
TELLTALE = frozenset({"call", "pod_info", "snapshot"})


@dataclass(frozen=True)
class Finding:
    where: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.where}, line {self.line}: {self.what}"


def code_cells(path: Path) -> list[tuple[str, str]]:
    """(cell id, source) of each code cell, IPython's `%magic` and `!shell` lines blanked."""
    cells = json.loads(path.read_text())["cells"]
    out = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        source = re.sub(r"(?m)^\s*[%!].*$", "", source)
        out.append((f"{path.name} cell {cell.get('id', i)}", source))
    return out


def _module_of(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = "lablib." + node.module if node.level and node.module else (node.module or "")
    if node.level and not node.module:
        base = "lablib"
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def check_source(source: str, where: str, meshes: set[str]) -> list[Finding]:
    """What in this code reaches past the interface; `meshes` collects the names bound to
    `lablib.connect()` (they carry over from cell to cell)."""
    tree = ast.parse(source)
    found: list[Finding] = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(Finding(where, getattr(node, "lineno", 0), what))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for module in _module_of(node):
                if module.startswith(BACKEND_PACKAGES):
                    flag(node, f"imports {module}, one backend's insides")
                if module.rsplit(".", 1)[-1] in IMPLEMENTATIONS:
                    flag(node, f"imports {module.rsplit('.', 1)[-1]}")
        elif isinstance(node, ast.Assign) and _is_connect(node.value):
            meshes.update(t.id for t in node.targets if isinstance(t, ast.Name))
        if isinstance(node, ast.Call) and _is_connect(node) and (node.args or node.keywords):
            flag(node, "chooses the backend in lablib.connect(...); leave it to LAB_BACKEND")
        if isinstance(node, ast.Name) and node.id in IMPLEMENTATIONS:
            flag(node, f"uses {node.id}")
        if isinstance(node, ast.Attribute):
            receiver = node.value.id if isinstance(node.value, ast.Name) else ""
            if node.attr in IMPLEMENTATIONS:
                flag(node, f"uses {node.attr}")
            elif receiver in meshes and node.attr not in INTERFACE:
                owner = PRIVATE.get(node.attr)
                flag(node, f"{receiver}.{node.attr} is not part of lablib.Backend"
                     + (f" (it belongs to {owner})" if owner else ""))
            elif node.attr in TELLTALE and receiver != "subprocess":
                flag(node, f".{node.attr} belongs to {PRIVATE[node.attr]}, not to the interface")
    return found


def _is_connect(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return ((isinstance(func, ast.Attribute) and func.attr == "connect"
             and isinstance(func.value, ast.Name) and func.value.id == "lablib")
            or (isinstance(func, ast.Name) and func.id == "connect"))


def check_notebook(path: Path) -> list[Finding]:
    meshes: set[str] = set()
    found: list[Finding] = []
    for where, source in code_cells(path):
        found += check_source(source, where, meshes)
    return found


def helper_modules(paths: list[Path]) -> set[Path]:
    """The lablib modules the labs import (`from lablib import traffic` -> lablib/traffic.py)."""
    modules = set()
    for path in paths:
        for _, source in code_cells(path):
            for node in ast.walk(ast.parse(source)):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module == "lablib":
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lablib."):
                    names = [node.module.split(".", 1)[1].split(".")[0]]
                for name in names:
                    module = ROOT / "lablib" / f"{name}.py"
                    if module.exists():
                        modules.add(module)
    return modules


def check_helper(path: Path) -> list[Finding]:
    """A helper must use its `mesh: Backend` argument through the interface only."""
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "mesh" and node.attr not in INTERFACE):
            found.append(Finding(f"lablib/{path.name}", node.lineno,
                                 f"mesh.{node.attr} is not part of lablib.Backend"))
        if isinstance(node, ast.Name) and node.id in IMPLEMENTATIONS:
            found.append(Finding(f"lablib/{path.name}", node.lineno, f"uses {node.id}"))
    return found


# --- the checks ---------------------------------------------------------------------------


def test_there_are_labs_to_check() -> None:
    assert NOTEBOOKS, "no notebooks under labs/"
    assert TELLTALE <= set(PRIVATE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_lab_talks_to_the_backend_interface_only(path: Path) -> None:
    findings = check_notebook(path)
    assert not findings, "reaches past lablib.Backend:\n" + "\n".join(map(str, findings))


def test_the_helpers_the_labs_import_use_the_interface_only() -> None:
    modules = helper_modules(NOTEBOOKS)
    assert ROOT / "lablib" / "traffic.py" in modules
    findings = [f for m in sorted(modules) for f in check_helper(m)]
    assert not findings, "reaches past lablib.Backend:\n" + "\n".join(map(str, findings))


def test_no_lab_leans_on_proxy_url() -> None:
    """`mesh.proxy_url` is None on a cluster: labs send from inside a pod with `mesh.exec`
    (`fortio.run`, `nc`, `curl`), which both backends have."""
    using = {p.name for p in NOTEBOOKS
             if any(re.search(r"\.proxy_url\(|from_pod\s*=", s) for _, s in code_cells(p))}
    assert not using, f"labs sending through proxy_url: {sorted(using)}"


# --- the checker itself ------------------------------------------------------------------


@pytest.mark.parametrize(("code", "what"), [
    ("from lablib.local.client import LocalBackend", "imports lablib.local.client"),
    ("import lablib.kube.backend", "imports lablib.kube.backend"),
    ("from lablib import local", "imports lablib.local"),
    ("mesh = lablib.connect()\nmesh.call('ping')", "(it belongs to LocalBackend)"),
    ("labs.backend_of(x).pod_info('p', 'ns')", ".pod_info belongs to LocalBackend"),
    ("m = lablib.connect()\nm.snapshot('p', 'ns')", "m.snapshot is not part of lablib.Backend"),
    ("mesh = lablib.connect()\nmesh.dyn.get()", "(it belongs to KubernetesBackend)"),
    ("mesh = lablib.connect()\nmesh._alive()", "mesh._alive is not part of lablib.Backend"),
    ("isinstance(mesh, LocalBackend)", "uses LocalBackend"),
    ("mesh = lablib.connect('local')", "chooses the backend"),
])
def test_the_checker_catches(code: str, what: str) -> None:
    findings = check_source(code, "cell", set())
    assert any(what in str(f) for f in findings), findings


def test_the_checker_lets_the_interface_through() -> None:
    code = ("import lablib\nfrom lablib import labs, traffic\nmesh = lablib.connect()\n"
            "mesh.apply('x.yaml', 'ns')\nhost, port = mesh.ingress_address()\n"
            "pods = mesh.get('pods', namespace='ns')\nprint(pods[0]['status'].get('phase'))\n"
            "traffic.send(mesh, '/productpage', n=5)\nmesh.name\n"
            "import subprocess\nsubprocess.call(['true'])\nwidget.state, svc.ports")
    assert check_source(code, "cell", set()) == []
