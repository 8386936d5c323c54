"""Bookinfo reviews: v1 without stars, v2 with black stars, v3 with red (Istio's Java app)."""

from __future__ import annotations

import os
import re
import socket
from urllib.parse import urlsplit

from .._runtime import AppHandler, http_get, log, port_parser, serve_http
from ._texts import RATING_ERROR

RATINGS_URL = "http://ratings:9080/ratings"
VERSIONS = ("v1", "v2", "v3")
REVIEWS = (
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other "
        "plays by Shakespeare.",
    ),
)
_REVIEWS_PATH = re.compile(r"/reviews/([+-]?[0-9]+)")


def star_color(version: str) -> str | None:
    """The stars' colour a version shows, or None for v1, which never calls ratings."""
    return {"v2": "black", "v3": "red"}.get(version)


def ratings_timeout(color: str) -> float:
    """Seconds to wait for ratings: the original hard-codes 10 s for black stars, 2.5 s for red."""
    # Istio's fault-injection task depends on these: a 7 s ratings delay is survived by v2
    # (10 s) but not by productpage's own 3 s timeout on reviews.
    return 10.0 if color == "black" else 2.5


def pod_name() -> str:
    """This replica's name, as the original reads it from the pod's hostname."""
    return os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or socket.gethostname()


class ReviewsHandler(AppHandler):
    """Serves /health and /reviews/<id>; `version` is set by `main`."""

    version = "v1"

    def do_GET(self) -> None:
        """Answer a GET."""
        path = urlsplit(self.path).path
        match = _REVIEWS_PATH.fullmatch(path)
        if path == "/health":
            self.send_json(200, {"status": "Reviews is healthy"})
        elif match is None:
            self.send_json(404, {"error": f"no such path: {path}"})
        else:
            self.send_json(200, self.reviews(int(match.group(1))))

    def reviews(self, product_id: int) -> dict[str, object]:
        """The reviews JSON, with each reviewer's rating when this version shows stars."""
        color = star_color(self.version)
        stars = self.fetch_stars(product_id, color) if color else {}
        reviews: list[dict[str, object]] = []
        for reviewer, text in REVIEWS:
            review: dict[str, object] = {"reviewer": reviewer, "text": text}
            if color and reviewer in stars:
                review["rating"] = {"stars": stars[reviewer], "color": color}
            elif color:
                review["rating"] = {"error": RATING_ERROR}
            reviews.append(review)
        return {
            "id": str(product_id),
            "podname": pod_name(),
            "clustername": os.environ.get("CLUSTER_NAME", "null"),
            "reviews": reviews,
            # Not in the original: lets tooling tell versions apart without parsing stars.
            "version": self.version,
        }

    def fetch_stars(self, product_id: int, color: str) -> dict[str, int]:
        """Each reviewer's stars from ratings; empty when ratings fails in any way."""
        headers = self.forwarded_headers()
        end_user = self.headers.get("end-user")
        if end_user is not None:
            headers["end-user"] = end_user
        url = f"{RATINGS_URL}/{product_id}"
        reply = http_get(url, headers, ratings_timeout(color))
        payload = reply.json() if reply.status == 200 else None
        ratings = payload.get("ratings") if isinstance(payload, dict) else None
        if not isinstance(ratings, dict):
            log(f"Error: unable to contact {url}: status {reply.status} {reply.error}".rstrip())
            return {}
        return {name: value for name, value in ratings.items() if isinstance(value, int)}


def main(argv: list[str] | None = None) -> None:
    """Run one version of the reviews service until SIGTERM."""
    parser = port_parser(__doc__)
    parser.add_argument("--version", choices=VERSIONS, required=True)
    args = parser.parse_args(argv)
    handler = type("ReviewsHandler", (ReviewsHandler,), {"version": args.version})
    serve_http(handler, args.port, f"reviews-{args.version}")


if __name__ == "__main__":
    main()
