"""Bookinfo details: the book's facts as JSON (Istio's Ruby app, rewritten)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .._runtime import AppHandler, port_parser, serve_http

_INTEGER = re.compile(r"[+-]?[0-9]+")


def book_details(product_id: int) -> dict[str, object]:
    """The details of the one book Bookinfo knows, whatever the id."""
    return {
        "id": product_id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }


class DetailsHandler(AppHandler):
    """Serves /health and /details/<id>."""

    def do_GET(self) -> None:
        """Answer a GET."""
        path = urlsplit(self.path).path
        if path == "/health":
            self.send_json(200, {"status": "Details is healthy"})
        elif path.startswith("/details"):
            # Like the original, the id is the last path segment, whatever comes before it.
            last = path.rstrip("/").split("/")[-1]
            if _INTEGER.fullmatch(last):
                self.send_json(200, book_details(int(last)))
            else:
                self.send_json(400, {"error": "please provide numeric product id"})
        else:
            self.send_json(404, {"error": f"no such path: {path}"})


def main(argv: list[str] | None = None) -> None:
    """Run the details service until SIGTERM."""
    args = port_parser(__doc__).parse_args(argv)
    serve_http(DetailsHandler, args.port, "details")


if __name__ == "__main__":
    main()
