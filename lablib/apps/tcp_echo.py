"""tcp-echo: answers each line it receives with `<prefix> <line>` (Istio's Go sample, rewritten)."""

from __future__ import annotations

import argparse
import socket
import socketserver
import threading

from ._runtime import QuietOnDisconnect, block_stop_signals, log, wait_for_stop_signal


class EchoServer(QuietOnDisconnect, socketserver.ThreadingTCPServer):
    """A TCP server that remembers the prefix it answers with."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, prefix: str) -> None:
        super().__init__(("127.0.0.1", port), EchoHandler)
        self.prefix = prefix.encode()


class EchoHandler(socketserver.StreamRequestHandler):
    """Echoes every complete line of one connection, prefixed."""

    server: EchoServer

    def setup(self) -> None:
        """Turn Nagle off: each answer is one small write a proxy should see at once."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        """Answer line by line until the client closes."""
        port = self.server.server_address[1]
        while True:
            line = self.rfile.readline()
            # A partial last line is dropped at EOF, as the original does.
            if not line.endswith(b"\n"):
                return
            log(f"{self.client_address[0]} -> :{port} request: {line.decode(errors='replace')!r}")
            self.wfile.write(self.server.prefix + b" " + line)


def main(argv: list[str] | None = None) -> None:
    """Serve every `--port` until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, action="append", required=True, help="repeatable")
    parser.add_argument("--prefix", required=True, help='e.g. "one" for v1, "two" for v2')
    args = parser.parse_args(argv)
    block_stop_signals()
    servers = [EchoServer(port, args.prefix) for port in args.port]
    for server in servers:
        threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
        log(f"listening on 127.0.0.1:{server.server_address[1]}, prefix: {args.prefix}")
    wait_for_stop_signal()
    for server in servers:
        server.shutdown()
        server.server_close()
    log("tcp-echo stopped")


if __name__ == "__main__":
    main()
