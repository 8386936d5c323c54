"""The istioctl shim: istioctl's table shapes and errors, kube-inject's output, analyze, and
install / proxy-config / proxy-status / x wait on a real local mesh."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lablib.shims import addons, istioctl_main
from lablib.shims.istioctl import (
    _clusters_table,
    _domains,
    _endpoints_json,
    _filtered_dump,
    _listener_type,
    _match,
    _routes_table,
    kube_inject,
)

KIT_ROOT = Path(__file__).resolve().parent.parent


# --- output shapes --------------------------------------------------------------------------------


def routes_dump(vs_path: str) -> list[dict[str, Any]]:
    route = {"match": {"prefix": "/get"}, "route": {"cluster": "outbound|8000||httpbin"},
             "metadata": {"filter_metadata": {"istio": {"config": vs_path}}}}
    return [{"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
             "dynamic_route_configs": [{"route_config": {"name": "http.8080", "virtual_hosts": [
                 {"name": "httpbin.example.com:80",
                  "domains": ["httpbin.example.com", "httpbin.example.com:*"],
                  "routes": [route]}]}}]}]


def test_routes_table_matches_istioctl() -> None:
    dump = routes_dump("/apis/networking.istio.io/v1alpha3/namespaces/default/"
                       "virtual-service/httpbin")
    # istioctl's own golden output (istioctl/pkg/writer/envoy/configdump/testdata).
    assert _routes_table(dump).splitlines() == [
        "NAME          VHOST NAME                 DOMAINS                 MATCH     "
        "VIRTUAL SERVICE",
        "http.8080     httpbin.example.com:80     httpbin.example.com     /get*     "
        "httpbin.default",
    ]


def test_route_matches_and_domains_as_istioctl_writes_them() -> None:
    assert _match({"path": "/productpage"}) == "/productpage"
    assert _match({"prefix": "/static"}) == "/static*"
    assert _match({"prefix": "/"}) == "/*"
    assert _match({"prefix": "/", "headers": [{"name": "end-user",
                                               "string_match": {"exact": "jason"}}]}) == \
        "/* (end-user=jason)"
    assert _domains(["reviews.ns.svc.cluster.local", "reviews.ns.svc.cluster.local:9080",
                     "reviews", "reviews.ns"]) == \
        "reviews.ns.svc.cluster.local, reviews + 1 more..."


def test_clusters_table_names_subsets_and_destination_rules() -> None:
    dump = [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
             "dynamic_active_clusters": [
                 {"cluster": {"name": "outbound|9080|v1|reviews.ns.svc.cluster.local",
                              "type": "EDS"}},
                 {"cluster": {"name": "xds-grpc", "type": "STATIC"}}]}]
    rules = {"reviews.ns.svc.cluster.local": "reviews.ns"}
    assert _clusters_table(dump, rules).splitlines() == [
        "SERVICE FQDN                     PORT     SUBSET     DIRECTION     TYPE       "
        "DESTINATION RULE",
        "reviews.ns.svc.cluster.local     9080     v1         outbound      EDS        "
        "reviews.ns",
        "xds-grpc                         -        -          -             STATIC     ",
    ]


def test_cluster_and_endpoint_filters_compare_each_part_exactly() -> None:
    dump = [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
             "dynamic_active_clusters": [{"cluster": {"name": name}} for name in (
                 "outbound|9080|v1|reviews.ns.svc.cluster.local",
                 "outbound|9080||reviews.ns.svc.cluster.local",
                 "inbound|9080||", "outbound|9080|v1|reviews.other.svc.cluster.local")]}]
    kept = _filtered_dump(dump, "clusters", {"fqdn": "reviews.ns.svc.cluster.local",
                                             "subset": "v1"})
    assert [c["cluster"]["name"] for c in kept[0]["dynamic_active_clusters"]] == [
        "outbound|9080|v1|reviews.ns.svc.cluster.local"]
    inbound = _filtered_dump(dump, "clusters", {"direction": "inbound", "port": "9080"})
    assert [c["cluster"]["name"] for c in inbound[0]["dynamic_active_clusters"]] == [
        "inbound|9080||"]
    hosts = {"cluster_statuses": [{"name": "outbound|9080||r", "host_statuses": [
        {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
         "health_status": health} for port, health in (
            (1, {"eds_health_status": "HEALTHY"}),
            (2, {"eds_health_status": "HEALTHY", "failed_outlier_check": True}))]}]}
    ejected = _endpoints_json(hosts, {"status": "unhealthy"})
    assert [h["address"]["socket_address"]["port_value"]
            for h in ejected["cluster_statuses"][0]["host_statuses"]] == [2]
    assert _endpoints_json(hosts, {"cluster": "outbound|9080||x"})["cluster_statuses"] == []


def test_listener_type_is_istioctls() -> None:
    def listener(*filters: str) -> dict[str, Any]:
        return {"filter_chains": [{"filters": [{"name": f"envoy.filters.network.{f}"}]}
                                  for f in filters]}
    assert _listener_type(listener("http_connection_manager")) == "HTTP"
    assert _listener_type(listener("tcp_proxy")) == "TCP"
    assert _listener_type(listener("tcp_proxy", "http_connection_manager")) == "HTTP+TCP"


def test_kube_inject_adds_the_sidecar_and_init_container() -> None:
    text = (KIT_ROOT / "samples/sleep/sleep.yaml").read_text()
    docs = list(yaml.safe_load_all(kube_inject(text)))
    originals = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == [d["kind"] for d in originals if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    names = [c["name"] for c in template["spec"]["containers"]]
    assert names == ["sleep", "istio-proxy"]
    proxy = template["spec"]["containers"][1]
    assert proxy["image"] == "docker.io/istio/proxyv2:1.20.3"
    assert proxy["args"][:2] == ["proxy", "sidecar"]
    assert [c["name"] for c in template["spec"]["initContainers"]] == ["istio-init"]
    status = json.loads(template["metadata"]["annotations"]["sidecar.istio.io/status"])
    assert status["containers"] == ["istio-proxy"]
    assert template["metadata"]["labels"]["service.istio.io/canonical-name"] == "sleep"
    assert next(d for d in docs if d["kind"] == "Service") == next(
        d for d in originals if d and d["kind"] == "Service")
    # Injecting twice changes nothing.
    assert kube_inject(kube_inject(text)) == kube_inject(text)


# --- bad input and commands that need no mesh ----------------------------------------------------


@pytest.fixture
def no_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LAB_MESH", f"shims-absent-{os.getpid()}")
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LAB_BACKEND", raising=False)
    return tmp_path


@pytest.mark.parametrize(("argv", "stderr"), [
    (["frob"], 'Error: unknown command "frob" for "istioctl"\n'
               "Run 'istioctl --help' for usage.\n"),
    (["-n"], "Error: flag needs an argument: 'n' in -n\n"),
    (["install", "--frob"], "Error: unknown flag: --frob\n"),
    (["proxy-config", "frob", "pod.ns"], 'Error: unknown command "frob" for "istioctl '
                                         'proxy-config"\n'),
    (["proxy-config", "routes"], "Error: proxy-config routes requires pod name or --file "
                                 "parameter\n"),
    (["uninstall", "-y"], "Error: at least one of the --revision (or --set revision=<revision>)"
                          ", --filename or --purge flags must be set\n"),
    (["kube-inject"], "Error: filename not specified (see --filename or -f)\n"),
    (["x", "frob"], 'Error: unknown command "frob" for "istioctl experimental" (the local '
                    "mesh has: wait, describe, precheck)\n"),
])
def test_bad_command_lines(no_mesh: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                           stderr: str) -> None:
    assert istioctl_main(argv) == 1
    assert capsys.readouterr().err == stderr


def test_kiali_and_grafana_pods_point_at_the_labs_stand_ins() -> None:
    """What the kiali and grafana addons' pods answer (istioctl dashboard forwards to them)."""
    for name, lab, call in (("kiali", "13_observing_traffic.ipynb", "telemetry.LiveGraph("),
                            ("grafana", "14_metrics_dashboards.ipynb",
                             "dashboards.live_dashboard(")):
        text = addons.STAND_IN_TEXTS[name]
        assert f"The local mesh has no {name.capitalize()}" in text
        assert str(KIT_ROOT / "labs" / lab) in text and call in text


def test_addon_dashboards_need_the_mesh_and_tracing_has_no_stand_in(
        no_mesh: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("prometheus", "grafana", "kiali"):
        assert istioctl_main(["dashboard", name]) == 1
        assert "it is not running" in capsys.readouterr().err
    assert istioctl_main(["dashboard", "jaeger"]) == 1
    assert capsys.readouterr().err.startswith(
        "Error: the jaeger dashboard is not part of the local mesh")


def test_install_asks_first_and_a_no_starts_nothing(
        no_mesh: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("n\n"))
    assert istioctl_main(["install", "--set", "profile=demo"]) == 1
    assert capsys.readouterr().out == (
        'This will install the Istio 1.20.3 "demo" profile (with components: Istio core, '
        "Istiod, Ingress gateways, and Egress gateways) into the cluster. Proceed? (y/N) "
        "Cancelled.\n")
    assert not (no_mesh / "state" / os.environ["LAB_MESH"] / "meshd.sock").exists()


def test_version_without_the_mesh(no_mesh: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert istioctl_main(["version", "--remote=false"]) == 0
    assert capsys.readouterr().out == "client version: 1.20.3\n"


GOOD = """\
apiVersion: v1
kind: Service
metadata: {name: productpage}
spec:
  selector: {app: productpage}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: productpage}
spec:
  hosts: [productpage]
  http:
  - route:
    - destination: {host: productpage}
"""
BAD = GOOD.replace("destination: {host: productpage}",
                   "destination: {host: productpage, subset: v9}")


def test_analyze_files_without_the_mesh(no_mesh: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = no_mesh / "good.yaml", no_mesh / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(BAD)
    assert istioctl_main(["analyze", "--use-kube=false", str(good)]) == 0
    assert capsys.readouterr().err == \
        "\u2714 No validation issues found when analyzing namespace: default.\n"
    assert istioctl_main(["analyze", "--use-kube=false", "-f", str(bad)]) == 79
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == (
        'Error [IST0101] (VirtualService default/productpage) Referenced host+subset in '
        'destinationrule not found: "productpage+v9"')
    assert captured.err == ("Error: Analyzers found issues when analyzing namespace: default.\n"
                            "See https://istio.io/v1.20/docs/reference/config/analysis for "
                            "more information about causes and resolutions.\n")


# --- on a real local mesh -----------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str


class Terminal:
    """Each command runs as `python -m lablib.shims TOOL ARGS`, in the kit's folder."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def run(self, tool: str, *args: str, stdin: str = "") -> Result:
        done = subprocess.run([sys.executable, "-m", "lablib.shims", tool, *args], cwd=KIT_ROOT,
                              env=self.env, input=stdin, capture_output=True, text=True,
                              timeout=300)
        assert "Traceback" not in done.stderr
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, tool: str, *args: str, stdin: str = "") -> str:
        result = self.run(tool, *args, stdin=stdin)
        assert result.code == 0, f"{tool} {' '.join(args)} failed: {result.err}"
        return result.out


@contextmanager
def own_mesh_terminal(tmp_path_factory: pytest.TempPathFactory, name: str
                      ) -> Iterator[Terminal]:
    """A terminal whose commands use a mesh of their own (LAB_MESH), purged at the end."""
    state = tmp_path_factory.mktemp(name)
    env = dict(os.environ, LAB_MESH=f"{name}-{os.getpid()}", LAB_STATE_DIR=str(state),
               LAB_MESH_OWNER=str(os.getpid()))
    env.pop("LAB_BACKEND", None)
    terminal = Terminal(env)
    try:
        yield terminal
    finally:
        terminal.run("istioctl", "uninstall", "--purge", "-y")


@pytest.fixture(scope="module")
def term(tmp_path_factory: pytest.TempPathFactory):
    """Istio and Bookinfo with its gateway and destination rules, in a mesh of its own."""
    with own_mesh_terminal(tmp_path_factory, "shims-istioctl") as terminal:
        terminal.ok("istioctl", "install", "--set", "profile=demo", "-y")
        terminal.ok("kubectl", "create", "namespace", "bookinfo-test")
        terminal.ok("kubectl", "label", "ns", "bookinfo-test", "istio-injection=enabled")
        for path in ("platform/kube/bookinfo.yaml", "networking/bookinfo-gateway.yaml",
                     "networking/destination-rule-all.yaml"):
            terminal.ok("kubectl", "apply", "-n", "bookinfo-test", "-f",
                        f"samples/bookinfo/{path}")
        yield terminal


def table(text: str) -> list[list[str]]:
    """Rows of an istioctl table (cells are separated by at least five spaces)."""
    lines = text.splitlines()
    starts = [0] + [m.end() for m in re.finditer(r" {5,}(?=\S)", lines[0])]
    return [[line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
            for line in lines]


def pod(term: Terminal, selector: str, namespace: str) -> str:
    return term.ok("kubectl", "get", "pod", "-n", namespace, "-l", selector, "-o",
                   "jsonpath={.items[0].metadata.name}")


ENVOY = pytest.mark.envoy


@ENVOY
def test_proxy_status_lists_every_proxy_synced(term: Terminal) -> None:
    rows = table(term.ok("istioctl", "proxy-status"))
    assert rows[0] == ["NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD",
                       "VERSION"]
    names = [r[0] for r in rows[1:]]
    assert sum(n.endswith(".bookinfo-test") for n in names) == 6
    assert any(n.startswith("istio-ingressgateway-") and n.endswith(".istio-system")
               for n in names)
    assert all(r[2:4] == ["SYNCED", "SYNCED"] and r[8] == "1.20.3" for r in rows[1:])


@ENVOY
def test_proxy_config_clusters_endpoints_listeners(term: Terminal) -> None:
    page = pod(term, "app=productpage", "bookinfo-test")
    clusters = table(term.ok("istioctl", "proxy-config", "clusters", f"{page}.bookinfo-test"))
    assert clusters[0] == ["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE",
                           "DESTINATION RULE"]
    subsets = {r[2] for r in clusters if r[0] == "reviews.bookinfo-test.svc.cluster.local"}
    assert subsets == {"-", "v1", "v2", "v3"}
    assert all(r[5] == "reviews.bookinfo-test" for r in clusters
               if r[0] == "reviews.bookinfo-test.svc.cluster.local")
    endpoints = table(term.ok("istioctl", "pc", "endpoints", page, "-n", "bookinfo-test"))
    assert endpoints[0] == ["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"]
    reviews = [r for r in endpoints if r[3] == "outbound|9080||reviews.bookinfo-test.svc."
               "cluster.local"]
    assert len(reviews) == 3 and all(r[1] == "HEALTHY" for r in reviews)
    gateway = pod(term, "istio=ingressgateway", "istio-system")
    listeners = table(term.ok("istioctl", "proxy-config", "listeners",
                              f"{gateway}.istio-system"))
    assert listeners[0] == ["ADDRESS", "PORT", "MATCH", "DESTINATION"]
    assert any(r[3] == "Route: http.8080" for r in listeners)


@ENVOY
def test_proxy_config_filters_as_istioctl_does(term: Terminal) -> None:
    page = f'{pod(term, "app=productpage", "bookinfo-test")}.bookinfo-test'
    reviews = "reviews.bookinfo-test.svc.cluster.local"
    rows = table(term.ok("istioctl", "pc", "clusters", page, "--fqdn", reviews, "--subset",
                         "v2", "--direction", "outbound", "--port", "9080"))
    assert [r[:4] + r[5:] for r in rows[1:]] == [[reviews, "9080", "v2", "outbound",
                                                 "reviews.bookinfo-test"]]
    cluster = f"outbound|9080|v1|{reviews}"
    endpoints = table(term.ok("istioctl", "pc", "endpoints", page, "--cluster", cluster,
                              "--status", "healthy"))
    assert [r[3] for r in endpoints[1:]] == [cluster]
    address, _, port = endpoints[1][0].rpartition(":")
    same = table(term.ok("istioctl", "pc", "endpoints", page, "--address", address,
                         "--port", port))
    assert {r[0] for r in same[1:]} == {endpoints[1][0]}  # in the host's and v1's clusters
    assert cluster in {r[3] for r in same[1:]}
    assert table(term.ok("istioctl", "pc", "endpoints", page, "--cluster", cluster,
                         "--status", "UNHEALTHY"))[1:] == []
    gateway = f'{pod(term, "istio=ingressgateway", "istio-system")}.istio-system'
    routes = json.loads(term.ok("istioctl", "pc", "routes", gateway, "--name", "http.8080",
                                "-o", "json"))
    assert [r["name"] for r in routes] == ["http.8080"]
    listeners = table(term.ok("istioctl", "pc", "listeners", gateway, "--type", "HTTP"))
    assert listeners[1:] and all(r[3].startswith("Route: ") for r in listeners[1:])
    assert table(term.ok("istioctl", "pc", "listeners", gateway, "--type", "TCP"))[1:] == []
    wrong = term.run("istioctl", "pc", "routes", gateway, "--fqdn", reviews)
    assert wrong.code != 0 and "unknown flag: --fqdn" in wrong.err


@ENVOY
def test_proxy_config_json_is_istioctls_camel_case(term: Terminal) -> None:
    gateway = pod(term, "istio=ingressgateway", "istio-system")
    routes = json.loads(term.ok("istioctl", "proxy-config", "routes", f"{gateway}.istio-system",
                                "-o", "json"))
    http = next(r for r in routes if r["name"] == "http.8080")
    paths = [r["match"].get("path") for r in http["virtualHosts"][0]["routes"]]
    assert "/productpage" in paths
    secrets = term.ok("istioctl", "proxy-config", "secret", f"{gateway}.istio-system")
    assert secrets.splitlines()[0].split() == ["RESOURCE", "NAME", "TYPE", "STATUS", "VALID",
                                               "CERT", "SERIAL", "NUMBER", "NOT", "AFTER",
                                               "NOT", "BEFORE"]


@ENVOY
def test_analyze_the_mesh_plus_a_file(term: Terminal, tmp_path: Path) -> None:
    clean = term.run("istioctl", "analyze", "-n", "bookinfo-test")
    assert (clean.code, clean.out) == (0, "")
    broken = tmp_path / "reviews.yaml"
    broken.write_text(BAD.split("---\n")[1].replace("productpage", "reviews"))
    found = term.run("istioctl", "analyze", "-n", "bookinfo-test", str(broken))
    assert found.code == 79
    assert found.out.splitlines()[0] == (
        'Error [IST0101] (VirtualService bookinfo-test/reviews) Referenced host+subset in '
        'destinationrule not found: "reviews+v9"')
    assert "Error: Analyzers found issues when analyzing namespace: bookinfo-test." in found.err
    # Analysing a file applies nothing.
    missing = term.run("kubectl", "get", "vs", "reviews", "-n", "bookinfo-test")
    assert missing.code == 1


@ENVOY
def test_x_wait_version_and_envoy_dashboard(term: Terminal) -> None:
    waited = term.ok("istioctl", "x", "wait", "--for=distribution", "virtualservice",
                     "bookinfo.bookinfo-test")
    match = re.fullmatch(r"virtualservice bookinfo\.bookinfo-test present on (\d+) out of "
                         r"(\d+) sidecars\n", waited)
    assert match and match[1] == match[2] and int(match[1]) >= 8
    version = term.ok("istioctl", "version").splitlines()
    assert version == ["client version: 1.20.3", "control plane version: 1.20.3",
                       f"data plane version: 1.20.3 ({match[1]} proxies)"]
    page = pod(term, "app=productpage", "bookinfo-test")
    command = term.ok("istioctl", "dashboard", "envoy", f"{page}.bookinfo-test").split()
    assert command[:2] == ["curl", "--unix-socket"]
    ready = subprocess.run([*command[:-1], command[-1] + "ready"], capture_output=True,
                           text=True, timeout=10, check=True)
    assert ready.stdout.strip() == "LIVE"


@ENVOY
def test_install_again_with_pilot_env_and_verify(term: Terminal) -> None:
    out = term.ok("istioctl", "install", "--set", "profile=demo", "--set",
                  "values.pilot.env.ENABLE_TLS_ON_SIDECAR_INGRESS=true", "-y")
    assert out.splitlines()[-2:] == ["\u2714 Installation complete",
                                     "Made this installation the default for injection and "
                                     "validation."]
    verified = term.ok("istioctl", "verify-install")
    assert verified.splitlines()[-1] == "\u2714 Istio is installed and verified successfully"
    assert "\u2714 CustomResourceDefinition: virtualservices.networking.istio.io.istio-system " \
           "checked successfully" in verified
