"""lablib.practice without a mesh: the exam's rules, hints, and the instructors' report over
the progress records a user may read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lablib import practice
from lablib.practice import progress
from lablib.practice.catalogue import CATALOGUE, scenario


def test_the_exam_shows_no_solution_before_it_ends():
    exam = practice.Exam(mesh=None, names=["fault-left-on", "pool-overflow"])  # type: ignore[arg-type]
    assert [t.name for t in exam.tasks] == ["fault-left-on", "pool-overflow"]
    with pytest.raises(practice.ExamNotOver):
        exam.solutions()
    with pytest.raises(practice.ExamNotOver):
        exam.submit()


def test_tasks_are_drawn_from_the_catalogue_and_a_seed_repeats_them():
    first = practice.Exam(None, tasks=4, seed=7).tasks  # type: ignore[arg-type]
    names = [t.name for t in first]
    assert len(set(names)) == 4 and set(names) <= {s.name for s in CATALOGUE}
    assert practice.Exam(None, tasks=4, seed=7).tasks == first  # type: ignore[arg-type]


def test_hints_are_graded_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    session = practice.Session(None, scenario("subset-label-typo"))  # type: ignore[arg-type]
    given = [session.hint() for _ in range(4)]
    assert given[0].startswith("Hint 1/3: ") and given[2].startswith("Hint 3/3: ")
    assert given[3] == given[2]  # no fourth hint: the last one again
    assert "version: v3" in session.solution()
    frame = progress.report([progress.records_dir()])
    row = frame.iloc[0]
    assert (row["scenario"], row["hints"], row["solution seen"]) == ("subset-label-typo", 3, True)


def test_unknown_scenarios_are_named():
    with pytest.raises(KeyError, match="no scenario \"nope\".*fault-left-on"):
        scenario("nope")


def test_the_report_reads_only_what_the_instructor_may_read(tmp_path, monkeypatch):
    shared = tmp_path / "class"
    shared.mkdir()
    for user, outcome in (("ann", "passed"), ("bob", "still broken")):
        (shared / f"{user}.default.jsonl").write_text(json.dumps({
            "time": 1.0, "user": user, "mesh": "default", "scenario": "fault-left-on",
            "event": "check", "outcome": outcome}) + "\n")
    (shared / "bob.default.jsonl").chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the refusal the kernel would give
        real = Path.read_text

        def read_text(path, *args, **kwargs):
            if path.name.startswith("bob."):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", read_text)
    frame = progress.report([shared])
    assert list(frame["user"]) == ["ann"] and list(frame["outcome"]) == ["passed"]
    assert frame.attrs["unreadable"] == [str(shared / "bob.default.jsonl")]
    assert "1 record file(s) not readable" in progress.report_text([str(shared)])


def test_the_report_of_a_classroom_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("LAB_PRACTICE_DIR", str(tmp_path / "class"))
    (tmp_path / "class").mkdir()
    progress.record("fault-left-on", "start")
    progress.record("fault-left-on", "check", outcome="still broken")
    progress.record("fault-left-on", "check", outcome="passed")
    shared = list((tmp_path / "class").glob("*.jsonl"))
    assert len(shared) == 1 and oct(shared[0].stat().st_mode & 0o777) == "0o640"
    from lablib.cli import main

    assert main(["practice", "report", "--dir", str(tmp_path / "class")]) == 0
    out = capsys.readouterr().out
    assert "fault-left-on" in out and "passed" in out
    frame = progress.report()  # the shared folder and the own state root: counted once
    assert len(frame) == 1 and frame.iloc[0]["checks"] == 2
