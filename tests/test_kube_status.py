"""The kubernetes backend's readers: rollout and pod status, exec exit codes, istioctl's
output, kind words, and the in-process port-forward."""

from __future__ import annotations

import json
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from lablib.kube.forward import PortForward
from lablib.kube.istioctl import (
    DOWNLOAD,
    Istioctl,
    install_lines,
    missing_message,
    proxy_status_rows,
    syncz_rows,
    verify_rows,
)
from lablib.kube.status import (
    config_marker,
    exit_status,
    kind_of,
    kube_word,
    pod_problem,
    rollout_status,
)


def deployment(generation: int = 2, wanted: int = 2, **status: Any) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "spec": {"replicas": wanted},
            "status": {"observedGeneration": 2, **status}}


@pytest.mark.parametrize(("d", "done", "why"), [
    (deployment(generation=3), False, "waiting for the deployment spec update to be observed"),
    (deployment(updatedReplicas=1, replicas=2), False, "1 out of 2 new replicas have been updated"),
    (deployment(updatedReplicas=2, replicas=3), False, "1 old replicas are pending termination"),
    (deployment(wanted=3, updatedReplicas=2, replicas=3), False,
     "2 out of 3 new replicas have been updated"),
    (deployment(updatedReplicas=2, replicas=2, availableReplicas=1), False,
     "1 of 2 updated replicas are available"),
    (deployment(updatedReplicas=2, replicas=2, availableReplicas=2), True,
     "successfully rolled out"),
    (deployment(conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded",
                             "message": "ReplicaSet has timed out"}]), False,
     "exceeded its progress deadline (ReplicaSet has timed out)"),
    ({"metadata": {"generation": 1}, "spec": {}, "status": {}}, False,
     "waiting for the deployment spec update to be observed"),
])
def test_rollout_status_reads_like_kubectl(d: dict[str, Any], done: bool, why: str) -> None:
    assert rollout_status(d) == (done, why)


def test_one_replica_is_the_default() -> None:
    d = {"metadata": {"generation": 1}, "spec": {},
         "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                    "availableReplicas": 1}}
    assert rollout_status(d) == (True, "successfully rolled out")


def pod(phase: str = "Running", *containers: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", **meta},
            "status": {"phase": phase, "containerStatuses": list(containers)}}


READY = {"name": "app", "ready": True, "state": {"running": {}}}


def test_pod_problems() -> None:
    assert pod_problem(pod("Running", READY, {**READY, "name": "istio-proxy"})) is None
    assert pod_problem(pod("Succeeded")) is None
    assert pod_problem(pod("Running", READY, deletionTimestamp="now")) == "Terminating"
    assert pod_problem(pod("Pending")) == "Pending, 0/0 containers ready"
    assert pod_problem(pod("Running", READY, {"name": "istio-proxy", "ready": False})) == (
        "Running, 1/2 containers ready")
    pulling = {"name": "app", "ready": False,
               "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}
    assert pod_problem(pod("Pending", pulling)) == "app: ErrImagePull (not found)"
    creating = {"name": "app", "ready": False, "state": {"waiting": {"reason":
                                                                     "ContainerCreating"}}}
    assert pod_problem(pod("Pending", creating)) == "Pending, 0/1 containers ready"


def test_exit_status_from_the_error_channel() -> None:
    assert exit_status(json.dumps({"metadata": {}, "status": "Success"})) == (0, "")
    failure = {"status": "Failure", "reason": "NonZeroExitCode",
               "details": {"causes": [{"reason": "ExitCode", "message": "42"}]}}
    assert exit_status(json.dumps(failure)) == (42, "")
    internal = {"status": "Failure", "message": 'exec: "curl": executable file not found'}
    assert exit_status(json.dumps(internal)) == (
        1, 'error: exec: "curl": executable file not found\n')
    code, message = exit_status("")
    assert code == 1 and "without an exit status" in message


@pytest.mark.parametrize(("word", "kind", "group"), [
    ("svc", "Service", ""), ("services", "Service", ""), ("Service", "Service", ""),
    ("deploy", "Deployment", "apps"), ("po", "Pod", ""), ("ns", "Namespace", ""),
    ("vs", "VirtualService", "networking.istio.io"),
    ("virtualservices", "VirtualService", "networking.istio.io"),
    ("destinationrule", "DestinationRule", "networking.istio.io"),
    ("gw", "Gateway", "networking.istio.io"),
    ("authorizationpolicies", "AuthorizationPolicy", "security.istio.io"),
    ("virtualservice.networking.istio.io", "VirtualService", "networking.istio.io"),
    ("gateway.gateway.networking.k8s.io", "Gateway", "gateway.networking.k8s.io"),
    ("crontabs", "crontabs", None),
])
def test_kind_words(word: str, kind: str, group: str | None) -> None:
    assert kind_of(word) == (kind, group)


def test_kube_words_and_config_markers() -> None:
    assert kube_word("Service", "") == "service"
    assert kube_word("Deployment", "apps") == "deployment.apps"
    assert kube_word("VirtualService", "networking.istio.io") == (
        "virtualservice.networking.istio.io")
    assert config_marker("VirtualService", "bookinfo-test", "reviews") == (
        '/namespaces/bookinfo-test/virtual-service/reviews"')
    assert config_marker("DestinationRule", "ns", "r") == '/namespaces/ns/destination-rule/r"'


# --- istioctl ------------------------------------------------------------------------------


def test_install_lines_drop_the_marks() -> None:
    out = ("This will install the Istio 1.20.3 \"demo\" profile\n✔ Istio core installed\n"
           "✔ Istiod installed\n✔ Egress gateways installed\n✔ Ingress gateways installed\n"
           "✔ Installation complete\nMade this installation the default for injection\n")
    assert install_lines(out) == ["Istio core installed", "Istiod installed",
                                  "Egress gateways installed", "Ingress gateways installed",
                                  "Installation complete"]
    assert install_lines("done\n\n") == ["done"]


def test_verify_rows() -> None:
    out = ("✔ ClusterRole: istiod-clusterrole-istio-system.istio-system checked successfully\n"
           "✘ Deployment: istio-ingressgateway.istio-system: deployment is not ready\n"
           "Checked 15 custom resource definitions\n")
    assert verify_rows(out) == [
        {"component": "istiod-clusterrole-istio-system", "kind": "ClusterRole",
         "name": "istiod-clusterrole-istio-system.istio-system", "ok": True,
         "detail": "checked successfully"},
        {"component": "istio-ingressgateway", "kind": "Deployment",
         "name": "istio-ingressgateway.istio-system", "ok": False,
         "detail": "deployment is not ready"}]


def test_proxy_status_rows_keep_the_xds_columns_upper_case() -> None:
    out = ("NAME          CLUSTER        CDS        LDS        EDS        RDS          ECDS\n"
           "a.ns          Kubernetes     SYNCED     STALE      SYNCED     NOT SENT     NOT SENT\n")
    assert proxy_status_rows(out) == [{"proxy": "a.ns", "connected": True,
                                       "cluster": "Kubernetes", "CDS": "SYNCED",
                                       "LDS": "STALE", "EDS": "SYNCED", "RDS": "NOT SENT",
                                       "ECDS": "NOT SENT"}]
    assert proxy_status_rows("") == []


def test_syncz_rows_follow_istioctls_rule() -> None:
    syncz = [{"proxy": "b.ns", "cluster_id": "Kubernetes", "istio_version": "1.20.3",
              "cluster_sent": "1", "cluster_acked": "1", "listener_sent": "2",
              "listener_acked": "1"},
             {"proxy": "a.ns"}]
    rows = syncz_rows(json.dumps(syncz))
    assert [r["proxy"] for r in rows] == ["a.ns", "b.ns"]
    assert (rows[1]["CDS"], rows[1]["LDS"], rows[1]["RDS"]) == ("SYNCED", "STALE", "NOT SENT")
    assert rows[1]["version"] == "1.20.3"


def test_missing_istioctl_message_has_the_download_link() -> None:
    message = missing_message("Installing Istio")
    assert message.startswith("Installing Istio needs istioctl")
    assert DOWNLOAD in message and "ISTIO_VERSION=1.20" in message and "PATH" in message


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_istioctl_skips_lablibs_own_istioctl(tmp_path: Path, monkeypatch) -> None:
    shim_dir, real_dir = tmp_path / "venv-bin", tmp_path / "istio-bin"
    shim_dir.mkdir()
    real_dir.mkdir()
    executable(shim_dir / "istioctl", "#!/usr/bin/python3\nfrom lablib.shims import main\n")
    monkeypatch.setenv("PATH", f"{shim_dir}")
    assert Istioctl().path is None
    real = executable(real_dir / "istioctl", "#!/bin/sh\necho real\n")
    monkeypatch.setenv("PATH", f"{shim_dir}:{real_dir}")
    assert Istioctl().path == str(real)
    assert Istioctl("/k/config", "kind-lab").flags == ["--kubeconfig", "/k/config",
                                                       "--context", "kind-lab"]


# --- port-forward --------------------------------------------------------------------------


class FakeStream:
    """Like kubernetes' PortForward: `.socket(port)` is one end of a pair; the other end is
    served by a thread that upper-cases what it receives."""

    def __init__(self, opened: list[int]) -> None:
        self.mine, theirs = socket.socketpair()
        opened.append(1)
        threading.Thread(target=self._serve, args=(theirs,), daemon=True).start()

    @staticmethod
    def _serve(sock: socket.socket) -> None:
        with sock:
            while data := sock.recv(1024):
                sock.sendall(data.upper())

    def socket(self, port_number: int) -> socket.socket:
        assert port_number == 8080
        return self.mine

    def close(self) -> None:
        self.mine.close()


def test_port_forward_pipes_each_connection_through_its_own_stream() -> None:
    opened: list[int] = []
    forward = PortForward(lambda: FakeStream(opened), 8080)
    try:
        for word in (b"hello", b"again"):
            with socket.create_connection(("127.0.0.1", forward.port), timeout=5) as conn:
                conn.sendall(word)
                assert conn.recv(100) == word.upper()
        assert len(opened) == 2
    finally:
        forward.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", forward.port), timeout=1).close()


def test_a_failing_stream_closes_only_that_connection() -> None:
    def broken() -> FakeStream:
        raise RuntimeError("no ready pod")

    forward = PortForward(broken, 8080)
    try:
        with socket.create_connection(("127.0.0.1", forward.port), timeout=5) as conn:
            conn.settimeout(5)
            assert conn.recv(10) == b""
    finally:
        forward.close()
