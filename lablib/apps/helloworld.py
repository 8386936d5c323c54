"""helloworld: Istio's samples/helloworld app (images istio/examples-helloworld-v1 and -v2).

`GET /hello` answers `Hello version: v1, instance: helloworld-v1-...` (the pod's name), the
line the tasks count versions by; `GET /health` answers `Helloworld is healthy`.
"""

from __future__ import annotations

import os

from ._runtime import AppHandler, port_parser, serve_http


def handler(version: str, instance: str) -> type[AppHandler]:
    class HelloWorld(AppHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/hello":
                self.send_text(200, f"Hello version: {version}, instance: {instance}\n",
                               "text/html")
            elif path == "/health":
                self.send_text(200, "Helloworld is healthy\n", "text/html")
            else:
                self.send_error(404)

    return HelloWorld


def main(argv: list[str] | None = None) -> None:
    parser = port_parser(__doc__ or "")
    parser.add_argument("--version", required=True)
    args = parser.parse_args(argv)
    instance = os.environ.get("POD_NAME") or f"helloworld-{args.version}"
    serve_http(handler(args.version, instance), args.port, "helloworld")


if __name__ == "__main__":
    main()
