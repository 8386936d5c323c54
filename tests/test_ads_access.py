"""Who may hold a proxy's xDS stream: the control plane serves ADS on a Unix socket, and a
second stream claiming a node id that is connected is refused, never a takeover."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from lablib.controlplane.ads import AdsServer
from lablib.controlplane.snapshot import CLUSTER_TYPE, Snapshot

NODE = "sidecar~127.0.0.1~productpage-v1-abc.bookinfo~bookinfo.svc.cluster.local"
CLUSTER = {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
           "name": "outbound|9080||reviews.bookinfo.svc.cluster.local",
           "type": "STATIC", "connect_timeout": "1s"}


class FakeProxy:
    """An ADS client that asks for clusters as `node_id`, as Envoy's first request does."""

    def __init__(self, channel: grpc.Channel, node_id: str):
        self.requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
        self.requests.put(discovery_pb2.DiscoveryRequest(
            node={"id": node_id}, type_url=CLUSTER_TYPE))
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.responses = stub.StreamAggregatedResources(self._requests(), timeout=5)

    def _requests(self) -> Iterator[discovery_pb2.DiscoveryRequest]:
        while (request := self.requests.get()) is not None:
            yield request

    def close(self) -> None:
        self.requests.put(None)
        self.responses.cancel()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AdsServer]:
    ads = AdsServer()
    ads.start(str(tmp_path / "xds.sock"))
    ads.set_target(Snapshot(NODE, {CLUSTER_TYPE: {CLUSTER["name"]: CLUSTER}}))
    yield ads
    ads.stop()


def test_ads_listens_on_a_unix_socket_only(server: AdsServer, tmp_path: Path) -> None:
    assert server.socket_path == str(tmp_path / "xds.sock")
    assert (tmp_path / "xds.sock").is_socket()
    assert (tmp_path / "xds.sock").stat().st_mode & 0o777 == 0o600


def test_a_second_stream_for_a_connected_node_is_refused_and_the_first_keeps_it(
        server: AdsServer) -> None:
    with grpc.insecure_channel(f"unix:{server.socket_path}") as channel:
        owner = FakeProxy(channel, NODE)
        first = next(owner.responses)
        assert [r.type_url for r in first.resources] == [CLUSTER_TYPE]
        intruder = FakeProxy(channel, NODE)
        with pytest.raises(grpc.RpcError) as refused:
            next(intruder.responses)
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "already connected" in str(refused.value.details())
        assert server.status()[0]["connected"]
        # The proxy that held the stream still gets the next push.
        changed = dict(CLUSTER, connect_timeout="2s")
        owner.requests.put(discovery_pb2.DiscoveryRequest(
            type_url=CLUSTER_TYPE, version_info=first.version_info,
            response_nonce=first.nonce))
        server.set_target(Snapshot(NODE, {CLUSTER_TYPE: {CLUSTER["name"]: changed}}))
        second = next(owner.responses)
        assert second.version_info != first.version_info
        owner.close()


def test_a_node_may_connect_again_once_its_stream_ended(server: AdsServer) -> None:
    """A restarted Envoy gets its config again: the old stream ended with the old process."""
    with grpc.insecure_channel(f"unix:{server.socket_path}") as channel:
        first = FakeProxy(channel, NODE)
        next(first.responses)
        first.close()
        for _ in range(50):
            again = FakeProxy(channel, NODE)
            try:
                assert next(again.responses).resources
                again.close()
                return
            except grpc.RpcError as exc:  # the old stream's end may not be seen yet
                assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
        pytest.fail("the node could not connect again after its stream ended")
