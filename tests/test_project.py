"""Checks on the kit's own packaging, notebooks and entry points (no mesh needed)."""

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(
    path for path in (ROOT / "labs").rglob("*.ipynb") if ".ipynb_checkpoints" not in path.parts
)
# conda-forge names that differ from the PyPI name (after canonicalize_name).
CONDA_TO_PIP = {"python-kubernetes": "kubernetes"}
# Conda entries that are the environment itself rather than kit dependencies.
CONDA_ONLY = {"python", "pip"}
# In environment.yml but not pyproject.toml: the Makefile installs it with --no-deps.
INSTALLED_BY_MAKEFILE = "httpbin"
SKELETON_SECTIONS = ("## Overview", "## Prerequisites", "## Summary")


def pyproject_requirements(root: Path) -> dict[str, SpecifierSet]:
    """Runtime and `test` extra requirements from pyproject.toml, by canonical name."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["test"]
    return {canonicalize_name(req.name): req.specifier for req in map(Requirement, lines)}


def conda_requirement(line: str) -> tuple[str, SpecifierSet]:
    """Split a conda match spec such as `pyyaml>=6.0,<7` into a PyPI name and its range."""
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", line.strip())
    assert match, f"environment.yml: cannot read the conda spec {line!r}"
    name = canonicalize_name(match.group(1))
    return CONDA_TO_PIP.get(name, name), SpecifierSet(match.group(2).replace(" ", ""))


def environment_requirements(root: Path) -> dict[str, SpecifierSet]:
    """Conda and pip requirements from environment.yml, by canonical PyPI name."""
    env = yaml.safe_load((root / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    found: dict[str, SpecifierSet] = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            for line in entry["pip"]:
                req = Requirement(line)
                found[canonicalize_name(req.name)] = req.specifier
        elif canonicalize_name(re.split(r"[=<>!~ ]", entry, maxsplit=1)[0]) not in CONDA_ONLY:
            name, spec = conda_requirement(entry)
            found[name] = spec
    return found


def test_environment_yml_matches_pyproject(kit_root: Path) -> None:
    """environment.yml lists exactly pyproject's dependencies, with the same version ranges."""
    wanted = pyproject_requirements(kit_root)
    env = environment_requirements(kit_root)
    httpbin = env.pop(INSTALLED_BY_MAKEFILE, None)

    assert sorted(wanted.keys() - env.keys()) == [], "in pyproject.toml, not environment.yml"
    assert sorted(env.keys() - wanted.keys()) == [], "in environment.yml, not pyproject.toml"
    mismatched = {
        name: (str(wanted[name]), str(env[name])) for name in wanted if wanted[name] != env[name]
    }
    assert mismatched == {}, "version ranges differ (pyproject.toml, environment.yml)"

    makefile_pin = re.search(
        r"^HTTPBIN\s*:?=\s*httpbin(\S+)", (kit_root / "Makefile").read_text(), re.MULTILINE
    )
    assert makefile_pin, "the Makefile no longer pins httpbin in HTTPBIN"
    assert httpbin == SpecifierSet(makefile_pin.group(1)), "httpbin pins differ"


def test_conda_spec_reader_maps_aliases() -> None:
    """The reader the test above relies on maps conda names and keeps ranges."""
    assert conda_requirement("python-kubernetes>=29,<40") == (
        "kubernetes",
        SpecifierSet(">=29,<40"),
    )
    assert conda_requirement("prometheus_client >=0.20,<1") == (
        "prometheus-client",
        SpecifierSet(">=0.20,<1"),
    )
    assert conda_requirement("types-PyYAML") == ("types-pyyaml", SpecifierSet())


def read_notebook(path: Path) -> dict:
    """Parse a notebook's JSON."""
    return json.loads(path.read_text(encoding="utf-8"))


def cell_text(cell: dict) -> str:
    """A cell's source as one string (nbformat allows a string or a list of lines)."""
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_has_no_committed_outputs(notebook: Path) -> None:
    """Notebooks are committed clean: no outputs, no execution counts."""
    dirty = [
        index
        for index, cell in enumerate(read_notebook(notebook)["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert dirty == [], "cells with outputs or execution counts (clear them before committing)"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_follows_the_skeleton(notebook: Path) -> None:
    """Title first, then Overview, Prerequisites and Summary sections, as in STYLE.md."""
    cells = read_notebook(notebook)["cells"]
    assert cells, "the notebook is empty"
    assert cells[0]["cell_type"] == "markdown", "the first cell must be Markdown"
    assert cell_text(cells[0]).startswith("# "), "the first cell must start with a '# ' title"
    headings = {
        line.strip()
        for cell in cells
        if cell["cell_type"] == "markdown"
        for line in cell_text(cell).splitlines()
    }
    missing = [section for section in SKELETON_SECTIONS if section not in headings]
    assert missing == [], "missing sections"


def markdown_of(notebook: Path) -> str:
    return "\n".join(cell_text(cell) for cell in read_notebook(notebook)["cells"]
                     if cell["cell_type"] == "markdown")


def whats_next(notebook: Path) -> str:
    """The text under the notebook's "## What's next" heading."""
    _, found, rest = markdown_of(notebook).partition("## What's next")
    assert found, "no '## What's next' section"
    return rest.split("\n## ", 1)[0]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_relative_links_reach_files_that_exist(notebook: Path) -> None:
    """Every relative link in a lab (to another lab, to docs/) points at a real file."""
    links = re.findall(r"\]\(([^)#\s]+)", markdown_of(notebook))
    broken = [link for link in links if "://" not in link
              and not (notebook.parent / link).exists()]
    assert broken == [], "links to files that do not exist"


@pytest.mark.parametrize("notebook", NOTEBOOKS[:-1], ids=lambda path: path.name)
def test_whats_next_links_the_following_lab(notebook: Path) -> None:
    """The labs form one path: each one's What's next links the lab after it, and no lab
    that exists is still called planned."""
    following = NOTEBOOKS[NOTEBOOKS.index(notebook) + 1]
    assert f"]({following.name})" in whats_next(notebook), f"no link to {following.name}"
    assert "planned" not in markdown_of(notebook).lower(), "a lab that exists is called planned"


def test_ci_runs_make_test(kit_root: Path) -> None:
    """CI goes through `make test`, so CI and developers run the same steps."""
    script = (kit_root / ".ci" / "run").read_text()
    commands = [line.split("#", 1)[0].strip() for line in script.splitlines()]
    ran = any(re.fullmatch(r"(exec\s+)?make\s+test", command) for command in commands)
    assert ran, ".ci/run never runs `make test`"


def test_readme_explains_make_lab_and_make_test(kit_root: Path) -> None:
    """The README tells a learner how to start the labs and how to check the kit."""
    readme = kit_root / "README.md"
    assert readme.is_file(), "README.md is missing (pyproject.toml also points to it)"
    text = readme.read_text(encoding="utf-8")
    assert "make lab" in text
    assert "make test" in text
