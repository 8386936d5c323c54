"""Why Envoy refused a push, even when its NACK lost the reason.

Envoy cuts a NACK's message at 4 KB; a resource that fails a proto constraint is dumped first,
so a large route table leaves only the dump and "...(truncated)". The same resource is then
checked by Envoy itself (`envoy --mode validate`, a fraction of a second, only on this rare
path), which states the failed constraint in full.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..controlplane.ads import PushError
from ..controlplane.nack import dumped_name, readable_reason, states_its_reason
from ..controlplane.snapshot import Snapshot
from .bootstrap import envoy_binary

__all__ = ["rejection_reason"]

_ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
_CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
             "HttpConnectionManager")
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _static_config(type_url: str, resource: dict[str, Any]) -> dict[str, Any] | None:
    """A bootstrap holding `resource` statically, so that Envoy validates it whole."""
    body = {k: v for k, v in resource.items() if k != "@type"}
    if type_url == _CLUSTER_TYPE:
        return {"static_resources": {"clusters": [body]}}
    if type_url == _ROUTE_TYPE:
        # validate_clusters off: the mesh's clusters are not part of this check.
        hcm = {"@type": _HCM_TYPE, "stat_prefix": "validate",
               "route_config": {**body, "validate_clusters": False},
               "http_filters": [{"name": "envoy.filters.http.router",
                                 "typed_config": {"@type": _ROUTER_TYPE}}]}
        return {"static_resources": {"listeners": [{
            "name": "validate",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network."
                                            "http_connection_manager", "typed_config": hcm}]}],
        }]}}
    return None


def _envoy_verdict(config: dict[str, Any]) -> str:
    """What `envoy --mode validate` says of `config` ("" when it accepts it)."""
    with tempfile.TemporaryDirectory(prefix="lab-validate-") as folder:
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(config))
        try:
            done = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path),
                                   "--log-level", "critical"], capture_output=True, text=True,
                                  timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
    said = done.stdout + done.stderr
    marker = "error initializing configuration"
    if done.returncode == 0 or marker not in said:
        return ""
    return said[said.index(marker):].split("': ", 1)[-1]


def rejection_reason(error: PushError, snapshot: Snapshot | None) -> str:
    """Envoy's reason for refusing `error`'s push, cause first, without the config dump."""
    if states_its_reason(error.reason) or snapshot is None:
        return readable_reason(error.reason)
    name = dumped_name(error.reason)
    resource = snapshot.of(error.type_url).get(name)
    config = _static_config(error.type_url, resource) if resource else None
    verdict = _envoy_verdict(config) if config else ""
    if not states_its_reason(verdict):
        return readable_reason(error.reason)
    return readable_reason(verdict).replace(
        "invalid value", f"{name}: invalid value", 1)
