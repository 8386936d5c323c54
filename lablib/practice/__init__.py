"""Break-and-fix practice: a fault from the catalogue is set up on your mesh without telling
you which, you get the symptom as a user would report it, hints when you ask, and your fix
is graded by what the mesh then does with real requests.

    session = practice.start(mesh)          # a random scenario; or start(mesh, "fault-left-on")
    session.hint()                          # graded hints, one at a time
    session.check()                         # passed / still broken / workaround
    session.solution()                      # the answer (ends the attempt)

`Exam` draws several tasks and shows no solution until it ends. Every start, hint, check and
solution is recorded (`progress.py`), for `lablib practice report`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from ..backend import Backend
from ..errors import LabError
from . import progress
from .catalogue import CATALOGUE, Scenario, ensure_base, reset, scenario, teardown
from .grading import PASSED, STILL_BROKEN, WORKAROUND, Grade, grade

__all__ = ["CATALOGUE", "PASSED", "STILL_BROKEN", "WORKAROUND", "Exam", "ExamNotOver",
           "Grade", "Session", "catalogue", "grade", "start"]


def catalogue():  # -> pandas.DataFrame
    """The scenarios by name, topic and title: what can be practised (no answers)."""
    import pandas as pd

    return pd.DataFrame([{"name": s.name, "topic": s.topic, "title": s.title}
                         for s in CATALOGUE])


class ExamNotOver(LabError):
    """Solutions are shown only once the exam has ended."""


@dataclass
class Session:
    """One attempt at one scenario."""

    mesh: Backend
    scenario: Scenario
    hints_given: int = 0
    checks: list[Grade] = field(default_factory=list)

    @property
    def symptom(self) -> str:
        return self.scenario.symptom

    def hint(self) -> str:
        """The next hint, from a nudge toward the right tool to the cause itself."""
        hints = self.scenario.hints
        text = hints[min(self.hints_given, len(hints) - 1)]
        self.hints_given = min(self.hints_given + 1, len(hints))
        progress.record(self.scenario.name, "hint", level=self.hints_given)
        return f"Hint {self.hints_given}/{len(hints)}: {text}"

    def check(self) -> Grade:
        """Grade the mesh as it is now, by real requests."""
        result = grade(self.mesh, self.scenario)
        self.checks.append(result)
        progress.record(self.scenario.name, "check", outcome=result.outcome)
        return result

    def solution(self) -> str:
        """What was broken, how to fix it, and what the tools show."""
        progress.record(self.scenario.name, "solution")
        s = self.scenario
        return f"{s.title}.\n\n{s.solution}\n\nWhat the tools show: {s.tools}"

    def stop(self) -> None:
        """Undo the scenario and remove the practice namespaces (Bookinfo stays)."""
        teardown(self.mesh)


def start(mesh: Backend, name: str | None = None, seed: int | None = None) -> Session:
    """Break the mesh with a scenario (`name`, else one at random) and return the session;
    the symptom is all it tells you."""
    chosen = scenario(name) if name else random.Random(seed).choice(CATALOGUE)
    ensure_base(mesh)
    reset(mesh)
    chosen.setup.run(mesh)
    progress.record(chosen.name, "start")
    return Session(mesh, chosen)


class Exam:
    """Timed tasks drawn from the catalogue, graded by behaviour, solutions after the end."""

    def __init__(self, mesh: Backend, tasks: int = 4, minutes: float = 40.0,
                 seed: int | None = None, names: list[str] | None = None):
        pool = [scenario(n) for n in names] if names else list(CATALOGUE)
        self.mesh = mesh
        self.tasks = pool if names else random.Random(seed).sample(pool, min(tasks, len(pool)))
        self.deadline = time.monotonic() + minutes * 60
        self.grades: dict[str, tuple[Grade, bool]] = {}  # name -> (grade, in time)
        self.before: dict[str, Grade] = {}  # name -> the grade right after the fault
        self.current: Session | None = None
        self.over = False

    @property
    def minutes_left(self) -> float:
        return max(0.0, (self.deadline - time.monotonic()) / 60)

    def task(self, number: int) -> str:
        """Set up task `number` (1-based) and return its symptom; the previous task's fault is
        removed first."""
        if self.over:
            raise ExamNotOver("the exam has ended: no new task can start")
        self.current = start(self.mesh, self.tasks[number - 1].name)
        # Graded once before you touch anything: a task whose fault does not show is no task.
        self.before[self.current.scenario.name] = grade(self.mesh, self.current.scenario)
        return (f"Task {number} of {len(self.tasks)} ({self.minutes_left:.0f} min left): "
                f"{self.current.symptom}")

    @property
    def fault_shows(self) -> bool:
        """Whether the current task's fault showed in the mesh's behaviour when it was set up
        (the grader saw it still broken)."""
        if self.current is None:
            return False
        return self.before[self.current.scenario.name].outcome == STILL_BROKEN

    def submit(self) -> Grade:
        """Grade the current task as the mesh is now; the last submission counts."""
        if self.current is None:
            raise ExamNotOver("start a task first: exam.task(1)")
        result = self.current.check()
        self.grades[self.current.scenario.name] = (result, time.monotonic() <= self.deadline)
        return result

    def finish(self):  # -> pandas.DataFrame
        """End the exam: the score table (one row per task) and the mesh put back."""
        import pandas as pd

        self.over = True
        teardown(self.mesh)
        rows = []
        for number, task in enumerate(self.tasks, start=1):
            graded = self.grades.get(task.name)
            outcome = graded[0].outcome if graded else "not submitted"
            in_time = bool(graded and graded[1])
            rows.append({"task": number, "scenario": task.title, "outcome": outcome,
                         "in time": in_time, "points": int(outcome == PASSED and in_time)})
            progress.record(task.name, "exam", outcome=outcome, in_time=in_time)
        return pd.DataFrame(rows)

    def solutions(self) -> str:
        if not self.over:
            raise ExamNotOver("solutions are shown when the exam has ended: exam.finish()")
        return "\n\n".join(f"Task {i}: {t.title}.\n{t.solution}"
                           for i, t in enumerate(self.tasks, start=1))

    def self_test(self) -> bool:
        """Apply the current task's reference fix (what CI does to prove every task can be
        passed; a learner has no reason to call it). Returns whether it did."""
        import os

        if os.environ.get("LAB_EXAM_SELF_TEST") != "1" or self.current is None:
            return False
        self.current.scenario.fix.run(self.mesh)
        return True
