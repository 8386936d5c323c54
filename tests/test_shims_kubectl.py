"""The kubectl shim: kubectl's output shapes and errors, and the walkthrough's commands
replayed through `python -m lablib.shims` against a real local mesh.

Golden texts are kubectl 1.28 output copied from the walkthrough the labs follow
(/work/shared/walkthrough/istio-practice-notes.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from lablib.shims import env as shim_env
from lablib.shims import kubectl as kubectl_shim
from lablib.shims import kubectl_main, podtools, printers
from lablib.shims.flags import Flag, UsageError, parse, split_command
from lablib.shims.kubectl import _selector, json_patch, merge_patch

KIT_ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2024, 3, 5, 12, 0, 0, tzinfo=UTC)
NODE = "ctrlnode-001"  # the walkthrough shortened a 12-character node name after printing


def stamp(seconds: int) -> str:
    return (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- output shapes against kubectl's ------------------------------------------------------------


def service(name: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "bookinfo-test",
                         "creationTimestamp": stamp(75 * 60)},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "selector": {"app": name},
                     "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}]},
            "status": {"loadBalancer": {}}}


def pod(name: str, ip: str) -> dict[str, Any]:
    names = [name.split("-")[0], "istio-proxy"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "bookinfo-test",
                         "creationTimestamp": stamp(75 * 60)},
            "spec": {"nodeName": NODE, "containers": [{"name": n, "image": "i"} for n in names]},
            "status": {"phase": "Running", "podIP": ip, "containerStatuses": [
                {"name": n, "ready": True, "restartCount": 0, "state": {"running": {}}}
                for n in names]}}


BOOKINFO_ITEMS = [
    service("details", "10.43.161.132"), service("ratings", "10.43.227.93"),
    service("reviews", "10.43.234.246"), service("productpage", "10.43.239.249"),
    pod("details-v1-698d88b-rbmpg", "10.42.0.19"), pod("reviews-v3-5b9bd44f4-bm2gr", "10.42.0.23"),
    pod("reviews-v1-5b5d6494f4-gbdln", "10.42.0.20"), pod("reviews-v2-5b667bcbf8-m78r7",
                                                          "10.42.0.22"),
    pod("ratings-v1-6484c4d9bb-mpl8c", "10.42.0.21"), pod("productpage-v1-675fc69cf-248gs",
                                                          "10.42.0.24"),
]
KUBECTL_BOOKINFO_WIDE = """\
NAME                  TYPE        CLUSTER-IP      EXTERNAL-IP   PORT(S)    AGE   SELECTOR
service/details       ClusterIP   10.43.161.132   <none>        9080/TCP   75m   app=details
service/ratings       ClusterIP   10.43.227.93    <none>        9080/TCP   75m   app=ratings
service/reviews       ClusterIP   10.43.234.246   <none>        9080/TCP   75m   app=reviews
service/productpage   ClusterIP   10.43.239.249   <none>        9080/TCP   75m   app=productpage

NAME                                 READY   STATUS    RESTARTS   AGE   IP           NODE           NOMINATED NODE   READINESS GATES
pod/details-v1-698d88b-rbmpg         2/2     Running   0          75m   10.42.0.19   ctrlnode-001   <none>           <none>
pod/reviews-v3-5b9bd44f4-bm2gr       2/2     Running   0          75m   10.42.0.23   ctrlnode-001   <none>           <none>
pod/reviews-v1-5b5d6494f4-gbdln      2/2     Running   0          75m   10.42.0.20   ctrlnode-001   <none>           <none>
pod/reviews-v2-5b667bcbf8-m78r7      2/2     Running   0          75m   10.42.0.22   ctrlnode-001   <none>           <none>
pod/ratings-v1-6484c4d9bb-mpl8c      2/2     Running   0          75m   10.42.0.21   ctrlnode-001   <none>           <none>
pod/productpage-v1-675fc69cf-248gs   2/2     Running   0          75m   10.42.0.24   ctrlnode-001   <none>           <none>"""  # noqa: E501

KUBECTL_GATEWAY_VS = """\
NAME                                           AGE
gateway.networking.istio.io/bookinfo-gateway   23s

NAME                                          GATEWAYS               HOSTS   AGE
virtualservice.networking.istio.io/bookinfo   ["bookinfo-gateway"]   ["*"]   22s"""

BOOKINFO_APPLY = """\
service/details created
serviceaccount/bookinfo-details created
deployment.apps/details-v1 created
service/ratings created
serviceaccount/bookinfo-ratings created
deployment.apps/ratings-v1 created
service/reviews created
serviceaccount/bookinfo-reviews created
deployment.apps/reviews-v1 created
deployment.apps/reviews-v2 created
deployment.apps/reviews-v3 created
service/productpage created
serviceaccount/bookinfo-productpage created
deployment.apps/productpage-v1 created
"""

ALL_V1_APPLY = """\
virtualservice.networking.istio.io/productpage created
virtualservice.networking.istio.io/reviews created
virtualservice.networking.istio.io/ratings created
virtualservice.networking.istio.io/details created
"""


def test_svc_pod_wide_matches_kubectl_character_for_character() -> None:
    assert printers.get_table(BOOKINFO_ITEMS, wide=True, now=NOW) == KUBECTL_BOOKINFO_WIDE


def test_one_kind_has_no_kind_prefix_and_no_wide_columns() -> None:
    text = printers.get_table(BOOKINFO_ITEMS[:2], now=NOW)
    assert text.splitlines() == [
        "NAME      TYPE        CLUSTER-IP      EXTERNAL-IP   PORT(S)    AGE",
        "details   ClusterIP   10.43.161.132   <none>        9080/TCP   75m",
        "ratings   ClusterIP   10.43.227.93    <none>        9080/TCP   75m",
    ]


def test_all_namespaces_adds_namespace_column_and_no_headers_drops_the_header() -> None:
    text = printers.get_table(BOOKINFO_ITEMS[:1], all_namespaces=True, now=NOW)
    assert text.splitlines()[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP",
                                            "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert printers.get_table(BOOKINFO_ITEMS[:1], headers=False, now=NOW).startswith("details")


def test_secret_and_configmap_columns() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": "httpbin-credential", "namespace": "istio-system",
                           "creationTimestamp": stamp(5)},
              "data": {"tls.crt": "eA==", "tls.key": "eA=="}}
    assert printers.get_table([secret], now=NOW).splitlines() == [
        "NAME                 TYPE                DATA   AGE",
        "httpbin-credential   kubernetes.io/tls   2      5s",
    ]


def test_output_name_json_and_yaml_wrap_several_objects_in_a_list() -> None:
    items = BOOKINFO_ITEMS[:2]
    assert printers.output("name", items, single=False) == "service/details\nservice/ratings\n"
    listed = json.loads(printers.output("json", items, single=False))
    assert listed["kind"] == "List" and listed["apiVersion"] == "v1"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["details", "ratings"]
    one = printers.output("json", items[:1], single=True)
    assert json.loads(one)["kind"] == "Service"
    assert one.startswith('{\n    "apiVersion": "v1",\n    "kind": "Service",')  # 4 spaces
    assert yaml.safe_load(printers.output("yaml", items, single=False))["kind"] == "List"
    virtual_service = {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                       "metadata": {"name": "reviews"}}
    assert printers.name_of(virtual_service) == "virtualservice.networking.istio.io/reviews"


def test_jsonpath_and_custom_columns_outputs() -> None:
    assert printers.output("jsonpath={.items[*].metadata.name}", BOOKINFO_ITEMS[:2],
                           single=False) == "details ratings"
    text = printers.output("custom-columns=NAME:.metadata.name,IP:.spec.clusterIP",
                           BOOKINFO_ITEMS[:2], single=False)
    assert text.splitlines() == ["NAME      IP", "details   10.43.161.132",
                                 "ratings   10.43.227.93"]
    with pytest.raises(UsageError, match='output format "frob"'):
        printers.output("frob", BOOKINFO_ITEMS[:1], single=True)


def test_istio_operator_columns_are_the_crds_printer_columns() -> None:
    operator = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                "metadata": {"name": "installed-state", "namespace": "istio-system",
                             "creationTimestamp": stamp(17 * 3600)},
                "spec": {"profile": "demo"}}
    assert printers.get_table([operator], all_namespaces=True, now=NOW).splitlines() == [
        "NAMESPACE      NAME              REVISION   STATUS   AGE",
        "istio-system   installed-state                       17h",
    ]


def test_exec_gets_a_busybox_like_nc_only_when_it_runs_nc(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert podtools.exec_path(["curl", "-s", "http://httpbin:8000/get"], "/usr/bin:/bin") == \
        "/usr/bin:/bin"
    path = podtools.exec_path(["sh", "-c", "(date; sleep 1) | nc 127.0.0.1 31400"],
                              "/usr/bin:/bin")
    folder = podtools.tools_dir()
    if folder is None:
        assert path == "/usr/bin:/bin"  # no nc, or one that hangs up by itself
        return
    assert path == f"{folder}:/usr/bin:/bin"
    script = (folder / "nc").read_text()
    assert script.startswith("#!/bin/sh\n") and script.rstrip().endswith('-N "$@"')
    assert os.access(folder / "nc", os.X_OK)


def test_tabwrite_follows_go_tabwriter_blocks() -> None:
    # kubectl describe: a line without tabs ends a column block; the last cell is not padded.
    text = printers.tabwrite("Name:\tx\nService Account:\ty\nIPs:\n  IP:\t1\nControlled By:\tz",
                             0, 2)
    assert text.splitlines() == ["Name:             x", "Service Account:  y", "IPs:",
                                 "  IP:           1", "Controlled By:  z"]


def test_describe_service_matches_kubectl_layout() -> None:
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system",
                        "labels": {"app": "istio-ingressgateway", "istio": "ingressgateway"}},
           "spec": {"type": "LoadBalancer", "clusterIP": "10.43.114.120",
                    "selector": {"app": "istio-ingressgateway", "istio": "ingressgateway"},
                    "ports": [{"name": "http2", "port": 80, "targetPort": 8080,
                               "nodePort": 31783, "protocol": "TCP"}]},
           "status": {"loadBalancer": {"ingress": [{"ip": "172.19.106.241"}]}}}
    text = printers.describe(svc, {"8080": ["10.42.0.12:8080"]})
    # Lines as the walkthrough's `kubectl describe svc -n istio-system istio-ingressgateway`.
    for line in ["Name:                     istio-ingressgateway",
                 "Labels:                   app=istio-ingressgateway",
                 "                          istio=ingressgateway",
                 "Selector:                 app=istio-ingressgateway,istio=ingressgateway",
                 "Type:                     LoadBalancer",
                 "LoadBalancer Ingress:     172.19.106.241",
                 "Port:                     http2  80/TCP",
                 "TargetPort:               8080/TCP",
                 "NodePort:                 http2  31783/TCP",
                 "Endpoints:                10.42.0.12:8080"]:
        assert line in text.splitlines()


# --- command lines --------------------------------------------------------------------------


FLAGS = [Flag("namespace", "n"), Flag("output", "o"), Flag("stdin", "i", "bool"),
         Flag("tty", "t", "bool"), Flag("from-file", kind="list"),
         Flag("cascade", optional="background")]


@pytest.mark.parametrize("argv", [
    ["-n", "ns"], ["-nns"], ["-n=ns"], ["--namespace", "ns"], ["--namespace=ns"],
])
def test_pflag_value_forms(argv: list[str]) -> None:
    assert parse(["get", *argv, "pods"], FLAGS).values["namespace"] == "ns"


def test_pflag_clusters_lists_optional_values_and_double_dash() -> None:
    parsed = parse(["pod", "-it", "-owide", "--from-file=a", "--from-file", "b", "--cascade",
                    "--", "curl", "-s", "-n"], FLAGS)
    assert parsed.values["stdin"] and parsed.values["tty"]
    assert parsed.values["output"] == "wide"
    assert parsed.values["from-file"] == ["a", "b"]
    assert parsed.values["cascade"] == "background"
    assert parsed.args == ["pod"] and parsed.command == ["curl", "-s", "-n"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--frob"], "unknown flag: --frob"),
    (["-z"], "unknown shorthand flag: 'z' in -z"),
    (["-n"], "flag needs an argument: 'n' in -n"),
    (["--namespace"], "flag needs an argument: --namespace"),
    (["--stdin=maybe"], 'invalid argument "maybe" for "--stdin" flag'),
])
def test_pflag_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse(argv, FLAGS)


def test_verb_found_after_global_flags() -> None:
    assert split_command(["-n", "istio-system", "get", "svc"], FLAGS[:1]) == (
        "get", ["-n", "istio-system", "svc"])


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("app=sleep", {"app": "sleep"}, True), ("app=sleep", {"app": "x"}, False),
    ("app!=sleep", {"app": "x"}, True), ("app", {"app": "x"}, True), ("!app", {}, True),
    ("app in (a,b),version", {"app": "b", "version": "v1"}, True),
    ("app notin (a,b)", {"app": "b"}, False), ("app==a", {"app": "a"}, True),
])
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert _selector(selector)(labels) is expected


def test_merge_patches() -> None:
    svc = {"spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80}]}}
    assert merge_patch(svc, {"spec": {"type": "NodePort", "selector": None}}) == {
        "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80}]}}
    custom = {"spec": {"ports": [{"name": "custom-port", "port": 3000, "targetPort": 8080}]}}
    # merge replaces the list; strategic merges its items by `port`, as Kubernetes does.
    assert merge_patch(svc, custom)["spec"]["ports"] == custom["spec"]["ports"]
    assert [p["port"] for p in merge_patch(svc, custom, strategic=True)["spec"]["ports"]] == [
        80, 3000]


def test_json_patches() -> None:
    svc = {"spec": {"ports": [{"name": "http", "port": 80}]}}
    out = json_patch(svc, [
        {"op": "add", "path": "/spec/ports/-", "value": {"name": "custom-port", "port": 3000}},
        {"op": "replace", "path": "/spec/ports/0/port", "value": 8080},
        {"op": "test", "path": "/spec/ports/1/name", "value": "custom-port"},
        {"op": "copy", "from": "/spec/ports/0", "path": "/spec/first"},
        {"op": "remove", "path": "/spec/first/name"},
    ])
    assert out == {"spec": {"ports": [{"name": "http", "port": 8080},
                                      {"name": "custom-port", "port": 3000}],
                            "first": {"port": 8080}}}
    assert svc["spec"]["ports"][0]["port"] == 80  # the input is left alone


# --- bad input: kubectl's errors, never a traceback --------------------------------------------


@pytest.fixture
def no_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A mesh name and state folder where no mesh runs."""
    monkeypatch.setenv("LAB_MESH", f"shims-absent-{os.getpid()}")
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LAB_BACKEND", raising=False)
    return tmp_path


@pytest.mark.parametrize(("argv", "stderr"), [
    (["frob"], 'error: unknown command "frob" for "kubectl"\n'),
    (["get", "podz"], 'error: the server doesn\'t have a resource type "podz"\n'),
    (["get", "pods", "--frob"], "error: unknown flag: --frob\n"
                                "See 'kubectl get --help' for usage.\n"),
    (["-n"], "error: flag needs an argument: 'n' in -n\nSee 'kubectl --help' for usage.\n"),
    (["--frob"], "error: unknown flag: --frob\nSee 'kubectl --help' for usage.\n"),
    (["get", "pods", "-n"], "error: flag needs an argument: 'n' in -n\n"
                            "See 'kubectl get --help' for usage.\n"),
    (["get"], 'error: You must specify the type of resource to get. Use "kubectl '
              'api-resources" for a complete list of supported resources.\n'
              "See 'kubectl get --help' for usage.\n"),
    (["apply", "-n", "x"], "error: must specify one of -f and -k\n"
                           "See 'kubectl apply --help' for usage.\n"),
    (["apply", "-f", "no/such/file.yaml"], 'error: the path "no/such/file.yaml" does not '
                                           "exist\n"),
    (["create", "secret", "tls", "cred", "--cert", "a.crt"],
     "error: requires both --cert and --key\nSee 'kubectl create --help' for usage.\n"),
    (["exec", "pod-x", "-n", "ns"], "error: you must specify at least one command for the "
                                    "container\nSee 'kubectl exec --help' for usage.\n"),
    (["delete", "svc", "-n", "x", "--frob"], "error: unknown flag: --frob\n"
                                             "See 'kubectl delete --help' for usage.\n"),
])
def test_bad_command_lines(no_mesh: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                           stderr: str) -> None:
    assert kubectl_main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err == stderr
    assert captured.out == ""


def test_a_mesh_that_is_not_running_is_said_so(no_mesh: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert kubectl_main(["get", "pods", "-n", "bookinfo-test"]) == 1
    err = capsys.readouterr().err
    assert "was refused: it is not running" in err
    assert "istioctl install --set profile=demo -y" in err
    assert not (no_mesh / "state" / os.environ["LAB_MESH"] / "meshd.sock").exists()


def test_urls_are_offline_except_the_istio_addons(no_mesh: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Istio's addon URLs apply the kit's samples/addons files; other URLs are refused."""
    applied: list[Any] = []

    class Recorder:
        def apply(self, sources: Any, namespace: str | None = None) -> list[str]:
            applied.extend(sources)
            return ["deployment.apps/x created"]

    monkeypatch.setattr(kubectl_shim, "connect", lambda start=False: Recorder())
    addon = ("https://raw.githubusercontent.com/istio/istio/release-1.20/samples/addons/"
             "NAME.yaml")
    for name in ("prometheus", "grafana", "kiali"):
        assert kubectl_main(["apply", "-f", addon.replace("NAME", name)]) == 0
        assert applied.pop() == str(KIT_ROOT / "samples" / "addons" / f"{name}.yaml")
    capsys.readouterr()
    assert kubectl_main(["apply", "-f", addon.replace("NAME", "jaeger")]) == 0
    assert capsys.readouterr().out == ("addon/jaeger skipped (no local equivalent: the local "
                                       "mesh has no tracing or log backend)\n")
    assert kubectl_main(["apply", "-f", "https://example.com/app.yaml"]) == 1
    assert 'unable to read URL "https://example.com/app.yaml"' in capsys.readouterr().err


def test_no_traceback_for_an_unexpected_failure(no_mesh: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr("lablib.shims.kubectl.connect", broken)
    assert kubectl_main(["get", "pods"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: internal error in the lablib shim: RuntimeError: boom")
    assert "Traceback" not in err


def test_help_and_version_need_no_mesh(no_mesh: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert kubectl_main([]) == 0
    assert "kubectl get KIND" in capsys.readouterr().out
    assert kubectl_main(["version", "--client"]) == 0
    assert capsys.readouterr().out.startswith("Client Version: ")


# --- the kubernetes backend and the shim folder ---------------------------------------------------


def test_kubernetes_backend_passes_through_to_the_real_tool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real = tmp_path / "bin" / "kubectl"
    real.parent.mkdir()
    real.write_text('#!/bin/sh\necho "real kubectl: $*"\nexit 7\n')
    real.chmod(0o755)
    shims = shim_env.shim_dir()
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{real.parent}{os.pathsep}/usr/bin:/bin")
    monkeypatch.setenv("LAB_BACKEND", "kubernetes")
    result = subprocess.run([str(shims / "kubectl"), "get", "pods", "-n", "x"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 7
    assert result.stdout == "real kubectl: get pods -n x\n"


def test_kubernetes_backend_without_a_real_tool_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", f"{shim_env.shim_dir()}{os.pathsep}{tmp_path}")
    monkeypatch.setenv("LAB_BACKEND", "kubernetes")
    assert kubectl_main(["get", "pods"]) == 1
    assert "no real kubectl is on PATH" in capsys.readouterr().err


def test_env_prints_exports_and_writes_executable_shims(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("LAB_MESH", "alice")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shim_env.env_main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    folder = shim_env.shim_dir()
    assert lines[0] == f"export PATH={folder}:/usr/bin:/bin"
    assert "export LAB_MESH=alice" in lines
    for tool in ("kubectl", "istioctl"):
        script = folder / tool
        assert script.stat().st_mode & 0o777 == 0o755
        assert f"-m lablib.shims {tool}" in script.read_text()
        assert shim_env.is_shim(script)
    assert folder.stat().st_mode & 0o777 == 0o755


def test_install_in_kernel_puts_the_shims_first_once(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("LAB_MESH_OWNER", raising=False)
    folder = shim_env.install_in_kernel()
    shim_env.install_in_kernel()
    assert os.environ["PATH"] == f"{folder}:/usr/bin:/bin"
    assert os.environ["LAB_MESH_OWNER"] == str(os.getpid())
    assert shutil.which("kubectl") == str(folder / "kubectl")


def test_shell_puts_the_shims_first_and_leaving_restores_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("SHELL", "/bin/sh")
    before = os.environ["PATH"]
    assert shim_env.shell_main(["-c", "command -v kubectl; command -v istioctl"]) == 0
    out = capfd.readouterr().out.splitlines()
    assert out == [str(shim_env.shim_dir() / "kubectl"), str(shim_env.shim_dir() / "istioctl")]
    assert os.environ["PATH"] == before


# --- the walkthrough, typed as written, on a real local mesh -------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str


class Terminal:
    """A learner's terminal: each command runs as `python -m lablib.shims TOOL ARGS`."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def run(self, tool: str, *args: str, stdin: str = "") -> Result:
        argv = [sys.executable, "-m", "lablib.shims", tool, *args] if tool in (
            "kubectl", "istioctl") else [tool, *args]
        done = subprocess.run(argv, cwd=KIT_ROOT, env=self.env, input=stdin,
                              capture_output=True, text=True, timeout=300)
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, tool: str, *args: str, stdin: str = "") -> str:
        result = self.run(tool, *args, stdin=stdin)
        assert result.code == 0, f"{tool} {' '.join(args)} failed: {result.err}"
        assert "Traceback" not in result.err
        return result.out


@pytest.fixture(scope="module")
def term(tmp_path_factory: pytest.TempPathFactory):
    """A terminal with its own mesh (LAB_MESH), which ends with this test process at worst."""
    state = tmp_path_factory.mktemp("shims-kubectl")
    env = dict(os.environ, LAB_MESH=f"shims-kubectl-{os.getpid()}", LAB_STATE_DIR=str(state),
               LAB_MESH_OWNER=str(os.getpid()), XDG_CACHE_HOME=str(state / "cache"))
    env.pop("LAB_BACKEND", None)
    terminal = Terminal(env)
    try:
        yield terminal
    finally:
        terminal.run("istioctl", "uninstall", "--purge", "-y")


def blocks(text: str) -> list[list[str]]:
    return [block.splitlines() for block in text.strip("\n").split("\n\n")]


def aligned(block: list[str]) -> list[list[str]]:
    """Cells cut at the header's column starts, asserting every row starts each cell there
    (a space before it, text at it), as kubectl's tabwriter aligns them."""
    header = block[0]
    starts = [0] + [m.end() for m in re.finditer(r" {3,}(?=\S)", header)]
    rows = []
    for line in block:
        for start in starts[1:]:
            assert line[start - 1] == " " and line[start] != " ", f"misaligned: {line!r}"
        rows.append([line[a:b].strip() for a, b in zip(starts, [*starts[1:], None],
                                                       strict=True)])
    return rows


ENVOY = pytest.mark.envoy


@ENVOY
def test_walkthrough_01_install(term: Terminal) -> None:
    assert term.ok("istioctl", "install", "--set", "profile=demo", "-y") == (
        "\u2714 Istio core installed\n\u2714 Istiod installed\n"
        "\u2714 Ingress gateways installed\n\u2714 Egress gateways installed\n"
        "\u2714 Installation complete\n"
        "Made this installation the default for injection and validation.\n")
    out = term.ok("istioctl", "verify-install", "--revision", "default")
    assert "\u2714 Deployment: istio-ingressgateway.istio-system checked successfully" in out
    assert out.endswith("Checked 3 Istio Deployments\n"
                        "\u2714 Istio is installed and verified successfully\n")


@ENVOY
def test_walkthrough_02_namespace_and_bookinfo(term: Terminal) -> None:
    assert term.ok("kubectl", "create", "ns", "bookinfo-test") == \
        "namespace/bookinfo-test created\n"
    assert term.ok("kubectl", "label", "namespace", "bookinfo-test",
                   "istio-injection=enabled") == "namespace/bookinfo-test labeled\n"
    assert term.ok("kubectl", "apply", "-n", "bookinfo-test", "-f",
                   "samples/bookinfo/platform/kube/bookinfo.yaml") == BOOKINFO_APPLY
    pods = json.loads(term.ok("kubectl", "get", "pods", "-n", "bookinfo-test", "-o", "json"))
    assert len(pods["items"]) == 6
    assert all(len(p["spec"]["containers"]) == 2 for p in pods["items"])  # sidecars injected


@ENVOY
def test_walkthrough_03_istio_system_tables(term: Terminal) -> None:
    services, pods, deployments = blocks(term.ok("kubectl", "get", "svc,pod,deploy", "-n",
                                                 "istio-system", "-owide"))
    svc_rows = aligned(services)
    assert svc_rows[0] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE",
                           "SELECTOR"]
    ingress = next(r for r in svc_rows if r[0] == "service/istio-ingressgateway")
    assert ingress[1] == "LoadBalancer"
    assert re.fullmatch(r"15021:\d+/TCP,80:\d+/TCP,443:\d+/TCP,31400:\d+/TCP,15443:\d+/TCP",
                        ingress[4])
    assert ingress[6] == "app=istio-ingressgateway,istio=ingressgateway"
    pod_rows = aligned(pods)
    assert pod_rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE",
                           "NOMINATED NODE", "READINESS GATES"]
    assert {r[0].rsplit("-", 2)[0] for r in pod_rows[1:]} == {
        "pod/istiod", "pod/istio-ingressgateway", "pod/istio-egressgateway"}
    assert all(r[1:3] == ["1/1", "Running"] for r in pod_rows[1:])
    deploy_rows = aligned(deployments)
    assert deploy_rows[0] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS",
                              "IMAGES", "SELECTOR"]
    assert ["deployment.apps/istiod", "1/1", "1", "1"] == [
        r for r in deploy_rows if r[0] == "deployment.apps/istiod"][0][:4]


@ENVOY
def test_walkthrough_04_gateway(term: Terminal) -> None:
    assert term.ok("kubectl", "apply", "-n", "bookinfo-test", "-f",
                   "samples/bookinfo/networking/bookinfo-gateway.yaml") == (
        "gateway.networking.istio.io/bookinfo-gateway created\n"
        "virtualservice.networking.istio.io/bookinfo created\n")
    out = term.ok("kubectl", "get", "gateway,virtualservice", "-n", "bookinfo-test", "-owide")
    ages = re.compile(r"(?m)(?<=   )\d+[smh]\d*[smh]?$")
    assert ages.sub("AGE", out) == ages.sub("AGE", KUBECTL_GATEWAY_VS) + "\n"


@ENVOY
def test_walkthrough_05_ingress_lookups_and_productpage(term: Terminal) -> None:
    service = ["-n", "istio-system", "get", "service", "istio-ingressgateway", "-o"]
    # The load balancer's address when the mesh may bind ports below 1024, else nothing (as
    # on a cluster without one), and the NodePort is the way in either way.
    external = term.ok("kubectl", *service, "jsonpath={.status.loadBalancer.ingress[0].ip}")
    assert re.fullmatch(r"(127\.200\.\d+\.\d+)?", external), external
    assert term.ok("kubectl", *service,
                   'jsonpath={.spec.ports[?(@.name=="http2")].port}') == "80"
    assert term.ok("kubectl", *service, 'jsonpath={.spec.ports[?(@.name=="tcp")].port}') == \
        "31400"
    node_port = term.ok("kubectl", *service, 'jsonpath={.spec.ports[?(@.name=="http2")]'
                                             '.nodePort}')
    ports = json.loads(term.ok("kubectl", *service, "json"))["spec"]["ports"]
    assert int(node_port) == next(p["nodePort"] for p in ports if p["name"] == "http2")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    code = term.ok("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                   f"http://127.0.0.1:{node_port}/productpage")
    assert code == "200"


@ENVOY
def test_walkthrough_06_destination_rules_and_routing(term: Terminal) -> None:
    out = term.ok("kubectl", "apply", "-n", "bookinfo-test", "-f",
                  "samples/bookinfo/networking/destination-rule-all.yaml")
    assert sorted(out.splitlines()) == [f"destinationrule.networking.istio.io/{n} created"
                                        for n in ("details", "productpage", "ratings",
                                                  "reviews")]
    assert term.ok("kubectl", "apply", "-n", "bookinfo-test", "-f",
                   "samples/bookinfo/networking/virtual-service-all-v1.yaml") == ALL_V1_APPLY
    assert term.ok("kubectl", "apply", "-n", "bookinfo-test", "-f",
                   "samples/bookinfo/networking/virtual-service-reviews-test-v2.yaml") == \
        "virtualservice.networking.istio.io/reviews configured\n"


def productpage(term: Terminal) -> str:
    name = term.ok("kubectl", "get", "pod", "-l", "app=productpage", "-n", "bookinfo-test",
                   "-o", "jsonpath={.items..metadata.name}")
    assert re.fullmatch(r"productpage-v1-\w+-\w+", name)
    return name


@ENVOY
def test_walkthrough_07_exec_curl_goes_through_the_sidecar(term: Terminal) -> None:
    pod = productpage(term)
    ask = ["exec", pod, "-c", "productpage", "-n", "bookinfo-test", "--", "curl", "-s"]
    url = "http://reviews:9080/reviews/0"
    assert json.loads(term.ok("kubectl", *ask, url))["version"] == "v1"
    assert json.loads(term.ok("kubectl", *ask, "-H", "end-user: jason", url))["version"] == "v2"
    failed = term.run("kubectl", "exec", pod, "-n", "bookinfo-test", "--", "sh", "-c", "exit 3")
    assert failed.code == 3 and failed.err.endswith("command terminated with exit code 3\n")


@ENVOY
def test_walkthrough_08_pilot_agent_stats(term: Terminal) -> None:
    out = term.ok("kubectl", "exec", "-n", "bookinfo-test", productpage(term), "-c",
                  "istio-proxy", "--", "pilot-agent", "request", "GET", "stats")
    pending = [line for line in out.splitlines() if "reviews" in line and "pending" in line]
    assert any(line.startswith("cluster.outbound|9080||reviews.bookinfo-test.svc.cluster.local"
                               ".upstream_rq_pending_total: ") for line in pending)


@ENVOY
def test_walkthrough_09_proxy_config_routes_and_analyze(term: Terminal) -> None:
    gateway = term.ok("kubectl", "get", "pod", "-n", "istio-system", "-l",
                      "istio=ingressgateway", "-o", "jsonpath={.items[0].metadata.name}")
    rows = aligned(term.ok("istioctl", "proxy-config", "routes",
                           f"{gateway}.istio-system").splitlines())
    assert rows[0] == ["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]
    assert ["http.8080", "*:8080", "*", "/productpage", "bookinfo.bookinfo-test"] in rows
    assert ["http.8080", "*:8080", "*", "/static*", "bookinfo.bookinfo-test"] in rows
    result = term.run("istioctl", "analyze", "-n", "bookinfo-test")
    assert result.code == 0
    assert result.err == "\u2714 No validation issues found when analyzing namespace: " \
                         "bookinfo-test.\n"


TIMEOUTS = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - fault:
      delay:
        percent: 100
        fixedDelay: 2s
    route:
    - destination:
        host: ratings
        subset: v1
"""

WEIGHTS_90 = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v3}
      weight: 40
"""


@ENVOY
def test_walkthrough_10_heredoc_apply(term: Terminal) -> None:
    assert term.ok("kubectl", "apply", "-n", "bookinfo-test", "-f", "-", stdin=TIMEOUTS) == (
        "virtualservice.networking.istio.io/reviews configured\n"
        "virtualservice.networking.istio.io/ratings configured\n")
    delay = term.ok("kubectl", "get", "vs", "ratings", "-n", "bookinfo-test", "-o",
                    "jsonpath={.spec.http[0].fault.delay.fixedDelay}")
    assert delay == "2s"


@ENVOY
def test_walkthrough_11_bad_input_is_refused_and_traffic_goes_on(term: Terminal) -> None:
    refused = term.run("kubectl", "apply", "-n", "bookinfo-test", "-f", "-", stdin=WEIGHTS_90)
    assert refused.code == 1 and refused.out == ""
    assert "Error [LAB0201] (VirtualService bookinfo-test/reviews at spec.http[0].route)" in \
        refused.err
    missing = term.run("kubectl", "get", "svc", "nope", "-n", "bookinfo-test")
    assert (missing.code, missing.err) == (1, 'Error from server (NotFound): services "nope" '
                                              "not found\n")
    subset = term.ok("kubectl", "get", "vs", "reviews", "-n", "bookinfo-test", "-o",
                     "jsonpath={.spec.http[0].route[0].destination.subset}")
    assert subset == "v2"  # the last good config stays


@ENVOY
def test_walkthrough_12_delete_twice_as_the_fault_cleanup_does(term: Terminal) -> None:
    net = "samples/bookinfo/networking/"
    term.ok("kubectl", "apply", "-n", "bookinfo-test", "-f",
            net + "virtual-service-ratings-test-delay.yaml")
    assert term.ok("kubectl", "delete", "-n", "bookinfo-test", "-f",
                   net + "virtual-service-ratings-test-delay.yaml") == \
        'virtualservice.networking.istio.io "ratings" deleted\n'
    again = term.run("kubectl", "delete", "-n", "bookinfo-test", "-f",
                     net + "virtual-service-ratings-test-abort.yaml")
    assert again.code == 1
    assert again.err == ('Error from server (NotFound): error when deleting "'
                         f'{net}virtual-service-ratings-test-abort.yaml": '
                         'virtualservices.networking.istio.io "ratings" not found\n')


ADD_PORT = """\
import sys, yaml
path = sys.argv[1]
lines = [line for line in open(path) if not line.startswith("#")]
service = yaml.safe_load("".join(lines))
service["spec"]["ports"].append(
    {"name": "custom-port", "port": 3000, "protocol": "TCP", "targetPort": 8080})
open(path, "w").write(yaml.safe_dump(service))
"""


@ENVOY
def test_walkthrough_13_edit_adds_a_gateway_port(term: Terminal, tmp_path: Path) -> None:
    editor = tmp_path / "add_port.py"
    editor.write_text(ADD_PORT)
    env = dict(term.env, EDITOR=f"{sys.executable} {editor}")
    edited = subprocess.run([sys.executable, "-m", "lablib.shims", "kubectl", "edit", "svc",
                             "istio-ingressgateway", "-n", "istio-system"], cwd=KIT_ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert (edited.returncode, edited.stdout) == (0, "service/istio-ingressgateway edited\n"), \
        edited.stderr
    port = term.ok("kubectl", "-n", "istio-system", "get", "service", "istio-ingressgateway",
                   "-o", 'jsonpath={.spec.ports[?(@.name=="custom-port")].port}')
    assert port == "3000"
    unchanged = subprocess.run([sys.executable, "-m", "lablib.shims", "kubectl", "edit", "svc",
                                "istio-ingressgateway", "-n", "istio-system"], cwd=KIT_ROOT,
                               env=dict(term.env, EDITOR="true"), capture_output=True,
                               text=True, timeout=300)
    assert unchanged.stdout == "Edit cancelled, no changes made.\n"


@ENVOY
def test_walkthrough_14_cp_logs_and_describe(term: Terminal, tmp_path: Path) -> None:
    pod = productpage(term)
    source = tmp_path / "client.key"
    source.write_text("not really a key\n")
    target = tmp_path / "in-pod"
    term.ok("kubectl", "cp", str(source), f"bookinfo-test/{pod}:{target}/", "-c", "productpage")
    assert (target / "client.key").read_text() == "not really a key\n"
    logs = term.ok("kubectl", "logs", pod, "-n", "bookinfo-test", "-c", "productpage")
    assert "productpage listening on 127.0.0.1:" in logs
    described = term.ok("kubectl", "describe", "pod", "-n", "bookinfo-test", "productpage")
    assert described.splitlines()[0] == f"Name:             {pod}"
    assert "  istio-proxy:" in described.splitlines()


@ENVOY
def test_walkthrough_15_the_shim_script_on_path(term: Terminal) -> None:
    folder = subprocess.run([sys.executable, "-c", "from lablib.shims import shim_dir; "
                             "print(shim_dir())"], env=term.env, capture_output=True, text=True,
                            check=True).stdout.strip()
    env = dict(term.env, PATH=f"{folder}{os.pathsep}{term.env['PATH']}")
    out = subprocess.run(["sh", "-c", "kubectl get ns bookinfo-test -o name"], env=env,
                         capture_output=True, text=True, timeout=120).stdout
    assert out == "namespace/bookinfo-test\n"


@ENVOY
def test_walkthrough_16_uninstall(term: Terminal) -> None:
    out = term.ok("istioctl", "uninstall", "--purge", "-y")
    assert "  Removed Deployment:istio-system:istiod.\n" in out
    assert out.endswith("\u2714 Uninstall complete\n")
    gone = term.run("kubectl", "get", "pods", "-n", "bookinfo-test")
    assert gone.code == 1 and "it is not running" in gone.err
