"""Every scenario of the fault catalogue on one real mesh: the fault is set up, its symptom
reproduces, the reference fix passes the grader, and a plausible wrong fix does not."""

import pytest

from lablib import practice
from lablib.practice.catalogue import CATALOGUE, ensure_base, reset

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="module")
def mesh(bookinfo_mesh, tmp_path_factory, monkeypatch_module):
    """One mesh for every scenario: Bookinfo plus the practice namespaces (the sessions'
    records go to a folder of the test's own)."""
    monkeypatch_module.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("records")))
    ensure_base(bookinfo_mesh)
    return bookinfo_mesh


def test_the_catalogue_has_at_least_twelve_distinct_scenarios():
    names = [s.name for s in CATALOGUE]
    assert len(names) >= 12 and len(set(names)) == len(names)
    for s in CATALOGUE:
        assert s.goal and len(s.hints) >= 3 and s.symptom and s.solution


@pytest.mark.parametrize("name", [s.name for s in CATALOGUE])
def test_scenario(mesh, name):
    session = practice.start(mesh, name)
    try:
        broken = session.check()
        assert broken.outcome == practice.STILL_BROKEN, str(broken)
        assert all(r.holds for r in broken.results if r.kind == "guard"), str(broken)

        session.scenario.wrong_fix.run(mesh)
        wrong = session.check()
        assert wrong.outcome != practice.PASSED, str(wrong)

        reset(mesh)
        session.scenario.setup.run(mesh)
        session.scenario.fix.run(mesh)
        fixed = session.check()
        assert fixed.outcome == practice.PASSED, str(fixed)
    finally:
        reset(mesh)
