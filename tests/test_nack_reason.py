"""lablib.controlplane.nack: Envoy's reason for refusing a config, cause first, dump left out."""

from __future__ import annotations

import pytest

from lablib.controlplane.ads import PushError
from lablib.controlplane.nack import readable_reason
from lablib.controlplane.snapshot import Snapshot
from lablib.local.rejection import rejection_reason

ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ROUTES = {"@type": ROUTE_TYPE, "name": "outbound_http", "virtual_hosts": [{
    "name": "reviews", "domains": ["*"], "routes": [{
        "match": {"prefix": "/"}, "route": {"cluster": "outbound|9080|v1|reviews"},
        "request_headers_to_add": [{"header": {"key": "x-a\r\nb", "value": "v"}}]}]}]}
# What a NACK of ROUTES carries: Envoy dumps the resource first and cuts the message at 4 KB.
CUT_SHORT = ('goo.gle/debugproto \nname: "outbound_http"\nvirtual_hosts {\n  name: "reviews"\n'
             '  routes {\n    match {\n      prefix: "/"\n    }\n    route {\n'
             '      c...(truncated)')


def test_a_reason_cut_short_is_said_so_and_names_the_resource() -> None:
    assert readable_reason(CUT_SHORT) == (
        "Envoy refused outbound_http, but cut its reason off after a dump of the config "
        "(Envoy's full message is in meshd.log)")


@pytest.mark.envoy
def test_a_reason_cut_short_is_recovered_from_envoy_itself() -> None:
    """The issue's CR/LF header name: Envoy's own validation states the constraint."""
    error = PushError("sidecar~127.0.0.1~x.ns~ns.svc.cluster.local", ROUTE_TYPE, CUT_SHORT)
    snapshot = Snapshot(error.proxy_id, {ROUTE_TYPE: {"outbound_http": ROUTES}})
    reason = rejection_reason(error, snapshot)
    assert reason.startswith("outbound_http: invalid value at RouteConfig.VirtualHosts[0]"
                             ".Routes[0].RequestHeadersToAdd[0].Header.Key: value does not "
                             "match regex pattern"), reason
    assert "virtual_hosts {" not in reason and len(reason) < 400


def test_a_plain_reason_is_kept_as_it_is() -> None:
    said = "Error adding/updating listener(s) x: cannot bind '127.0.0.1:80': Permission denied"
    assert readable_reason(said) == said


def test_an_older_envoy_order_reason_then_dump_also_reads_cause_first() -> None:
    said = ("Proto constraint validation failed (ClusterValidationError.ConnectTimeout: value "
            "must be greater than 0s): name: \"outbound|9080||reviews\"\nconnect_timeout {\n}\n")
    assert readable_reason(said) == (
        "invalid value at ConnectTimeout: value must be greater than 0s "
        "(Envoy's full message is in meshd.log)")
