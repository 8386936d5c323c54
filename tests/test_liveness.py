"""Components that die come back, as the kubelet brings containers back; one that is down or
frozen is reported as such, never as healthy or as a rejection."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

import lablib
from lablib.local.admin import ProxyUnansweredError, admin_request
from lablib.local.supervisor import CRASH_LOOP
from lablib.telemetry.service import PROCESS_NAME as PROMETHEUS

pytestmark = pytest.mark.envoy
RECOVERY_S = 30  # back-off is capped at 10 s; a restarted Envoy is ready in well under a second
ROUTES = """
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: teapot, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - fault: {abort: {httpStatus: %d, percentage: {value: 100}}}
    route: [{destination: {host: istio-ingressgateway.istio-system.svc.cluster.local,
                           port: {number: 15021}}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[lablib.Backend]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("liveness")))
        env.setenv("LAB_MESH", "liveness")
        mesh = lablib.connect("local")
        try:
            mesh.install()
            mesh.apply(ROUTES % 418)
            yield mesh
        finally:
            mesh.uninstall()


def gateway_row(mesh: lablib.Backend) -> dict:
    [row] = [r for r in mesh.processes() if "istio-ingressgateway" in r["name"]]
    return row


def ingress_status(mesh: lablib.Backend) -> int:
    host, port = mesh.ingress_address()
    try:
        return httpx.get(f"http://{host}:{port}/", trust_env=False, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def wait_for(what: str, check, timeout: float = RECOVERY_S):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)
    return result


def test_five_quitquitquit_do_not_stop_a_gateway_for_good(mesh) -> None:
    """The reproduction: five POST /quitquitquit left the gateway in CrashLoopBackOff until
    its owner restarted it. Now it is shown in CrashLoopBackOff and retried with back-off."""
    gateway = mesh.pod_name({"istio": "ingressgateway"}, "istio-system")
    socket_path = mesh.pod_info(gateway, "istio-system")["admin_socket"]
    states: set[str] = set()

    def restarted(count: int) -> bool:
        row = gateway_row(mesh)
        states.add(row["state"])
        return bool(row["restarts"] > count and row["ready"])

    for _ in range(5):
        count = gateway_row(mesh)["restarts"]
        wait_for("admin answers", lambda: admin_request(socket_path, "ready") == "LIVE\n")
        admin_request(socket_path, "quitquitquit", method="POST")
        wait_for("restarted and ready", lambda: restarted(count))  # noqa: B023 - used at once
    assert CRASH_LOOP in states, states
    assert wait_for("the gateway serves its routes again", lambda: ingress_status(mesh) == 418)


def test_a_frozen_proxy_did_not_answer_it_did_not_refuse(mesh) -> None:
    gateway = mesh.pod_name({"istio": "ingressgateway"}, "istio-system")
    socket_path = mesh.pod_info(gateway, "istio-system")["admin_socket"]
    pid = gateway_row(mesh)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(ProxyUnansweredError, match=r"did not answer within 1s"):
            admin_request(socket_path, "config_dump", timeout=1)
        with pytest.raises(lablib.ProxyRejectedError) as pushed:
            mesh.apply(ROUTES % 419)
        assert "did not answer" in str(pushed.value)
        assert "refused the new configuration" not in str(pushed.value)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_for("the last good config serves", lambda: ingress_status(mesh) == 418)


def test_prometheus_that_stays_down_is_reported_and_comes_back(mesh) -> None:
    found = mesh.telemetry_endpoints()
    if not found["prometheus"]:
        pytest.skip(f"no Prometheus here: {found['note']}")
    config = mesh.state.path / "telemetry" / "prometheus.yml"
    good = config.read_text()
    config.write_text("scrape_configs: [not a mapping\n")  # every start now fails
    try:
        [row] = [r for r in mesh.processes() if r["name"] == PROMETHEUS]
        os.kill(row["pid"], signal.SIGKILL)
        down = wait_for("Prometheus reported down", lambda: (
            (e := mesh.telemetry_endpoints())["prometheus"] == "" and e))
        assert "Prometheus is down" in down["note"] and PROMETHEUS in down["note"]
    finally:
        config.write_text(good)
    assert wait_for("Prometheus back", lambda: mesh.telemetry_endpoints()["prometheus"])
