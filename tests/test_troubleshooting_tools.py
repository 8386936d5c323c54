"""The diagnostic tools of issue #20 on one real mesh (Bookinfo): Istio's access log in
`kubectl logs POD -c istio-proxy`, `istioctl proxy-config log`, `proxy-status POD`,
`x describe`, `analyze` IST0103, `x precheck`, and Envoy's own views as DataFrames."""

from __future__ import annotations

import re
import time

import pytest

from lablib import proxyconfig
from lablib.config.meshconfig import MeshConfig, mesh_config
from lablib.config.store import ConfigStore
from lablib.controlplane.accesslog import ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT, mesh_access_log
from lablib.controlplane.context import Proxy, PushContext
from lablib.errors import ConfigError
from lablib.practice.probes import from_ingress
from lablib.shims import istioctl_main, kubectl_main

NS = "bookinfo-test"
# Istio's default TEXT format: [time] "METHOD PATH PROTO" CODE FLAGS DETAILS ...
ISTIO_LINE = re.compile(r'^\[\S+Z\] "(GET|POST) (\S+) HTTP/1\.1" (\d{3}) (\S+) (\S+) ')


# --- the access log meshConfig asks for (no mesh needed) -------------------------------------


def _loggers(config: MeshConfig, kind: str = "sidecar") -> list[dict]:
    return mesh_access_log(Proxy("sidecar~x", kind, NS), PushContext(ConfigStore([]), (), (),
                                                                      mesh_config=config))


def test_demo_profile_logs_istio_text_to_stdout_and_json_on_request():
    (text,) = _loggers(mesh_config("demo", {}))
    assert text["typed_config"]["path"] == "/dev/stdout"
    assert text["typed_config"]["log_format"] == {
        "text_format_source": {"inline_string": ISTIO_TEXT_FORMAT}}
    (json_log,) = _loggers(mesh_config("demo", {"meshConfig.accessLogEncoding": "JSON"}))
    assert json_log["typed_config"]["log_format"] == {"json_format": ISTIO_JSON_FORMAT}
    custom = mesh_config("demo", {"meshConfig.accessLogFormat": "%RESPONSE_CODE%"})
    assert _loggers(custom)[0]["typed_config"]["log_format"]["text_format_source"] == {
        "inline_string": "%RESPONSE_CODE%\n"}


def test_no_access_log_without_the_setting_nor_for_the_kube_proxy_stand_in():
    assert _loggers(mesh_config("demo", {"meshConfig.accessLogFile": ""})) == []
    assert _loggers(mesh_config("demo", {}), kind="kube") == []


def _telemetry(namespace: str, spec: dict, name: str = "logs") -> dict:
    return {"apiVersion": "telemetry.istio.io/v1alpha1", "kind": "Telemetry",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def _with_telemetry(*items: dict, config: MeshConfig | None = None,
                    labels: dict | None = None) -> list[dict]:
    from lablib.config import load
    from lablib.controlplane.context import Workload

    store = ConfigStore(load(list(items)))
    workload = Workload("p", NS, labels or {"app": "reviews"}, "default", True, {})
    proxy = Proxy("sidecar~x", "sidecar", NS, workload)
    return mesh_access_log(proxy, PushContext(store, (), (),
                                              mesh_config=config or mesh_config("demo", {})))


def test_telemetry_access_logging_wins_over_mesh_config_most_specific_first():
    errors_only = {"accessLogging": [{"providers": [{"name": "envoy"}],
                                      "filter": {"expression": "response.code >= 400"}}]}
    (logger,) = _with_telemetry(_telemetry("istio-system", errors_only))
    assert logger["typed_config"]["path"] == "/dev/stdout"
    assert logger["filter"]["extension_filter"]["typed_config"]["expression"] == \
        "response.code >= 400"
    off = {"accessLogging": [{"disabled": True}]}
    assert _with_telemetry(_telemetry("istio-system", errors_only),
                           _telemetry(NS, off, "quiet")) == []
    for_reviews = {"selector": {"matchLabels": {"app": "reviews"}},
                   "accessLogging": [{"providers": [{"name": "envoy"}]}]}
    (logger,) = _with_telemetry(_telemetry(NS, off, "quiet"),
                                _telemetry(NS, for_reviews, "reviews"))
    assert "filter" not in logger
    assert _with_telemetry(_telemetry(NS, off, "quiet"), _telemetry(NS, for_reviews, "reviews"),
                           labels={"app": "ratings"}) == []
    # A Telemetry alone turns logging on even when meshConfig has no accessLogFile.
    quiet_mesh = mesh_config("demo", {"meshConfig.accessLogFile": ""})
    assert len(_with_telemetry(_telemetry("istio-system", errors_only), config=quiet_mesh)) == 1


def test_what_telemetry_the_local_mesh_cannot_translate_is_refused_by_name():
    from lablib.config import load
    from lablib.config.schema import validate

    spec = {"metrics": [{"providers": [{"name": "prometheus"}]}],
            "accessLogging": [{"providers": [{"name": "otel"}], "match": {"mode": "SERVER"}}]}
    (resource,) = load([_telemetry(NS, spec)], check_fields=False)
    problems = {d.field: d.message for d in validate(resource)}
    assert set(problems) == {"spec.metrics", "spec.accessLogging[0].providers[0].name",
                             "spec.accessLogging[0].match.mode"}
    assert "LAB_BACKEND=kubernetes" in problems["spec.metrics"]
    assert 'provider "otel" is not defined' in problems["spec.accessLogging[0].providers[0].name"]


def test_an_access_log_file_path_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="accessLogFile.*/dev/stdout"):
        mesh_config("demo", {"meshConfig.accessLogFile": "/var/log/envoy.log"})


# --- on a real mesh ------------------------------------------------------------------------------


def _run(tool, argv, capsys) -> tuple[int, str, str]:
    code = tool(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _logged(argv, capsys, wanted) -> set[tuple[str, str, str]]:
    """(path, code, flags) of the Istio-format lines `kubectl logs ARGV` shows, once `wanted`
    are among them (Envoy flushes its log file every 100 ms) or after five seconds."""
    deadline = time.monotonic() + 5
    while True:
        _, out, _ = _run(kubectl_main, argv, capsys)
        seen = {m.groups()[1:4] for m in map(ISTIO_LINE.match, out.splitlines()) if m}
        if wanted <= seen or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


@pytest.mark.envoy
def test_kubectl_logs_shows_istio_lines_with_response_flags(bookinfo_mesh, capsys):
    assert from_ingress(bookinfo_mesh, "/productpage").status == 200
    assert from_ingress(bookinfo_mesh, "/no-such-page").status == 404
    gateway = bookinfo_mesh.pod_name({"istio": "ingressgateway"}, "istio-system")
    wanted = {("/productpage", "200", "-"), ("/no-such-page", "404", "NR")}
    assert wanted <= _logged(["logs", gateway, "-n", "istio-system"], capsys, wanted)
    productpage = bookinfo_mesh.pod_name({"app": "productpage"}, NS)
    wanted = {("/reviews/0", "200", "-")}
    assert wanted <= _logged(["logs", productpage, "-n", NS, "-c", "istio-proxy"], capsys,
                             wanted)


@pytest.mark.envoy
def test_a_telemetry_filter_keeps_only_the_errors_in_the_gateway_log(bookinfo_mesh, capsys):
    telemetry = _telemetry("istio-system", {"accessLogging": [{
        "providers": [{"name": "envoy"}], "filter": {"expression": "response.code >= 400"}}]})
    bookinfo_mesh.apply(telemetry)
    try:
        assert from_ingress(bookinfo_mesh, "/productpage?probe=telemetry").status == 200
        assert from_ingress(bookinfo_mesh, "/missing-telemetry").status == 404
        gateway = bookinfo_mesh.pod_name({"istio": "ingressgateway"}, "istio-system")
        wanted = {("/missing-telemetry", "404", "NR")}
        seen = _logged(["logs", gateway, "-n", "istio-system"], capsys, wanted)
    finally:
        bookinfo_mesh.delete(telemetry)
    assert wanted <= seen
    assert not any(path == "/productpage?probe=telemetry" for path, _, _ in seen), seen


@pytest.mark.envoy
def test_proxy_config_log_gets_and_sets_envoy_levels(bookinfo_mesh, capsys):
    pod = bookinfo_mesh.pod_name({"app": "ratings"}, NS)
    code, out, _ = _run(istioctl_main, ["proxy-config", "log", f"{pod}.{NS}"], capsys)
    assert code == 0 and out.startswith("active loggers:") and "  http: warning" in out
    code, out, _ = _run(istioctl_main, ["pc", "log", pod, "-n", NS, "--level",
                                        "http:debug,router:debug"], capsys)
    assert "  http: debug" in out and "  router: debug" in out and "  admin: warning" in out
    code, _, err = _run(istioctl_main, ["pc", "log", pod, "-n", NS, "--level", "loud"], capsys)
    assert code != 0 and "unrecognized logging level: loud" in err
    code, _, err = _run(istioctl_main, ["pc", "log", pod, "-n", NS, "--level", "nope:debug"],
                        capsys)
    assert code != 0 and "unrecognized logger name: nope" in err
    code, out, _ = _run(istioctl_main, ["pc", "log", pod, "-n", NS, "--reset"], capsys)
    assert "  http: warning" in out and "debug" not in out


@pytest.mark.envoy
def test_proxy_status_of_one_pod_compares_control_plane_and_proxy(bookinfo_mesh, capsys):
    pod = bookinfo_mesh.pod_name({"app": "details"}, NS)
    code, out, _ = _run(istioctl_main, ["proxy-status", f"{pod}.{NS}"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[:2] == ["Clusters Match", "Listeners Match"], out
    assert lines[2].startswith("Routes Match (RDS last loaded at "), out
    code, out, _ = _run(istioctl_main, ["proxy-status"], capsys)
    assert out.split()[:9] == ["NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD",
                               "VERSION"]
    assert f"{pod}.{NS}" in out and "SYNCED" in out


@pytest.mark.envoy
def test_describe_pod_names_rules_subsets_and_mtls_mode(bookinfo_mesh, capsys):
    bookinfo_mesh.apply({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                         "metadata": {"name": "reviews", "namespace": NS},
                         "spec": {"hosts": ["reviews"], "http": [{"route": [
                             {"destination": {"host": "reviews", "subset": "v2"}}]}]}})
    try:
        pod = bookinfo_mesh.pod_name({"app": "reviews", "version": "v1"}, NS)
        code, out, _ = _run(istioctl_main, ["x", "describe", "pod", pod, "-n", NS], capsys)
    finally:
        bookinfo_mesh.delete({"apiVersion": "networking.istio.io/v1beta1",
                              "kind": "VirtualService",
                              "metadata": {"name": "reviews", "namespace": NS}})
    assert code == 0
    for expected in (f"Pod: {pod}", "Service: reviews", "   Port: http 9080/HTTP targets pod "
                     "port 9080", 'DestinationRule: reviews for "reviews"',
                     "   Matching subsets: v1", "      (Non-matching subsets v2,v3)",
                     "VirtualService: reviews",
                     "   Route to non-matching subset v2 for (everything)",
                     "   Workload mTLS mode: PERMISSIVE"):
        assert expected in out.splitlines(), out
    productpage = bookinfo_mesh.pod_name({"app": "productpage"}, NS)
    code, out, _ = _run(istioctl_main, ["x", "describe", "pod", f"{productpage}.{NS}"], capsys)
    host, port = bookinfo_mesh.ingress_address()
    assert out.splitlines()[-3:] == [f"Exposed on Ingress Gateway http://{host}:{port}",
                                     "VirtualService: bookinfo",
                                     "   /productpage, /static*, /login, /logout, "
                                     "/api/v1/products*"], out


@pytest.mark.envoy
def test_analyze_reports_a_pod_started_before_injection(bookinfo_mesh, capsys):
    bookinfo_mesh.create_namespace("late-inject")
    bookinfo_mesh.apply("samples/sleep/sleep.yaml", "late-inject")
    bookinfo_mesh.create_namespace("late-inject", {"istio-injection": "enabled"})
    try:
        code, out, _ = _run(istioctl_main, ["analyze", "-n", "late-inject"], capsys)
        pod = bookinfo_mesh.pod_name({"app": "sleep"}, "late-inject")
    finally:
        bookinfo_mesh.delete_namespace("late-inject")
    assert (f"Warning [IST0103] (Pod late-inject/{pod}) The pod late-inject/{pod} is missing "
            "the Istio proxy.") in out


@pytest.mark.envoy
def test_envoy_views_as_dataframes(bookinfo_mesh):
    assert from_ingress(bookinfo_mesh, "/productpage").status == 200
    pod = bookinfo_mesh.pod_name({"app": "productpage"}, NS)
    health = proxyconfig.cluster_health(bookinfo_mesh, pod, NS, "outbound|9080||reviews")
    assert set(health["health"]) == {"HEALTHY"} and len(health) == 3  # v1, v2, v3
    assert health["rq_total"].sum() >= 1
    endpoints = proxyconfig.eds(bookinfo_mesh, pod, NS)
    reviews = endpoints[endpoints["cluster"] == f"outbound|9080||reviews.{NS}.svc.cluster.local"]
    assert len(reviews) == 3 and set(reviews["health_status"]) == {"HEALTHY"}
    stats = proxyconfig.stats(bookinfo_mesh, pod, NS, "upstream_rq_200")
    assert len(stats) and all("upstream_rq_200" in s for s in stats["stat"])


def test_unknown_flags_are_refused_as_istioctl_refuses_them(capsys):
    code, _, err = _run(istioctl_main, ["proxy-status", "--bogus"], capsys)
    assert code != 0 and "unknown flag: --bogus" in err
    code, _, err = _run(istioctl_main, ["x", "nonsense"], capsys)
    assert code != 0 and 'unknown command "nonsense" for "istioctl experimental"' in err


def test_practice_and_diagnose_use_the_backend_interface_only():
    """The grader and the tools reach the mesh through lablib.Backend only, so scenarios run
    against real Istio on LAB_BACKEND=kubernetes too."""
    from pathlib import Path

    from test_kube_labs_portable import check_helper

    root = Path(__file__).resolve().parent.parent / "lablib"
    helpers = [*sorted((root / "practice").glob("*.py")), root / "diagnose.py"]
    findings = [f for path in helpers for f in check_helper(path)]
    assert not findings, "\n".join(map(str, findings))


def test_analyze_on_files_reports_istio_codes_without_a_mesh(tmp_path, capsys):
    manifest = tmp_path / "reviews.yaml"
    manifest.write_text("""
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  ports: [{port: 9080, name: web}]
  selector: {app: reviews}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /v2}}]
    route: [{destination: {host: reviews}}]
""")
    code, out, err = _run(istioctl_main, ["analyze", "--use-kube=false", "-n", "shop",
                                          str(manifest)], capsys)
    assert code == 0, err  # warnings and infos only: istioctl exits 0
    assert ("Warning [IST0130] (VirtualService shop/reviews) VirtualService rule #1 not used "
            "(route without matches defined before).") in out
    assert ("Info [IST0118] (Service shop/reviews) Port name web (port: 9080, targetPort: "
            "9080) doesn't follow the naming convention of Istio port.") in out


def test_access_log_since_keeps_only_the_requests_that_started_then_or_later(monkeypatch):
    from lablib import diagnose

    def line(start: str, code: int) -> str:
        return (f'[{start}] "GET /reviews/0 HTTP/1.1" {code} UC - - "-" 0 95 1 - "-" "curl" '
                f'"id" "reviews:9080" "127.0.0.1:9080" outbound|9080||reviews - '
                f"127.0.0.1:9080 127.0.0.1:1 - default")

    log = "\n".join([line("2026-12-04T16:51:35.735Z", 503), "envoy says something",
                     line("2026-12-04T16:51:40.064Z", 200)])

    class OneMesh:
        def pod_name(self, labels, namespace):
            return "productpage-1"

    monkeypatch.setattr(diagnose, "kubectl", lambda *args: diagnose.Output("", 0, log, ""))
    everything = diagnose.access_log(OneMesh(), "productpage", "ns")
    assert list(everything["code"]) == [503, 200]
    later = diagnose.access_log(OneMesh(), "productpage", "ns", since="2026-12-04T16:51:36.000Z")
    assert list(later["code"]) == [200]
    assert diagnose.now() > "2026-12-04T16:51:40.064Z"
