"""Bookinfo ratings: each reviewer's stars as JSON (Istio's Node.js app, rewritten)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .._runtime import AppHandler, port_parser, serve_http

_RATINGS_PATH = re.compile(r"/ratings/([^/]*)")
_PRODUCT_ID = re.compile(r"[0-9]+")

RATINGS = {"Reviewer1": 5, "Reviewer2": 4}


class RatingsHandler(AppHandler):
    """Serves /health and /ratings/<id>."""

    def do_GET(self) -> None:
        """Answer a GET."""
        path = urlsplit(self.path).path
        match = _RATINGS_PATH.fullmatch(path)
        if path == "/health":
            self.send_json(200, {"status": "Ratings is healthy"})
        elif match is None:
            self.send_json(404, {"error": f"no such path: {path}"})
        elif _PRODUCT_ID.fullmatch(match.group(1)):
            self.send_json(200, {"id": int(match.group(1)), "ratings": dict(RATINGS)})
        else:
            self.send_json(400, {"error": "please provide numeric product ID"})


def main(argv: list[str] | None = None) -> None:
    """Run the ratings service until SIGTERM."""
    args = port_parser(__doc__).parse_args(argv)
    serve_http(RatingsHandler, args.port, "ratings")


if __name__ == "__main__":
    main()
