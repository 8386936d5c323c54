"""Shared pytest fixtures for the Istio Lab Kit test suite.

Each section belongs to one area of the kit; add yours below the last one, under its own
heading comment, and keep fixtures that start processes cleaning up after themselves.
"""

from pathlib import Path

import pytest

# --- Project layout -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kit_root() -> Path:
    """The repository root (the folder holding pyproject.toml)."""
    return Path(__file__).resolve().parent.parent
