"""Reading fortio's load report back as numbers (`lablib.fortio`), and the concurrency panel
that plots what each run got."""

from __future__ import annotations

import subprocess

import pytest

from lablib import fortio, widgets

# The shape real fortio (1.6x) prints for the walkthrough's run, trimmed of its log lines.
REAL_FORTIO = """\
Fortio 1.63.3 running at 0 queries per second, 2->2 procs, for 30 calls: http://httpbin:8000/get
Starting at max qps with 3 thread(s) [gomax 2] for exactly 30 calls (10 per thread + 0)
Ended after 59.847ms : 30 calls. qps=501.28
Aggregated Function Time : count 30 avg 0.0051 +/- 0.0039 min 0.000438 max 0.0171 sum 0.1535
# range, mid point, percentile, count
>= 0.000438 <= 0.001 , 0.000719 , 20.00, 6
> 0.001 <= 0.002 , 0.0015 , 30.00, 3
> 0.004 <= 0.005 , 0.0045 , 70.00, 12
> 0.016 <= 0.0171 , 0.01655 , 100.00, 9
# target 50% 0.0045
# target 75% 0.006
# target 90% 0.0085
# target 99% 0.0158
# target 99.9% 0.0169
Error cases : count 21 avg 0.0012 +/- 0.0006 min 0.000438 max 0.0029 sum 0.0252
Sockets used: 22 (for perfect keepalive, would be 3)
Uniform: false, Jitter: false, Catchup allowed: true
IP addresses distribution:
10.96.124.2:8000: 22
Code 200 : 9 (30.0 %)
Code 503 : 21 (70.0 %)
Response Header Sizes : count 30 avg 69 +/- 105.4 min 0 max 230 sum 2070
All done 30 calls (plus 0 warmup) 5.117 ms avg, 501.3 qps
"""


def test_a_real_fortio_report_reads_as_numbers() -> None:
    report = fortio.parse_report(REAL_FORTIO)
    assert report.codes == {200: 9, 503: 21} and report.requests == 30
    assert report.share(503) == pytest.approx(0.7)
    assert report.percentiles_ms[50.0] == pytest.approx(4.5)
    assert report.percentiles_ms[99.9] == pytest.approx(16.9)
    assert report.histogram_ms[0] == pytest.approx((0.438, 1.0, 6))
    assert sum(count for _, _, count in report.histogram_ms) == 30
    assert report.calls == 30 and report.qps == pytest.approx(501.28)
    assert report.duration_s == pytest.approx(0.059847) and report.sockets == 22
    assert report.summary() == {"requests": 30, "qps": 501.3, "p50_ms": 4.5, "p90_ms": 8.5,
                                "p99_ms": 15.8, "200": 9, "503": 21}


def test_failed_connections_count_as_code_minus_one() -> None:
    report = fortio.parse_report("Code -1 : 3 (10.0 %)\nCode 200 : 27 (90.0 %)\n")
    assert report.codes == {-1: 3, 200: 27}


def test_the_stand_ins_report_parses_the_same_way() -> None:
    # What `fortio load` prints in a local pod: lablib.load's report, fortio's format.
    import pandas as pd

    from lablib.load import LoadResult

    frame = pd.DataFrame({"start": [0.0, 0.01, 0.02, 0.03], "latency_ms": [1.0, 2.0, 3.0, 9.0],
                          "status": [200, 200, 503, 0], "worker": [0, 1, 0, 1],
                          "error": ["", "", "", "refused"]})
    text = LoadResult(frame, "http://httpbin:8000/get", 2, 0.0, 0.05, 3).report()
    report = fortio.parse_report(text)
    assert report.codes == {-1: 1, 200: 2, 503: 1}
    assert report.calls == 4 and report.sockets == 3
    assert sum(count for _, _, count in report.histogram_ms) == 4
    assert report.percentiles_ms[50.0] == pytest.approx(2.5)


def test_no_code_lines_is_a_clear_error() -> None:
    with pytest.raises(fortio.FortioError, match="no 'Code NNN : count' lines"):
        fortio.parse_report("Aborting because of dial tcp: lookup httpbin: no such host\n")


class FakeMesh:
    """Records the exec call and answers with a canned report."""

    def __init__(self, stdout: str, returncode: int = 0) -> None:
        self.calls: list[tuple] = []
        self.stdout, self.returncode = stdout, returncode

    def exec(self, pod, argv, namespace="default", container=None, timeout=60.0):
        self.calls.append((pod, list(argv), namespace, container))
        return subprocess.CompletedProcess(argv, self.returncode, self.stdout, "boom")


def test_run_execs_fortio_load_in_the_fortio_container() -> None:
    mesh = FakeMesh(REAL_FORTIO)
    report = fortio.run(mesh, "fortio-1", "cb", "http://httpbin:8000/get", connections=3,
                        n=30, headers={"end-user": "jason"})
    pod, argv, namespace, container = mesh.calls[0]
    assert (pod, namespace, container) == ("fortio-1", "cb", "fortio")
    assert argv == ["fortio", "load", "-c", "3", "-qps", "0", "-n", "30", "-loglevel", "Error",
                    "-H", "end-user: jason", "http://httpbin:8000/get"]
    assert report.codes == {200: 9, 503: 21}


def test_a_failing_fortio_names_the_pod_and_shows_its_output() -> None:
    with pytest.raises(fortio.FortioError, match=r"pod cb/fortio-1 exited 1:\nboom"):
        fortio.run(FakeMesh("", returncode=1), "fortio-1", "cb", "http://httpbin:8000/get")


def test_latency_chart_has_the_buckets_and_percentile_lines() -> None:
    fig = fortio.latency_chart(fortio.parse_report(REAL_FORTIO))
    assert list(fig.data[0].y) == [6, 3, 12, 9]
    assert [a.text for a in fig.layout.annotations] == ["p50", "p90", "p99"]


def _report(ok: int, refused: int) -> fortio.FortioReport:
    return fortio.FortioReport(codes={200: ok, 503: refused} if refused else {200: ok})


def test_concurrency_panel_runs_on_each_slider_move_and_charts_the_share() -> None:
    ran: list[int] = []

    def run(connections: int) -> fortio.FortioReport:
        ran.append(connections)
        return _report(60 - 10 * (connections - 1), 10 * (connections - 1))

    panel = widgets.concurrency_slider(run, maximum=6)
    panel.slider.value = 3          # what dragging the slider does
    panel.set_connections(1)
    panel.set_connections(1)        # already there: runs again
    assert ran == [3, 1, 1]
    assert panel.chart_data() == {1: 0.0, 3: pytest.approx(1 / 3)}
    table = panel.table()
    assert table["connections"].tolist() == [1, 3]
    assert table["503"].tolist() == [0, 20] and table["share_503"].tolist()[0] == 0.0
    assert "3 connection(s)" not in panel.message and "1 connection(s)" in panel.message


def test_a_failed_run_is_shown_in_red_and_raised() -> None:
    def run(connections: int) -> fortio.FortioReport:
        raise fortio.FortioError("fortio load in pod cb/fortio-1 exited 1")

    panel = widgets.concurrency_slider(run)
    with pytest.raises(fortio.FortioError):
        panel.set_connections(2)
    assert "#b00020" in panel.status.value and "exited 1" in panel.message
    assert panel.chart_data() == {}


def test_panel_needs_no_mesh() -> None:
    # The panel takes any callable: on either backend the lab passes a fortio.run closure.
    panel = widgets.ConcurrencyPanel(lambda c: _report(10, 0), maximum=4)
    assert panel.slider.max == 4 and panel.slider.min == 1
    assert panel.set_connections(4).requests == 10 and panel.chart_data() == {4: 0.0}
