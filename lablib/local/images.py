"""Which local process stands in for a container image when the mesh runs on this machine."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from lablib.errors import LabError

__all__ = ["ContainerSpecError", "UnknownImageError", "command_for", "supported_images"]


class UnknownImageError(LabError):
    """A container image has no local equivalent."""


class ContainerSpecError(LabError):
    """A known image's container spec (ports, args) cannot run locally as written."""


@dataclass(frozen=True)
class _Image:
    """A supported image: the port it listens on and the argv (after `python`) replacing it."""

    port: int | None  # None: the image listens on nothing, or on ports its args name
    argv: tuple[str, ...]  # "{port}" stands for the loopback port to bind


def _bookinfo(module: str, *extra: str) -> _Image:
    """A Bookinfo image: one of lablib's apps, on Bookinfo's port 9080."""
    return _Image(9080, ("-m", f"lablib.apps.bookinfo.{module}", "--port", "{port}", *extra))


def _httpbin(port: int) -> _Image:
    """An httpbin image: the same httpbin app from PyPI (psf/httpbin), with gunicorn's access
    log (lablib.apps.httpbin)."""
    return _Image(port, ("-m", "lablib.apps.httpbin", "--port", "{port}"))


def _nginx() -> _Image:
    """The nginx image: lablib's stand-in serving what the mounted nginx.conf describes."""
    # The image listens on 80 by default; a mounted nginx.conf may move it (the passthrough
    # task's listens on 443), and then the one containerPort declared is the one it serves.
    return _Image(80, ("-m", "lablib.apps.nginx", "--port", "{port}"))


_TCP_ECHO = "istio/tcp-echo-server"
_FORTIO = "fortio/fortio"
# The tcp-echo image's CMD, used when a Deployment gives no args.
_TCP_ECHO_DEFAULT_ARGS = ("9000", "hello")

# Keyed by repository without registry and tag.
_IMAGES = {
    "istio/examples-bookinfo-productpage-v1": _bookinfo("productpage"),
    "istio/examples-bookinfo-details-v1": _bookinfo("details"),
    "istio/examples-bookinfo-ratings-v1": _bookinfo("ratings"),
    # v2 reads its stars from MongoDB when DB_TYPE=mongodb (bookinfo-ratings-v2.yaml).
    "istio/examples-bookinfo-ratings-v2": _bookinfo("ratings"),
    "istio/examples-bookinfo-mongodb": _Image(27017, ("-m", "lablib.apps.mongodb", "--port",
                                                      "{port}")),
    "istio/examples-bookinfo-reviews-v1": _bookinfo("reviews", "--version", "v1"),
    "istio/examples-bookinfo-reviews-v2": _bookinfo("reviews", "--version", "v2"),
    "istio/examples-bookinfo-reviews-v3": _bookinfo("reviews", "--version", "v3"),
    # Istio 1.20's samples/httpbin/httpbin.yaml runs kong/httpbin on port 80 (older docs:
    # kennethreitz/httpbin, also 80); 1.21-1.23 move it to 8080 with a `command`; 1.24 switched
    # to go-httpbin on 8080.
    "kong/httpbin": _httpbin(80),
    "kennethreitz/httpbin": _httpbin(80),
    "mccutchen/go-httpbin": _httpbin(8080),
    "curlimages/curl": _Image(None, ("-m", "lablib.apps.sleep")),
    # Docker Hub's official image, as `nginx` or `library/nginx`.
    "nginx": _nginx(),
    "library/nginx": _nginx(),
    _TCP_ECHO: _Image(None, ()),  # argv built from the container's args
    # fortio's image runs `fortio server`, an echo server on 8080 (plus every other declared
    # port, see command_for).
    _FORTIO: _Image(8080, ("-m", "lablib.apps.fortio", "server", "--port", "{port}")),
    # samples/helloworld: one app per version, on the image's port 5000.
    "istio/examples-helloworld-v1": _Image(5000, ("-m", "lablib.apps.helloworld", "--port",
                                                  "{port}", "--version", "v1")),
    "istio/examples-helloworld-v2": _Image(5000, ("-m", "lablib.apps.helloworld", "--port",
                                                  "{port}", "--version", "v2")),
    # Istio's addons (samples/addons/): the pod reaches the mesh's own Prometheus, or says
    # where the notebooks standing in for Grafana and Kiali are.
    "prom/prometheus": _Image(9090, ("-m", "lablib.apps.addon", "prometheus", "--port",
                                     "{port}")),
    "grafana/grafana": _Image(3000, ("-m", "lablib.apps.addon", "grafana", "--port", "{port}")),
    "quay.io/kiali/kiali": _Image(20001, ("-m", "lablib.apps.addon", "kiali", "--port",
                                          "{port}")),
}

_REGISTRY = "docker.io/"
_ENV_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _repository(image: str) -> str:
    """The image's repository without Docker Hub's registry prefix, tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return name.removeprefix(_REGISTRY)


def supported_images() -> list[str]:
    """The images the local backend can run, as patterns like `docker.io/kong/httpbin:*`."""
    return sorted(f"{_REGISTRY}{repository}:*" for repository in _IMAGES)


def expand_env_references(arg: str, env: dict[str, str]) -> str:
    """Expand `$(VAR)` from the container's env the way Kubernetes does in args and env values."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _ENV_REFERENCE.sub(replace, arg)


def _loopback_port(image: str, port: int, port_map: dict[int, int]) -> int:
    """The loopback port for the container port the image listens on."""
    if port in port_map:
        return port_map[port]
    if len(port_map) == 1:
        # The Deployment's `command` may move the port (Istio 1.21's httpbin runs gunicorn on
        # 8080); the one port the container declares is then the one it listens on.
        return next(iter(port_map.values()))
    declared = ", ".join(str(p) for p in sorted(port_map)) or "none"
    raise ContainerSpecError(
        f'image "{image}" listens on port {port}, but its container declares containerPort '
        f"{declared}; add `- containerPort: {port}` under the container's `ports`"
    )


def _tcp_echo_argv(image: str, args: Sequence[str], port_map: dict[int, int]) -> list[str]:
    """tcp-echo's argv from its Deployment args: comma-separated ports, then the prefix."""
    if len(args) != 2:
        raise ContainerSpecError(
            f'image "{image}" takes two args, ports and prefix (e.g. ["9000,9001", "one"]); '
            f"got {list(args)}"
        )
    ports = [int(p) for p in args[0].split(",") if p.strip().isdigit()]
    # Ports without a containerPort (Istio's sample listens on an undeclared 9002 on purpose)
    # get no loopback port: nothing in the local mesh can address them.
    mapped = [port_map[p] for p in ports if p in port_map]
    if not mapped:
        declared = ", ".join(str(p) for p in sorted(port_map)) or "none"
        raise ContainerSpecError(
            f'image "{image}" listens on {args[0]}, but its container declares containerPort '
            f"{declared}; declare at least one of the ports it listens on"
        )
    argv = ["-m", "lablib.apps.tcp_echo", "--prefix", args[1]]
    for port in mapped:
        argv += ["--port", str(port)]
    return argv


def command_for(
    image: str,
    *,
    port_map: dict[int, int],
    env: dict[str, str],
    args: Sequence[str] = (),
) -> list[str]:
    """The argv of the local process standing in for a container of `image`.

    `port_map` maps each containerPort to the loopback port the process must bind; `env` is
    the container's environment, used to expand `$(VAR)` in `args` as Kubernetes does; `args`
    are the container's args (only tcp-echo reads them; an empty list means the image's CMD).
    """
    spec = _IMAGES.get(_repository(image))
    if spec is None:
        raise UnknownImageError(
            f'image "{image}" has no local equivalent on the local backend; supported images: '
            f"{', '.join(supported_images())} "
            "(use LAB_BACKEND=kubernetes to run arbitrary images on a cluster)"
        )
    expanded = [expand_env_references(arg, env) for arg in args]
    if _repository(image) == _TCP_ECHO:
        argv = _tcp_echo_argv(image, expanded or _TCP_ECHO_DEFAULT_ARGS, port_map)
        return [sys.executable, *argv]
    if spec.port is None:
        return [sys.executable, *spec.argv]
    port = _loopback_port(image, spec.port, port_map)
    argv = [sys.executable, *(part.replace("{port}", str(port)) for part in spec.argv)]
    if _repository(image) == _FORTIO:
        # Istio's fortio-deploy.yaml also declares grpc-ping on 8079. A pod is ready only when
        # every declared port listens, so the stand-in answers (HTTP) on those ports too.
        for extra in sorted(set(port_map.values()) - {port}):
            argv += ["--port", str(extra)]
    return argv
