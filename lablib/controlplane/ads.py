"""The xDS server: Envoy's Aggregated Discovery Service (state of the world) over gRPC.

Each connected Envoy holds one stream. The server sends a proxy the resources of its target
snapshot, type by type, and records what the proxy answers: an ACK (the version is in force)
or a NACK (Envoy's `error_detail`: the proxy keeps its previous config). `push` moves a set
of proxies to new snapshots in Istio's make-before-break order and returns only when every
one has acknowledged, or raises with Envoy's own reason.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

# The mesh forks a child for every process it runs while gRPC threads serve xDS. gRPC's fork
# handlers then run in the child between fork and exec and can abort it; the children never
# use gRPC, so turn fork support off (and the line gRPC logs at each fork) before importing it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402

# Every message type that can appear inside a typed_config must be imported for json_format.
from envoy.config.cluster.v3 import cluster_pb2  # noqa: F401
from envoy.config.listener.v3 import listener_pb2  # noqa: F401
from envoy.config.route.v3 import route_pb2  # noqa: F401
from envoy.extensions.access_loggers.file.v3 import file_pb2  # noqa: F401
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2  # noqa: F401
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2  # noqa: F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as tcp_rbac_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2  # noqa: F401
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, json_format

from .snapshot import NAMED_TYPES, SHORT_TYPE, TYPE_ORDER, Snapshot

log = logging.getLogger(__name__)
WILDCARD_TYPES = set(TYPE_ORDER) - set(NAMED_TYPES)


class PushError(Exception):
    """A proxy refused config (NACK), or did not answer in time (`unanswered`)."""

    def __init__(self, proxy_id: str, type_url: str, reason: str, unanswered: bool = False):
        verb = "did not answer for" if unanswered else "rejected"
        super().__init__(f"{proxy_id} {verb} {SHORT_TYPE.get(type_url, type_url)}: {reason}")
        self.proxy_id = proxy_id
        self.type_url = type_url
        self.reason = reason
        self.unanswered = unanswered


_PACKED: dict[str, any_pb2.Any] = {}


def to_any(resource: dict) -> any_pb2.Any:
    """A resource dict in Envoy's JSON form (with `@type`) as a protobuf Any.

    Sidecars in one namespace get identical route configurations, and a push resends them to
    each; converting JSON to protobuf is the slow part, so equal content is converted once."""
    key = json.dumps(resource, sort_keys=True)
    packed = _PACKED.get(key)
    if packed is None:
        packed = any_pb2.Any()
        json_format.ParseDict(resource, packed)
        if len(_PACKED) > 1024:
            _PACKED.clear()
        _PACKED[key] = packed
    return packed


@dataclass
class TypeState:
    subscribed: set[str] = field(default_factory=set)
    sent_version: str = ""
    sent_nonce: str = ""
    acked_version: str = ""
    nacked_version: str = ""
    nack_reason: str = ""


class ProxyStream:
    """One Envoy's ADS stream."""

    def __init__(self, proxy_id: str):
        self.proxy_id = proxy_id
        self.types: dict[str, TypeState] = {}
        self.outbox: queue.Queue[discovery_pb2.DiscoveryResponse | None] = queue.Queue()
        self.connected_at = time.time()
        self.closed = False  # its reader saw the end of the stream


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._targets: dict[str, Snapshot] = {}
        self._streams: dict[str, ProxyStream] = {}
        self._nonces = itertools.count(1)
        self._server: grpc.Server | None = None
        self.socket_path = ""

    # --- lifecycle -------------------------------------------------------------------------
    def start(self, socket_path: str) -> str:
        """Listen on a Unix socket only: inside the owner's 0700 state folder, no other user
        can open a stream (on a loopback port anyone on the machine could, and claim a
        proxy's node id to be sent its private key)."""
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix:{socket_path}")
        self._server.start()
        os.chmod(socket_path, 0o600)  # the folder is private already; the socket is too
        self.socket_path = socket_path
        return socket_path

    def stop(self) -> None:
        with self._lock:
            for stream in self._streams.values():
                stream.outbox.put(None)
        if self._server:
            self._server.stop(grace=0.2)

    # --- state -----------------------------------------------------------------------------
    def set_target(self, snapshot: Snapshot) -> None:
        """Make `snapshot` the config this proxy should have, and send what changed."""
        with self._lock:
            self._targets[snapshot.proxy_id] = snapshot
            stream = self._streams.get(snapshot.proxy_id)
            if stream:
                for type_url in TYPE_ORDER:
                    self._send_if_changed(stream, type_url)

    def forget(self, proxy_id: str) -> None:
        with self._lock:
            self._targets.pop(proxy_id, None)

    def target(self, proxy_id: str) -> Snapshot | None:
        return self._targets.get(proxy_id)

    def status(self) -> list[dict]:
        """What `istioctl proxy-status` shows: per proxy and type, SYNCED / NOT SENT / STALE."""
        rows = []
        with self._lock:
            for proxy_id, snap in sorted(self._targets.items()):
                stream = self._streams.get(proxy_id)
                row = {"proxy": proxy_id, "connected": stream is not None}
                for type_url in TYPE_ORDER:
                    state = stream.types.get(type_url) if stream else None
                    row[SHORT_TYPE[type_url]] = self._sync_word(snap, type_url, state)
                rows.append(row)
        return rows

    @staticmethod
    def _sync_word(snap: Snapshot, type_url: str, state: TypeState | None) -> str:
        if state is None or not state.sent_version:
            return "NOT SENT"
        if state.nacked_version and state.nacked_version == state.sent_version:
            return "STALE (NACK)"
        if state.acked_version == AdsServer._wanted(snap, type_url, state)[0]:
            return "SYNCED"
        return "STALE"

    # --- pushing ---------------------------------------------------------------------------
    def push(self, snapshots: Iterable[Snapshot], timeout: float = 10.0) -> None:
        """Move proxies to new snapshots, make-before-break, and wait for every ACK.

        1. clusters of old and new together; 2. listeners; 3. routes; 4. the final clusters.
        Proxies not yet connected get their snapshot when they connect.
        """
        snapshots = list(snapshots)
        make_before_break = []
        for snap in snapshots:
            previous = self._targets.get(snap.proxy_id)
            make_before_break.append(snap.with_clusters_of(previous) if previous else snap)
        stages = [make_before_break, snapshots]
        for stage in stages:
            for snap in stage:
                self.set_target(snap)
            self.wait_synced([s.proxy_id for s in stage], timeout)

    def wait_synced(self, proxy_ids: Iterable[str], timeout: float = 10.0,
                    require_connected: bool = False) -> None:
        """Block until each connected proxy has ACKed its target (or raise on a NACK)."""
        deadline = time.monotonic() + timeout
        ids = list(proxy_ids)
        with self._lock:
            while True:
                pending = []
                for proxy_id in ids:
                    snap = self._targets.get(proxy_id)
                    stream = self._streams.get(proxy_id)
                    if snap is None:
                        continue
                    if stream is None:
                        if require_connected:
                            pending.append((proxy_id, "not connected"))
                        continue
                    for type_url in TYPE_ORDER:
                        state = stream.types.get(type_url)
                        if state is None:
                            if type_url in NAMED_TYPES and not snap.of(type_url):
                                continue
                            pending.append((proxy_id, f"{SHORT_TYPE[type_url]} not requested"))
                            continue
                        if state.nacked_version and state.nacked_version == state.sent_version:
                            raise PushError(proxy_id, type_url, state.nack_reason)
                        if type_url in NAMED_TYPES and not state.subscribed & set(
                                snap.of(type_url)):
                            continue
                        if state.acked_version != self._wanted(snap, type_url, state)[0]:
                            pending.append((proxy_id, f"{SHORT_TYPE[type_url]} not acknowledged"))
                if not pending:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    proxy_id, what = pending[0]
                    raise PushError(proxy_id, "", f"no acknowledgement within {timeout:.0f}s "
                                    f"({what}; {len(pending)} pending)", unanswered=True)
                self._lock.wait(min(left, 0.5))

    def _send_if_changed(self, stream: ProxyStream, type_url: str) -> None:
        """Send the target resources of one type if the proxy subscribed and lacks them."""
        snap = self._targets.get(stream.proxy_id)
        state = stream.types.get(type_url)
        if snap is None or state is None:
            return
        version, chosen = self._wanted(snap, type_url, state)
        if version == state.sent_version:
            return
        nonce = str(next(self._nonces))
        response = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=nonce,
            resources=[to_any(r) for r in chosen])
        state.sent_version, state.sent_nonce = version, nonce
        stream.outbox.put(response)

    @staticmethod
    def _wanted(snap: Snapshot, type_url: str, state: TypeState) -> tuple[str, list[dict]]:
        """The version and resources this proxy should hold for one type (routes: only the
        names it asked for)."""
        names = snap.of(type_url)
        if type_url in WILDCARD_TYPES:
            return snap.version(type_url), list(names.values())
        chosen = [names[n] for n in sorted(state.subscribed) if n in names]
        return f"{snap.version(type_url)}-{','.join(sorted(state.subscribed & set(names)))}", chosen

    # --- the gRPC method -------------------------------------------------------------------
    def StreamAggregatedResources(  # noqa: N802 - gRPC's name
        self, request_iterator: Iterator[discovery_pb2.DiscoveryRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        first = next(request_iterator, None)
        if first is None:
            return
        stream = ProxyStream(first.node.id)
        with self._lock:
            previous = self._streams.get(stream.proxy_id)
            if previous is not None and not previous.closed:
                # istiod authenticates each stream by the proxy's certificate; here the
                # node id is all a stream shows, so the proxy that holds it keeps it and a
                # second claim is refused, never a takeover. A restarted Envoy's old stream
                # has ended (its socket closed with the process) before the new one comes.
                log.warning("refused a second ADS stream for %s: one is connected",
                            stream.proxy_id)
                context.abort(grpc.StatusCode.ALREADY_EXISTS,
                              f"proxy {stream.proxy_id} is already connected")
            self._streams[stream.proxy_id] = stream
        reader = threading.Thread(target=self._read, args=(stream, first, request_iterator),
                                  daemon=True, name=f"ads-read-{stream.proxy_id}")
        reader.start()
        try:
            while True:
                response = stream.outbox.get()
                if response is None or not context.is_active():
                    return
                yield response
        finally:
            with self._lock:
                if self._streams.get(stream.proxy_id) is stream:
                    del self._streams[stream.proxy_id]
                self._lock.notify_all()

    def _read(self, stream: ProxyStream, first: discovery_pb2.DiscoveryRequest,
              rest: Iterator[discovery_pb2.DiscoveryRequest]) -> None:
        try:
            self._handle(stream, first)
            for request in rest:
                self._handle(stream, request)
        except grpc.RpcError:
            pass
        except Exception:  # a reader must never die silently
            log.exception("ADS stream of %s failed", stream.proxy_id)
        finally:
            stream.closed = True
            stream.outbox.put(None)

    def _handle(self, stream: ProxyStream, request: discovery_pb2.DiscoveryRequest) -> None:
        with self._lock:
            state = stream.types.setdefault(request.type_url, TypeState())
            if request.response_nonce and request.response_nonce != state.sent_nonce:
                return  # an answer to a response we have since replaced
            if request.response_nonce:
                if request.HasField("error_detail"):
                    state.nacked_version = state.sent_version
                    state.nack_reason = request.error_detail.message
                    log.warning("%s NACK %s: %s", stream.proxy_id, request.type_url,
                                state.nack_reason)
                else:
                    state.acked_version = request.version_info
                    state.nacked_version, state.nack_reason = "", ""
            names = set(request.resource_names)
            changed = names != state.subscribed
            state.subscribed = names
            if not request.response_nonce or changed:
                if changed and request.type_url not in WILDCARD_TYPES:
                    state.sent_version = ""  # force a response with the new name set
                self._send_if_changed(stream, request.type_url)
            self._lock.notify_all()
