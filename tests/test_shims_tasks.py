"""What Istio's task pages type beyond the walkthrough (issue #14), item by item, without a
mesh: `kubectl wait --for=…`, `apply -l`, apiVersion conversion on read, Services' addresses,
the certificate makefile. The task pages replayed on a real mesh are in
tests/test_shims_task_replay.py."""

from __future__ import annotations

import copy
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lablib import certs
from lablib.apps import mongo_wire, mongodb
from lablib.config import ConfigStore, load
from lablib.local import loadbalancer, podnet
from lablib.local.views import MeshViews
from lablib.shims import kubectl as kubectl_shim
from lablib.shims import kubectl_main, printers

Item = dict[str, Any]
KIT_ROOT = Path(__file__).resolve().parent.parent


class FakeMesh:
    """The part of LocalBackend the read-only verbs use: objects by kind, changeable while a
    command waits."""

    def __init__(self, *items: Item):
        self.items = [copy.deepcopy(i) for i in items]
        self.lock = threading.Lock()

    def get(self, kind: str, name: str | None = None, namespace: str | None = None,
            selector: dict[str, str] | None = None) -> list[Item]:
        with self.lock:
            return [copy.deepcopy(i) for i in self.items if i["kind"] == kind
                    and name in (None, i["metadata"]["name"])
                    and namespace in (None, i["metadata"].get("namespace"))]

    def apply(self, source: Any, namespace: str | None = None) -> list[str]:
        self.applied = list(source)
        return [f"{b['kind'].lower()}/{b['metadata']['name']} created" for b in source]

    def later(self, seconds: float, change: Any) -> None:
        def run() -> None:
            time.sleep(seconds)
            with self.lock:
                change(self.items)
        threading.Thread(target=run, daemon=True).start()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeMesh:
    mesh = FakeMesh()
    monkeypatch.setattr(kubectl_shim, "connect", lambda start=False: mesh)
    return mesh


def deployment(name: str, available: bool, ns: str = "default") -> Item:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"replicas": 1},
            "status": {"phase": "x", "conditions": [
                {"type": "Available", "status": "True" if available else "False"}]}}


def virtual_service(name: str, ns: str = "default") -> Item:
    return {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
            "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": name}}]}]}}


# --- item 2: kubectl wait --------------------------------------------------------------------


def test_wait_for_create_waits_until_the_object_exists(
        fake: FakeMesh, capsys: pytest.CaptureFixture[str]) -> None:
    fake.later(0.5, lambda items: items.append(virtual_service("reviews")))
    began = time.monotonic()
    assert kubectl_main(["wait", "--for=create", "vs/reviews", "--timeout=10s"]) == 0
    assert time.monotonic() - began >= 0.4
    assert capsys.readouterr().out == (
        "virtualservice.networking.istio.io/reviews condition met\n")


def test_wait_for_delete_waits_until_the_object_is_gone(
        fake: FakeMesh, capsys: pytest.CaptureFixture[str]) -> None:
    fake.items.append(deployment("ratings", True))
    fake.later(0.5, lambda items: items.clear())
    assert kubectl_main(["wait", "--for=delete", "deploy/ratings", "--timeout=10s"]) == 0
    assert capsys.readouterr().out == "deployment.apps/ratings condition met\n"
    # Already gone: nothing to wait for.
    assert kubectl_main(["wait", "--for=delete", "deploy/ratings", "--timeout=1s"]) == 0


@pytest.mark.parametrize("condition", ["jsonpath={.status.conditions[0].status}=True",
                                       "jsonpath={.metadata.labels.app}",
                                       "condition=available", "condition=Available=true"])
def test_wait_for_jsonpath_and_conditions_on_any_kind(
        fake: FakeMesh, capsys: pytest.CaptureFixture[str], condition: str) -> None:
    fake.items.append(deployment("ratings", False))

    def become_available(items: list[Item]) -> None:
        items[:] = [deployment("ratings", True)]

    fake.later(0.3, become_available)
    assert kubectl_main(["wait", f"--for={condition}", "deployment", "ratings",
                         "--timeout=10s"]) == 0
    assert capsys.readouterr().out == "deployment.apps/ratings condition met\n"


def test_wait_times_out_in_kubectls_words(fake: FakeMesh,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    fake.items.append(deployment("ratings", False))
    assert kubectl_main(["wait", "--for=condition=Available", "deploy/ratings",
                         "--timeout=300ms"]) == 1
    assert capsys.readouterr().err == (
        "error: timed out waiting for the condition on deployments/ratings\n")
    assert kubectl_main(["wait", "--for=jsonpath={.status.phase}=Running", "deploy/ratings",
                         "--timeout=200ms"]) == 1
    assert kubectl_main(["wait", "--for=condition=Ready", "vs/nope", "--timeout=1s"]) == 1
    assert 'virtualservices.networking.istio.io "nope" not found' in capsys.readouterr().err
    assert kubectl_main(["wait", "--for=frob", "deploy/ratings"]) == 1
    assert 'unrecognized condition: "frob"' in capsys.readouterr().err


# --- item 5: apply -f FILE -l SELECTOR -----------------------------------------------------------


def test_apply_with_a_selector_applies_only_the_matching_manifests(
        fake: FakeMesh, capsys: pytest.CaptureFixture[str]) -> None:
    assert kubectl_main(["apply", "-f", "samples/bookinfo/platform/kube/bookinfo.yaml",
                         "-l", "app=reviews,version in (v2,v3)"]) == 0
    assert [b["metadata"]["name"] for b in fake.applied] == ["reviews-v2", "reviews-v3"]
    assert capsys.readouterr().out == ("deployment/reviews-v2 created\n"
                                       "deployment/reviews-v3 created\n")
    assert kubectl_main(["apply", "-f", "samples/bookinfo/platform/kube/bookinfo.yaml",
                         "-l", "app=nothing"]) == 1
    assert capsys.readouterr().err == "error: no objects passed to apply\n"


# --- item 1: apiVersion converted on read, YAML as kubectl prints it ----------------------------


def test_the_mesh_returns_istio_objects_at_the_preferred_version() -> None:
    """Applied as v1alpha3, read back as v1beta1: Istio 1.20's API server converts on read."""
    views = MeshViews(None)  # type: ignore[arg-type]  # Deployments, Services need the mesh
    for kind, applied, read in [
            ("VirtualService", "networking.istio.io/v1alpha3", "networking.istio.io/v1beta1"),
            ("DestinationRule", "networking.istio.io/v1", "networking.istio.io/v1beta1"),
            ("Gateway", "networking.istio.io/v1beta1", "networking.istio.io/v1beta1"),
            ("PeerAuthentication", "security.istio.io/v1", "security.istio.io/v1beta1"),
            ("ConfigMap", "v1", "v1")]:
        body = {"apiVersion": applied, "kind": kind, "metadata": {"name": "x"}, "spec": {}}
        assert views._with_status(kind, body, "default", {})["apiVersion"] == read
        assert body["apiVersion"] == applied  # the stored object is left alone


def test_get_reads_an_explicit_version_and_prints_yaml_as_kubectl(
        fake: FakeMesh, capsys: pytest.CaptureFixture[str]) -> None:
    vs = virtual_service("reviews")
    vs["metadata"]["creationTimestamp"] = "2024-03-05T11:37:41Z"
    fake.items.append(vs)
    assert kubectl_main(["get", "vs.v1alpha3.networking.istio.io", "reviews", "-o",
                         "yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\n")
    assert '  creationTimestamp: "2024-03-05T11:37:41Z"\n' in out
    assert '  resourceVersion: "1"\n' in out
    assert kubectl_main(["get", "virtualservices.networking.istio.io", "reviews", "-o",
                         "jsonpath={.apiVersion}"]) == 0
    assert capsys.readouterr().out == "networking.istio.io/v1beta1"
    assert kubectl_main(["get", "vs.v9.networking.istio.io"]) == 1
    assert 'doesn\'t have a resource type "vs.v9.networking.istio.io"' in capsys.readouterr().err


def test_kube_yaml_quotes_and_blocks_as_go_yaml_does() -> None:
    data = {"b": "", "a": "true", "c": "9080", "d": "v1", "e": "x: y", "f": "one\ntwo\n",
            "g": 3}
    text = printers.kube_yaml(data)
    assert text == ('a: "true"\nb: ""\nc: "9080"\nd: v1\ne: \'x: y\'\nf: |\n  one\n  two\n'
                    "g: 3\n")
    assert yaml.safe_load(text) == data


# --- item 4: Istio's certificate makefiles ---------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_makefile_selfsigned_makes_istios_cacerts_layout(tmp_path: Path) -> None:
    """The plug-in CA task's two make commands, run from a certs/ folder as the page runs them
    (`make -f ../tools/certs/Makefile.selfsigned.mk ...`), give Istio's files."""
    work = tmp_path / "certs"
    work.mkdir()
    makefile = KIT_ROOT / "tools" / "certs" / "Makefile.selfsigned.mk"
    for target in ("root-ca", "cluster1-cacerts"):
        done = subprocess.run(["make", "-f", str(makefile), target], cwd=work,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in work.iterdir()) == ["cluster1", "root-cert.pem",
                                                      "root-key.pem"]
    cluster = work / "cluster1"
    assert sorted(p.name for p in cluster.iterdir()) == sorted(certs.CACERTS_FILES)
    assert (cluster / "root-cert.pem").read_bytes() == (work / "root-cert.pem").read_bytes()
    assert (work / "root-key.pem").stat().st_mode & 0o077 == 0
    assert (cluster / "ca-key.pem").stat().st_mode & 0o077 == 0
    ca = certs.load_cacerts(cluster)  # what istiod checks: key matches, chain leads to root
    assert certs.verify_chain(ca.cert_pem, None, work / "root-cert.pem")
    chain = certs.certificates(cluster / "cert-chain.pem")
    assert [c.subject for c in chain] == [ca.cert.subject, ca.root.subject]
    # A second run has nothing to do; without a root the intermediate says what to run.
    again = subprocess.run(["make", "-f", str(makefile), "cluster1-cacerts"], cwd=work,
                           capture_output=True, text=True, timeout=60)
    assert "generating" not in again.stdout
    (work / "root-key.pem").unlink()
    (work / "root-cert.pem").unlink()
    done = subprocess.run([sys.executable, "-m", "lablib.certs_make", "cacerts", str(work),
                           "cluster2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "root-ca first" in done.stderr


# --- items 7 and 8: what a curl reaches when no sidecar captures it ------------------------------


def test_curl_without_a_sidecar_connects_where_cluster_dns_and_kube_proxy_lead() -> None:
    endpoints = {("httpbin.foo", 8000): 41001, ("httpbin", 8000): 41002}

    def endpoint(host: str, port: int) -> int | None:
        return endpoints.get((host, port))

    argv = podnet.direct_curl(["curl", "http://httpbin.foo:8000/ip", "-s", "-o", "/dev/null"],
                              endpoint, {})
    assert argv == ["curl", "--noproxy", "*", "--connect-to",
                    "httpbin.foo:8000:127.0.0.1:41001", "http://httpbin.foo:8000/ip", "-s",
                    "-o", "/dev/null"]
    # In the istio-proxy container 127.0.0.1 is the pod itself: its app on that port.
    argv = podnet.direct_curl(["curl", "-sS", "-k", "--resolve", "my-nginx:443:127.0.0.1",
                               "https://my-nginx", "http://localhost:80/x",
                               "https://example.com"], endpoint, {"443": 42443, "80": 42080})
    assert argv == ["curl", "--noproxy", "*", "--connect-to", "my-nginx:443:127.0.0.1:42443",
                    "--connect-to", "localhost:80:127.0.0.1:42080", "-sS", "-k",
                    "https://my-nginx", "http://localhost:80/x", "https://example.com"]


@pytest.mark.parametrize(("host", "found"), [
    ("reviews", ("reviews", "bookinfo")), ("reviews.other", ("reviews", "other")),
    ("reviews.other.svc", ("reviews", "other")),
    ("reviews.other.svc.cluster.local", ("reviews", "other")), ("www.example.com", None)])
def test_service_names_resolve_as_cluster_dns_does(host: str,
                                                   found: tuple[str, str] | None) -> None:
    assert podnet.service_of(host, "bookinfo") == found


def test_the_proxy_container_has_none_of_the_apps_proxy_settings() -> None:
    env = {"http_proxy": "http://127.0.0.1:1", "HTTPS_PROXY": "x", "NO_PROXY": "y", "PATH": "/b"}
    assert podnet.without_proxies(env) == {"PATH": "/b"}


# --- item 6: the load balancer in front of the ingress gateway -------------------------------


def test_the_load_balancer_forwards_each_service_port_to_its_node_port() -> None:
    config = loadbalancer.lb_bootstrap(15000, "127.200.1.2", {80: 31080, 443: 31443})
    listeners = config["static_resources"]["listeners"]
    assert [(x["address"]["socket_address"]["address"],
             x["address"]["socket_address"]["port_value"]) for x in listeners] == [
        ("127.200.1.2", 80), ("127.200.1.2", 443)]
    clusters = config["static_resources"]["clusters"]
    assert [c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"] for c in clusters] == [
        {"address": "127.0.0.1", "port_value": 31080}, {"address": "127.0.0.1",
                                                        "port_value": 31443}]
    # One address per registry port: two meshes never share one.
    assert len({loadbalancer.address_of(p) for p in range(1024, 65536)}) == 65536 - 1024


def test_without_the_privilege_to_bind_the_service_stays_pending(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Ports:
        def allocate(self) -> int:
            return 40000

        def release(self, port: int) -> None:
            pass

    monkeypatch.setattr(loadbalancer, "_can_bind", lambda address, port: "Permission denied")
    balancer = loadbalancer.LoadBalancer(None, Ports(), tmp_path)  # type: ignore[arg-type]
    store = ConfigStore.with_namespaces(["istio-system"]).with_applied(load({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
        "spec": {"type": "LoadBalancer", "selector": {"istio": "ingressgateway"},
                 "ports": [{"name": "http2", "port": 80, "nodePort": 31080}]}}))
    balancer.sync(store)
    assert balancer.status("istio-system", "istio-ingressgateway") == {}
    assert balancer.note == "Permission denied"


# --- item 5: the ratings database (MongoDB's wire protocol) -----------------------------------


def test_bson_round_trips_the_types_the_database_uses() -> None:
    doc = {"find": "ratings", "$db": "test", "n": 5, "big": 2**40, "x": 1.5, "ok": True,
           "none": None, "docs": [{"rating": 5}, {"rating": 4}], "sub": {"a": "b"}}
    assert mongo_wire.decode(mongo_wire.encode(doc)) == doc


def test_the_database_stand_in_answers_a_driver_handshake_and_find() -> None:
    server = mongodb.Server(("127.0.0.1", 0), mongodb.handler(mongodb.Database()))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with socket.create_connection(server.server_address[:2], timeout=5) as sock:
            # A driver's first isMaster, in the legacy OP_QUERY a driver still sends first.
            query = (struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1)
                     + mongo_wire.encode({"isMaster": 1}))
            sock.sendall(struct.pack("<iiii", 16 + len(query), 7, 0, mongo_wire.OP_QUERY)
                         + query)
            hello = mongo_wire.read_message(sock)
            assert (hello.op, hello.response_to) == (mongo_wire.OP_REPLY, 7)
            assert hello.document["ismaster"] is True and hello.document["ok"] == 1.0
            mongo_wire.send_msg(sock, {"find": "ratings", "$db": "test"}, 8)
            found = mongo_wire.read_message(sock)
            assert found.op == mongo_wire.OP_MSG and found.response_to == 8
            assert found.document["cursor"]["firstBatch"] == [{"rating": 5}, {"rating": 4}]
    finally:
        server.shutdown()
        server.server_close()
