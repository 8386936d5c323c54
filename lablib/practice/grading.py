"""Grading a fix by what the mesh does: the scenario's goal must hold (else it is still
broken), and so must its guards (else the fix is a workaround that broke something else)."""

from __future__ import annotations

from dataclasses import dataclass

from ..backend import Backend
from .catalogue import Check, Scenario

__all__ = ["PASSED", "STILL_BROKEN", "WORKAROUND", "Grade", "grade"]

PASSED = "passed"
STILL_BROKEN = "still broken"
WORKAROUND = "fixed by a workaround that breaks something else"


@dataclass(frozen=True)
class Result:
    promise: str
    kind: str  # "goal" or "guard"
    holds: bool
    observed: str


@dataclass(frozen=True)
class Grade:
    scenario: str
    outcome: str
    results: tuple[Result, ...]

    @property
    def passed(self) -> bool:
        return self.outcome == PASSED

    def table(self):  # -> pandas.DataFrame; pandas is imported only here
        import pandas as pd

        return pd.DataFrame([r.__dict__ for r in self.results],
                            columns=["kind", "promise", "holds", "observed"])

    def __str__(self) -> str:
        lines = [f"{self.outcome.upper()}"]
        lines += [f"  [{'ok' if r.holds else 'FAILS'}] {r.kind}: {r.promise} — {r.observed}"
                  for r in self.results]
        return "\n".join(lines)


def _run(mesh: Backend, checks: tuple[Check, ...], kind: str) -> list[Result]:
    results = []
    for check in checks:
        holds, observed = check.probe(mesh)
        results.append(Result(check.promise, kind, holds, observed))
    return results


def grade(mesh: Backend, scenario: Scenario) -> Grade:
    """Send the scenario's requests and judge: passed, still broken, or a workaround."""
    goal = _run(mesh, scenario.goal, "goal")
    guards = _run(mesh, scenario.guards, "guard")
    if not all(r.holds for r in goal):
        outcome = STILL_BROKEN
    elif not all(r.holds for r in guards):
        outcome = WORKAROUND
    else:
        outcome = PASSED
    return Grade(scenario.name, outcome, tuple(goal + guards))
