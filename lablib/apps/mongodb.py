"""mongodb: a stand-in for Bookinfo's ratings database (image istio/examples-bookinfo-mongodb).

It speaks enough of MongoDB's wire protocol (`mongo_wire`) for ratings v2 and for a driver's
handshake: `hello`/`isMaster`, `ping`, `buildInfo`, `find` (whole collections, no filters)
and `insert`; every other command answers ok. It holds the database the image seeds:
`test.ratings` with `{rating: 5}` and `{rating: 4}`.
"""

from __future__ import annotations

import itertools
import socket
import socketserver
import threading
from typing import Any

from . import mongo_wire
from ._runtime import block_stop_signals, log, port_parser, wait_for_stop_signal

SEED = {"test": {"ratings": [{"rating": 5}, {"rating": 4}]}}
HELLO = {"ismaster": True, "isWritablePrimary": True, "helloOk": True,
         "maxBsonObjectSize": 16777216, "maxMessageSizeBytes": 48000000,
         "maxWriteBatchSize": 100000, "minWireVersion": 0, "maxWireVersion": 17,
         "readOnly": False, "ok": 1.0}


class Database:
    def __init__(self) -> None:
        self.collections: dict[tuple[str, str], list[dict[str, Any]]] = {
            (db, name): [dict(d) for d in docs]
            for db, names in SEED.items() for name, docs in names.items()}
        self.lock = threading.Lock()

    def command(self, document: dict[str, Any]) -> dict[str, Any]:
        name = next(iter(document), "")
        db = str(document.get("$db", "test"))
        if name.lower() in ("hello", "ismaster"):
            return dict(HELLO)
        if name == "buildInfo" or name == "buildinfo":
            return {"version": "6.0.0", "versionArray": [6, 0, 0, 0], "ok": 1.0}
        if name == "find":
            collection = str(document["find"])
            with self.lock:
                docs = list(self.collections.get((db, collection), []))
            return {"cursor": {"firstBatch": docs, "id": 0, "ns": f"{db}.{collection}"},
                    "ok": 1.0}
        if name == "insert":
            with self.lock:
                self.collections.setdefault((db, str(document["insert"])), []).extend(
                    document.get("documents") or [])
            return {"n": len(document.get("documents") or []), "ok": 1.0}
        return {"ok": 1.0}


def handler(database: Database) -> type[socketserver.BaseRequestHandler]:
    ids = itertools.count(1)

    class Connection(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            while True:
                try:
                    message = mongo_wire.read_message(sock)
                except (ConnectionError, OSError):
                    return
                answer = database.command(message.document)
                if message.op == mongo_wire.OP_QUERY:
                    mongo_wire.send_reply(sock, answer, next(ids), message.request_id)
                else:
                    mongo_wire.send_msg(sock, answer, next(ids), message.request_id)

    return Connection


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str] | None = None) -> None:
    args = port_parser(__doc__ or "").parse_args(argv)
    block_stop_signals()
    server = Server(("127.0.0.1", args.port), handler(Database()))
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    log(f"mongodb stand-in listening on 127.0.0.1:{args.port}")
    wait_for_stop_signal()
    server.shutdown()


if __name__ == "__main__":
    main()
