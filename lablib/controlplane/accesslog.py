"""The access log a learner reads with `kubectl logs POD -c istio-proxy`: what the Telemetry
API's `accessLogging` asks for, else what `meshConfig.accessLogFile` does, in the format
`accessLogEncoding` and `accessLogFormat` give (Istio's defaults: pilot's
`EnvoyTextLogFormat` and its JSON twin).

This is separate from the JSON log every proxy writes for the kit's telemetry
(listeners.access_log, docs/telemetry.md): that one exists whatever meshConfig says.
"""

from __future__ import annotations

import json
from typing import Any

from ..config.model import Resource
from .context import Proxy, PushContext, selector_matches

FILE_LOG = "envoy.access_loggers.file"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
CEL_FILTER_TYPE = ("type.googleapis.com/"
                   "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter")
ROOT_NAMESPACE = "istio-system"
STDOUT = "/dev/stdout"  # Istio's built-in `envoy` provider

# Istio's default TEXT format, operator for operator.
ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n")

# Istio's default JSON format: the same operators under these keys.
ISTIO_JSON_FORMAT = {
    "start_time": "%START_TIME%", "route_name": "%ROUTE_NAME%", "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%", "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%", "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%", "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%", "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%", "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%", "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}


def _log_format(encoding: str, custom: str) -> dict[str, Any]:
    """Envoy's log_format for meshConfig's encoding and format, as istiod builds it: a custom
    TEXT format gets a newline if it lacks one; a custom JSON format must be a JSON object
    of format strings, else istiod falls back to the default."""
    if encoding == "JSON":
        fields = ISTIO_JSON_FORMAT
        if custom:
            try:
                parsed = json.loads(custom)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                fields = {str(k): str(v) for k, v in parsed.items()}
        return {"json_format": fields}
    text = custom if custom.endswith("\n") or not custom else custom + "\n"
    return {"text_format_source": {"inline_string": text or ISTIO_TEXT_FORMAT}}


def _telemetry(proxy: Proxy, ctx: PushContext) -> Resource | None:
    """The Telemetry whose accessLogging applies to this proxy: the workload's (selector),
    else its namespace's, else the mesh-wide one in istio-system; the oldest of a level."""
    candidates = [t for t in ctx.store.list("Telemetry") if t.spec.get("accessLogging")]

    def selector(t: Resource) -> dict[str, Any]:
        return dict((t.spec.get("selector") or {}).get("matchLabels") or {})

    levels = [[t for t in candidates if t.namespace == proxy.namespace and selector(t)
               and selector_matches(selector(t), proxy.labels)],
              [t for t in candidates if t.namespace == proxy.namespace and not selector(t)],
              [t for t in candidates if t.namespace == ROOT_NAMESPACE and not selector(t)]]
    return next((level[0] for level in levels if level), None)


def _file_log(path: str, ctx: PushContext, expression: str = "") -> dict[str, Any]:
    config = ctx.mesh_config
    logger: dict[str, Any] = {"name": FILE_LOG, "typed_config": {
        "@type": FILE_LOG_TYPE, "path": path,
        "log_format": _log_format(config.access_log_encoding,
                                  str(config.get("accessLogFormat", "")))}}
    if expression:
        logger["filter"] = {"extension_filter": {"name": CEL_FILTER, "typed_config": {
            "@type": CEL_FILTER_TYPE, "expression": expression}}}
    return logger


def mesh_access_log(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """The access log of a sidecar or gateway: the Telemetry API's when one applies (each
    `accessLogging` entry not `disabled`, through the `envoy` provider, with its CEL
    `filter`), else meshConfig's; none for the kube-proxy stand-in (no Envoy of Istio's)."""
    if proxy.kind == "kube":
        return []
    telemetry = _telemetry(proxy, ctx)
    if telemetry is None:
        path = ctx.mesh_config.access_log_file
        return [_file_log(path, ctx)] if path else []
    loggers = []
    for entry in telemetry.spec.get("accessLogging") or []:
        if entry.get("disabled"):
            continue
        expression = str((entry.get("filter") or {}).get("expression") or "")
        # Without providers, meshConfig's default applies: its accessLogFile, if any.
        providers = entry.get("providers") or (
            [{"name": "envoy"}] if ctx.mesh_config.access_log_file else [])
        loggers += [_file_log(STDOUT, ctx, expression) for p in providers
                    if p.get("name") == "envoy"]
    return loggers
