"""lablib.widgets: the weights panel's callback, driven in-kernel against a real mesh."""

from __future__ import annotations

from typing import Any

import ipywidgets
import pandas as pd
import pytest

from lablib import ConfigError, labs, traffic, widgets

NS = "bookinfo-test"


def route_weights(mesh) -> dict[str, int]:
    """The reviews VirtualService's weights per subset, as the mesh stores it."""
    vs = mesh.get("virtualservice", "reviews", NS)[0]
    return {d["destination"]["subset"]: d["weight"] for d in vs["spec"]["http"][0]["route"]}


def fractions(weights: dict[str, int]) -> dict[str, float]:
    return {k: w / 100 for k, w in weights.items()}


# --- The rebalancing rule (no mesh) ---------------------------------------------------------


@pytest.mark.parametrize(("before", "moved", "value", "after"), [
    # The others share what is left in proportion to what they had.
    ({"v1": 100, "v2": 0, "v3": 0}, "v3", 20, {"v1": 80, "v2": 0, "v3": 20}),
    ({"v1": 80, "v2": 0, "v3": 20}, "v2", 50, {"v1": 40, "v2": 50, "v3": 10}),
    ({"v1": 50, "v2": 25, "v3": 25}, "v1", 0, {"v1": 0, "v2": 50, "v3": 50}),
    # All others at 0: they share equally, in steps of 5, the first listed taking the rest.
    ({"v1": 100, "v2": 0, "v3": 0}, "v1", 25, {"v1": 25, "v2": 40, "v3": 35}),
    ({"v1": 0, "v2": 100, "v3": 0}, "v2", 100, {"v1": 0, "v2": 100, "v3": 0}),
    # Rounding: 3 units of 5 split 1:1 leave one unit, which goes to the first listed.
    ({"v1": 40, "v2": 30, "v3": 30}, "v1", 85, {"v1": 85, "v2": 10, "v3": 5}),
    ({"a": 100, "b": 0}, "b", 30, {"a": 70, "b": 30}),
])
def test_rebalance_keeps_the_sum_at_100_in_proportion(before, moved, value, after):
    assert widgets.rebalance(before, moved, value) == after


def test_rebalance_always_sums_to_100_in_steps_of_5():
    weights = {"v1": 100, "v2": 0, "v3": 0, "v4": 0}
    for moved, value in [("v2", 35), ("v3", 15), ("v1", 5), ("v4", 60), ("v2", 95), ("v3", 0)]:
        weights = widgets.rebalance(weights, moved, value)
        assert sum(weights.values()) == 100 and weights[moved] == value
        assert all(w % 5 == 0 and w >= 0 for w in weights.values()), weights


def test_rebalance_of_a_single_subset_is_always_100():
    assert widgets.rebalance({"v1": 100}, "v1", 40) == {"v1": 100}


def test_weighted_virtual_service_leaves_out_zero_weights():
    vs = widgets.weighted_virtual_service("reviews", NS, {"v1": 20, "v2": 0, "v3": 80})

    assert vs["kind"] == "VirtualService" and vs["metadata"] == {"name": "reviews",
                                                                 "namespace": NS}
    assert vs["spec"]["http"][0]["route"] == [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 20},
        {"destination": {"host": "reviews", "subset": "v3"}, "weight": 80}]


def test_configured_weights_reads_a_plain_split_only():
    def vs(*rules):
        return {"spec": {"http": list(rules)}}

    one = {"route": [{"destination": {"host": "reviews", "subset": "v3"}}]}
    split = {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 30},
                       {"destination": {"host": "reviews", "subset": "v2"}, "weight": 70}]}
    jason = {"match": [{"headers": {"end-user": {"exact": "jason"}}}], **one}
    subsets = ("v1", "v2", "v3")

    assert widgets.configured_weights(vs(one), subsets) == {"v1": 0, "v2": 0, "v3": 100}
    assert widgets.configured_weights(vs(split), subsets) == {"v1": 30, "v2": 70, "v3": 0}
    # A second rule sends some requests elsewhere, which no slider shows.
    assert widgets.configured_weights(vs(jason, split), subsets) is None
    assert widgets.configured_weights(vs(split), ("v1", "v3")) is None
    tcp = {"spec": {"tcp": [{"match": [{"port": 31400}], **split}]}}
    assert widgets.configured_weights(tcp, ("v1", "v2")) == {"v1": 30, "v2": 70}


# --- Any backend, send and builder (what the TCP lab reuses) --------------------------------


class RecordingMesh:
    """Just enough of a Backend: keeps what was applied, refuses weights of 13."""

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []

    def apply(self, source: dict[str, Any], namespace: str | None = None) -> list[str]:
        if 13 in source["weights"].values():
            raise ConfigError([])
        self.applied.append(source)
        return ["configured"]

    def get(self, kind: str, name: str | None = None,
            namespace: str | None = None) -> list[dict[str, Any]]:
        return []


def test_panel_takes_its_own_send_builder_and_column():
    mesh = RecordingMesh()
    sent: list[int] = []

    def send(n: int) -> pd.DataFrame:
        sent.append(n)
        return pd.DataFrame({"start": [0.01 * i for i in range(n)],
                             "backend": ["one"] * (n // 2) + ["two"] * (n - n // 2)})

    panel = widgets.WeightsPanel(mesh, host="tcp-echo", namespace="istio-io-tcp-traffic-shifting",
                                 subsets=("one", "two"), burst=10, send=send,
                                 vs_builder=lambda w: {"weights": dict(w)}, column="backend")
    frame = panel.set_weights({"one": 50, "two": 50})

    assert sent == [10] and len(frame) == 10
    assert mesh.applied == [{"weights": {"one": 50, "two": 50}}]
    assert panel.chart_data()["observed"] == {"one": 0.5, "two": 0.5}
    assert [t.name for t in panel.timeline_figure.data] == ["one", "two"]
    assert "tcp-echo" in panel.message
    assert panel.set_weights({"one": 87, "two": 13}).empty
    assert panel.weights() == {"one": 50, "two": 50}


def test_set_weights_names_unknown_subsets():
    panel = widgets.WeightsPanel(RecordingMesh(), host="x", namespace="y", subsets=("a", "b"),
                                 burst=1, send=lambda n: pd.DataFrame(), vs_builder=dict)
    with pytest.raises(ValueError, match="no slider for"):
        panel.set_weights({"c": 100})


# --- Bookinfo on a real mesh ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """Bookinfo with its DestinationRules, in a mesh of this module's own."""
    import lablib

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_MESH", "test-widgets")
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("widgets-mesh")))
        mesh = lablib.connect("local")
        try:
            labs.ensure_bookinfo(mesh, NS, destination_rules=True)
            yield mesh
        finally:
            mesh.uninstall()


@pytest.fixture
def panel(mesh):
    """A fresh panel on reviews, starting from everything on v1."""
    mesh.apply("samples/bookinfo/networking/virtual-service-all-v1.yaml", NS)
    return widgets.weights_slider(mesh, namespace=NS, burst=60)


@pytest.mark.envoy
def test_panel_starts_from_the_weights_the_mesh_holds(mesh):
    mesh.apply("samples/bookinfo/networking/virtual-service-reviews-50-v3.yaml", NS)
    panel = widgets.weights_slider(mesh, namespace=NS)

    assert panel.weights() == {"v1": 50, "v2": 0, "v3": 50}
    assert panel.applied is None and panel.history.empty
    assert "now splits v1 50%, v2 0%, v3 50%" in panel.message
    assert isinstance(panel.widget, ipywidgets.VBox)
    assert panel.shares_view in panel.widget.children
    assert all(s.continuous_update is False and (s.min, s.max, s.step) == (0, 100, 5)
               for s in panel.sliders.values())


@pytest.mark.envoy
def test_set_weights_applies_the_virtual_service_and_traffic_follows(mesh, panel):
    before = panel.chart_data()
    frame = panel.set_weights({"v1": 20, "v2": 0, "v3": 80})

    assert route_weights(mesh) == {"v1": 20, "v3": 80}
    assert panel.weights() == {"v1": 20, "v2": 0, "v3": 80}
    assert len(frame) == 60 and (frame["status"] == 200).all()
    chart = panel.chart_data()
    assert chart != before
    assert chart["configured"] == {"v1": 0.2, "v2": 0.0, "v3": 0.8}
    assert chart["observed"] == pytest.approx(traffic.shares(frame).to_dict() | {
        k: 0.0 for k in ("v1", "v2", "v3") if k not in set(frame["version"])})
    # Istio promises the split within a binomial bound; the chart's error bars are that bound.
    table = traffic.check_shares(frame, fractions(panel.applied))
    assert dict(zip(table["version"], table["tolerance"], strict=True)) == pytest.approx(
        chart["tolerance"], abs=1e-3)
    assert "Applied VirtualService bookinfo-test/reviews: v1 20%, v2 0%, v3 80%" in panel.message


@pytest.mark.envoy
def test_moving_a_slider_rebalances_applies_and_redraws(mesh, panel):
    panel.set_weights({"v1": 100})
    before = panel.chart_data()

    panel.sliders["v2"].value = 50

    assert panel.weights() == {"v1": 50, "v2": 50, "v3": 0}
    assert panel.applied == {"v1": 50, "v2": 50, "v3": 0}
    assert route_weights(mesh) == {"v1": 50, "v2": 50}
    chart = panel.chart_data()
    assert chart != before and chart["configured"] == {"v1": 0.5, "v2": 0.5, "v3": 0.0}
    traffic.check_shares(panel.last, {"v1": 0.5, "v2": 0.5})

    panel.sliders["v3"].value = 100

    assert panel.weights() == {"v1": 0, "v2": 0, "v3": 100}
    assert route_weights(mesh) == {"v3": 100}
    traffic.check_shares(panel.last, {"v3": 1.0})
    # One burst per change, all on the time series.
    history = panel.history
    assert sorted(history["burst"].unique()) == [0, 1, 2] and len(history) == 180
    assert history["start"].is_monotonic_increasing
    assert {t.name for t in panel.timeline_figure.data} == {"v1", "v2", "v3"}


@pytest.mark.envoy
def test_a_refused_slider_change_shows_why_and_keeps_the_previous_config(mesh):
    mesh.apply("samples/bookinfo/networking/virtual-service-all-v1.yaml", NS)
    # destination-rule-all.yaml defines no subset v4, so routing any weight there is refused.
    panel = widgets.weights_slider(mesh, namespace=NS, subsets=("v1", "v2", "v3", "v4"))
    panel.set_weights({"v1": 50, "v3": 50})
    chart = panel.chart_data()

    panel.sliders["v4"].value = 40

    assert "IST0101" in panel.message and "v4" in panel.message
    assert "Traceback" not in panel.message
    assert "IST0101" in panel.status.value
    assert route_weights(mesh) == {"v1": 50, "v3": 50}
    assert panel.weights() == {"v1": 50, "v2": 0, "v3": 50, "v4": 0}
    assert panel.applied == {"v1": 50, "v2": 0, "v3": 50, "v4": 0}
    assert panel.chart_data() == chart
    assert len(panel.history) == 60
    traffic.check_shares(traffic.send(mesh, n=60), {"v1": 0.5, "v3": 0.5})


@pytest.mark.envoy
def test_weights_not_summing_to_100_are_refused_by_the_analyzer(mesh, panel):
    panel.set_weights({"v1": 100})

    assert panel.set_weights({"v1": 50, "v2": 40}).empty

    assert "LAB0201" in panel.message
    assert route_weights(mesh) == {"v1": 100}
    assert panel.weights() == {"v1": 100, "v2": 0, "v3": 0}
