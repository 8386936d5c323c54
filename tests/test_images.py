"""Container images mapped to the local processes that stand in for them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from lablib.errors import LabError
from lablib.local.images import (
    ContainerSpecError,
    UnknownImageError,
    command_for,
    supported_images,
)

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
PY = sys.executable


@pytest.mark.parametrize(
    ("image", "module", "extra"),
    [
        ("docker.io/istio/examples-bookinfo-productpage-v1:1.18.0", "productpage", []),
        ("docker.io/istio/examples-bookinfo-details-v1:1.18.0", "details", []),
        ("docker.io/istio/examples-bookinfo-ratings-v1:1.18.0", "ratings", []),
        ("docker.io/istio/examples-bookinfo-reviews-v1:1.18.0", "reviews", ["--version", "v1"]),
        ("istio/examples-bookinfo-reviews-v2:1.17.0", "reviews", ["--version", "v2"]),
        ("docker.io/istio/examples-bookinfo-reviews-v3", "reviews", ["--version", "v3"]),
    ],
)
def test_bookinfo_images_run_lablib_apps_on_the_mapped_port(
    image: str, module: str, extra: list[str]
) -> None:
    argv = command_for(image, port_map={9080: 20001}, env={})
    assert argv == [PY, "-m", f"lablib.apps.bookinfo.{module}", "--port", "20001", *extra]


@pytest.mark.parametrize(
    ("image", "container_port"),
    [
        ("docker.io/kong/httpbin", 80),
        ("docker.io/kennethreitz/httpbin:latest", 80),
        ("docker.io/mccutchen/go-httpbin:v2.15.0", 8080),
        ("kong/httpbin@sha256:" + "0" * 64, 80),
    ],
)
def test_httpbin_images_run_httpbin_with_an_access_log(image: str, container_port: int) -> None:
    argv = command_for(image, port_map={container_port: 20002, 15090: 20003}, env={})
    assert argv == [PY, "-m", "lablib.apps.httpbin", "--port", "20002"]


def test_a_single_declared_port_is_the_one_the_container_listens_on() -> None:
    # Istio 1.21's httpbin.yaml runs kong/httpbin on 8080 through its `command`.
    argv = command_for("docker.io/kong/httpbin", port_map={8080: 20004}, env={})
    assert argv[argv.index("--port") + 1] == "20004"


def test_a_missing_port_says_which_containerport_to_declare() -> None:
    with pytest.raises(ContainerSpecError, match="containerPort: 9080") as caught:
        command_for("docker.io/istio/examples-bookinfo-details-v1:1.18.0", port_map={}, env={})
    assert isinstance(caught.value, LabError)
    with pytest.raises(ContainerSpecError, match="declares containerPort 81, 82"):
        command_for("docker.io/kong/httpbin", port_map={81: 1, 82: 2}, env={})


def test_sleep_image_runs_the_placeholder() -> None:
    assert command_for("curlimages/curl", port_map={}, env={}) == [PY, "-m", "lablib.apps.sleep"]


def _containers(path: Path) -> list[dict]:
    """The containers of every Deployment in a YAML file."""
    deployments = [
        d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Deployment"
    ]
    return [c for d in deployments for c in d["spec"]["template"]["spec"]["containers"]]


@pytest.mark.parametrize("prefix", ["one", "two"])
def test_tcp_echo_takes_ports_and_prefix_from_the_deployments_args(prefix: str) -> None:
    (container,) = [
        c for c in _containers(SAMPLES / "tcp-echo/tcp-echo-services.yaml") if prefix in c["args"]
    ]
    assert container["args"] == ["9000,9001,9002", prefix]
    argv = command_for(
        container["image"], port_map={9000: 21000, 9001: 21001}, env={}, args=container["args"]
    )
    # 9002 has no containerPort, hence no loopback port.
    assert argv == [
        PY,
        "-m",
        "lablib.apps.tcp_echo",
        "--prefix",
        prefix,
        "--port",
        "21000",
        "--port",
        "21001",
    ]


def test_tcp_echo_without_args_uses_the_images_cmd() -> None:
    argv = command_for("docker.io/istio/tcp-echo-server:1.3", port_map={9000: 21000}, env={})
    assert argv == [PY, "-m", "lablib.apps.tcp_echo", "--prefix", "hello", "--port", "21000"]


def test_tcp_echo_args_expand_env_references_as_kubernetes_does() -> None:
    argv = command_for(
        "docker.io/istio/tcp-echo-server:1.2",
        port_map={9000: 21000},
        env={"PORTS": "9000", "PREFIX": "one"},
        args=["$(PORTS)", "$(PREFIX)-$$(PREFIX)-$(UNSET)"],
    )
    assert argv[argv.index("--prefix") + 1] == "one-$(PREFIX)-$(UNSET)"
    assert argv[argv.index("--port") + 1] == "21000"


def test_tcp_echo_with_wrong_args_explains_its_usage() -> None:
    with pytest.raises(ContainerSpecError, match="two args, ports and prefix"):
        command_for(
            "docker.io/istio/tcp-echo-server:1.2", port_map={9000: 1}, env={}, args=["9000"]
        )


def test_unknown_image_names_the_supported_ones_and_the_cluster_backend() -> None:
    with pytest.raises(UnknownImageError) as caught:
        command_for("redis:7", port_map={443: 20000}, env={})
    message = str(caught.value)
    assert message.startswith('image "redis:7" has no local equivalent on the local backend')
    assert "docker.io/kong/httpbin:*" in message
    assert "LAB_BACKEND=kubernetes" in message
    assert isinstance(caught.value, LabError)


def test_supported_images_lists_every_sample_image() -> None:
    assert set(supported_images()) >= {
        "docker.io/istio/examples-bookinfo-productpage-v1:*",
        "docker.io/istio/examples-bookinfo-details-v1:*",
        "docker.io/istio/examples-bookinfo-ratings-v1:*",
        "docker.io/istio/examples-bookinfo-reviews-v1:*",
        "docker.io/istio/examples-bookinfo-reviews-v2:*",
        "docker.io/istio/examples-bookinfo-reviews-v3:*",
        "docker.io/kong/httpbin:*",
        "docker.io/kennethreitz/httpbin:*",
        "docker.io/mccutchen/go-httpbin:*",
        "docker.io/curlimages/curl:*",
        "docker.io/istio/tcp-echo-server:*",
    }


@pytest.mark.parametrize(
    "path", sorted(SAMPLES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(SAMPLES))
)
def test_every_container_in_the_samples_runs_locally(path: Path) -> None:
    for container in _containers(path):
        ports = [p["containerPort"] for p in container.get("ports", [])]
        port_map = {port: 30000 + i for i, port in enumerate(ports)}
        env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
        argv = command_for(
            container["image"], port_map=port_map, env=env, args=container.get("args", [])
        )
        assert argv[:2] == [PY, "-m"]
        assert importlib.util.find_spec(argv[2]) is not None, argv
