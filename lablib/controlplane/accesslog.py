"""The access log a learner reads with `kubectl logs POD -c istio-proxy`: what
`meshConfig.accessLogFile`, `accessLogEncoding` and `accessLogFormat` ask for, in Istio's
default formats (pilot's `EnvoyTextLogFormat` and its JSON twin).

This is separate from the JSON log every proxy writes for the kit's telemetry
(listeners.access_log, docs/telemetry.md): that one exists whatever meshConfig says.
"""

from __future__ import annotations

import json
from typing import Any

from .context import Proxy, PushContext

FILE_LOG = "envoy.access_loggers.file"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

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


def mesh_access_log(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """The meshConfig access log of a sidecar or gateway; none for the kube-proxy stand-in
    (no Envoy of Istio's) or when meshConfig.accessLogFile is empty."""
    config = ctx.mesh_config
    if proxy.kind == "kube" or not config.access_log_file:
        return []
    return [{"name": FILE_LOG, "typed_config": {
        "@type": FILE_LOG_TYPE, "path": config.access_log_file,
        "log_format": _log_format(config.access_log_encoding,
                                  str(config.get("accessLogFormat", "")))}}]
