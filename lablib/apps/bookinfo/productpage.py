"""Bookinfo productpage: the web page that calls details and reviews (Istio's Python app)."""

from __future__ import annotations

import html
import mimetypes
import os
import re
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from string import Template
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .._runtime import AppHandler, http_get, port_parser, serve_http
from ._texts import (
    DETAILS_UNAVAILABLE,
    RATINGS_UNAVAILABLE,
    REVIEWS_HEADING,
    REVIEWS_UNAVAILABLE,
)

DETAILS_URL = "http://details:9080/details"
REVIEWS_URL = "http://reviews:9080/reviews"
RATINGS_URL = "http://ratings:9080/ratings"
UPSTREAM_TIMEOUT = 3.0
SESSION_COOKIE = "session"
STATIC_DIR = Path(__file__).with_name("static")

PRODUCTS = [
    {
        "id": 0,
        "title": "The Comedy of Errors",
        "descriptionHtml": (
            '<a href="https://en.wikipedia.org/wiki/The_Comedy_of_Errors">Wikipedia Summary</a>: '
            "The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his "
            "shortest and one of his most farcical comedies, with a major part of the humour "
            "coming from slapstick and mistaken identity, in addition to puns and word play."
        ),
    }
]

# The call graph the index page draws, as the original's service table does:
# (name, endpoint, the services it calls).
Service = tuple[str, str, tuple["Service", ...]]
SERVICES: Service = (
    "productpage",
    "",
    (
        ("http://details:9080", "details", ()),
        ("http://reviews:9080", "reviews", (("http://ratings:9080", "ratings", ()),)),
    ),
)

_API_PATH = re.compile(r"/api/v1/products/([^/]+)(?:/(reviews|ratings))?")
_STAR_COLOURS = {"black": "v2", "red": "v3"}

_PAGE = Template("""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>Simple Bookstore App</title>
<link rel="stylesheet" href="static/bookinfo.css">
</head>
<body>
<nav class="navbar">
  <a class="navbar-brand" href="#">BookInfo Sample</a>
$user
</nav>
<div class="container-fluid">
  <div class="row">
    <div class="col-md-12">
      <h3 class="text-center text-primary">$title</h3>
      <p>Summary: $description</p>
    </div>
  </div>
  <div class="row">
    <div class="col-md-6">
$details
    </div>
    <!-- reviews-version: $version -->
    <div class="col-md-6">
$reviews
    </div>
  </div>
</div>
</body>
</html>
""")

_INDEX = Template("""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>Simple Bookstore App</title>
<link rel="stylesheet" href="static/bookinfo.css">
</head>
<body>
<h3>Hello! This is a simple bookstore application consisting of three services as shown below</h3>
$services
<h4>Click on one of the links below to auto generate a request to the backend as a real user
or a tester</h4>
<p><a href="/productpage?u=normal">Normal user</a></p>
<p><a href="/productpage?u=test">Test user</a></p>
</body>
</html>
""")


def reviews_timeout() -> float:
    """Seconds per reviews attempt: 3.0 as the original (BOOKINFO_REVIEWS_TIMEOUT: tests only)."""
    return float(os.environ.get("BOOKINFO_REVIEWS_TIMEOUT", UPSTREAM_TIMEOUT))


def fetch_json(
    url: str, headers: dict[str, str], timeout: float, attempts: int, error: str
) -> tuple[int, dict[str, object]]:
    """Call an upstream up to `attempts` times; (200, its JSON) or (its status or 500, error)."""
    status = 500
    for _ in range(attempts):
        reply = http_get(url, headers, timeout)
        payload = reply.json() if reply.status == 200 else None
        if isinstance(payload, dict):
            return 200, payload
        status = reply.status or 500
    return status, {"error": error}


def get_details(product_id: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    """The book's details from the details service, one attempt."""
    url = f"{DETAILS_URL}/{quote(product_id)}"
    return fetch_json(url, headers, UPSTREAM_TIMEOUT, 1, DETAILS_UNAVAILABLE)


def get_reviews(product_id: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    """The book's reviews from the reviews service, in two attempts."""
    # Two attempts on purpose: the original keeps this "bug" for Istio's fault-injection task,
    # where it makes the page give up on reviews after 2 x 3 s instead of 3 s.
    url = f"{REVIEWS_URL}/{quote(product_id)}"
    return fetch_json(url, headers, reviews_timeout(), 2, REVIEWS_UNAVAILABLE)


def get_ratings(product_id: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    """The book's ratings straight from the ratings service, one attempt."""
    url = f"{RATINGS_URL}/{quote(product_id)}"
    return fetch_json(url, headers, UPSTREAM_TIMEOUT, 1, RATINGS_UNAVAILABLE)


def reviews_version(status: int, reviews: dict[str, object]) -> str:
    """Which reviews version answered: its own `version` field, else read from the stars."""
    if status != 200:
        return "unavailable"
    version = reviews.get("version")
    if version in ("v1", "v2", "v3"):
        return str(version)
    for review in _review_list(reviews):
        rating = review.get("rating")
        if isinstance(rating, dict) and rating.get("color") in _STAR_COLOURS:
            return _STAR_COLOURS[str(rating["color"])]
    return "v1"


def _review_list(reviews: dict[str, object]) -> list[dict[str, object]]:
    """The reviews JSON's list of reviews, ignoring anything malformed."""
    items = reviews.get("reviews")
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _user_html(user: str) -> str:
    """The navbar's right side: who is signed in, or the sign-in form."""
    if user:
        return (
            f'  <p class="navbar-text"><span>{html.escape(user)} '
            '( <a href="logout">sign out</a> )</span></p>'
        )
    return (
        '  <form method="post" action="login" name="login_form">\n'
        '    <input type="text" name="username" id="username" placeholder="User Name">\n'
        '    <input type="password" name="passwd" placeholder="Password">\n'
        '    <button type="submit">Sign in</button>\n'
        "  </form>"
    )


def _details_html(status: int, details: dict[str, object]) -> str:
    """The details column."""
    if status != 200:
        return (
            '      <h4 class="text-center text-primary">Error fetching product details!</h4>\n'
            f"      <p>{html.escape(str(details.get('error', '')))}</p>"
        )
    rows = [("Type", "type"), ("Pages", "pages"), ("Publisher", "publisher")]
    rows += [("Language", "language"), ("ISBN-10", "ISBN-10"), ("ISBN-13", "ISBN-13")]
    items = "".join(
        f"        <dt>{label}:</dt>{html.escape(str(details.get(key, '')))}\n"
        for label, key in rows
    )
    return (
        '      <h4 class="text-center text-primary">Book Details</h4>\n'
        f"      <dl>\n{items}      </dl>"
    )


def _rating_html(rating: object) -> str:
    """One review's stars (full then empty, in the rating's colour) or its rating error."""
    if not isinstance(rating, dict):
        return ""
    stars = rating.get("stars")
    if isinstance(stars, int) and stars:
        full = '<span class="glyphicon glyphicon-star"></span>' * stars
        empty = '<span class="glyphicon glyphicon-star-empty"></span>' * (5 - stars)
        color = html.escape(str(rating.get("color", "")))
        return f'        <font color="{color}">{full}{empty}</font>\n'
    if rating.get("error"):
        return f"        <p><i>{html.escape(str(rating['error']))}</i></p>\n"
    return ""


def _reviews_html(status: int, reviews: dict[str, object]) -> str:
    """The reviews column."""
    if status != 200:
        return (
            '      <h4 class="text-center text-primary">Error fetching product reviews!</h4>\n'
            f"      <p>{html.escape(str(reviews.get('error', '')))}</p>"
        )
    parts = [f'      <h4 class="text-center text-primary">{REVIEWS_HEADING}</h4>\n']
    for review in _review_list(reviews):
        parts.append(
            "      <blockquote>\n"
            f"        <p>{html.escape(str(review.get('text', '')))}</p>\n"
            f"        <small>{html.escape(str(review.get('reviewer', '')))}</small>\n"
            f"{_rating_html(review.get('rating'))}"
            "      </blockquote>\n"
        )
    served_by = f"<u>{html.escape(str(reviews.get('podname', '')))}</u>"
    cluster = str(reviews.get("clustername", "null"))
    if cluster != "null":
        served_by += f" on cluster <u>{html.escape(cluster)}</u>"
    parts.append(
        f"      <dl>\n        <dt>Reviews served by:</dt>\n        {served_by}\n      </dl>"
    )
    return "".join(parts)


def render_product_page(
    user: str,
    details_status: int,
    details: dict[str, object],
    reviews_status: int,
    reviews: dict[str, object],
) -> str:
    """The product page's HTML."""
    product = PRODUCTS[0]
    return _PAGE.substitute(
        user=_user_html(user),
        title=html.escape(str(product["title"])),
        description=product["descriptionHtml"],
        details=_details_html(details_status, details),
        version=reviews_version(reviews_status, reviews),
        reviews=_reviews_html(reviews_status, reviews),
    )


def _services_html(service: Service) -> str:
    """One service and, nested, the services it calls."""
    name, endpoint, children = service
    nested = "".join(_services_html(child) for child in children)
    return (
        f"<table><tr><th>name</th><td>{html.escape(name)}</td></tr>"
        f"<tr><th>endpoint</th><td>{html.escape(endpoint)}</td></tr>"
        f"<tr><th>children</th><td>{nested}</td></tr></table>"
    )


def render_index() -> str:
    """The index page's HTML."""
    return _INDEX.substitute(services=_services_html(SERVICES))


class ProductPageHandler(AppHandler):
    """Serves the product page, the sign-in flow, the JSON API and the stylesheet."""

    def do_GET(self) -> None:
        """Answer a GET."""
        path = urlsplit(self.path).path
        api = _API_PATH.fullmatch(path)
        if path in ("/", "/index.html"):
            self.send_text(200, render_index(), "text/html")
        elif path == "/health":
            self.send_text(200, "Product page is healthy")
        elif path == "/productpage":
            self.product_page()
        elif path == "/logout":
            self.redirect(f"{SESSION_COOKIE}=; Path=/; Max-Age=0")
        elif path == "/api/v1/products":
            self.send_json(200, PRODUCTS)
        elif api is not None:
            fetch = {None: get_details, "reviews": get_reviews, "ratings": get_ratings}
            status, payload = fetch[api.group(2)](unquote(api.group(1)), self.upstream_headers())
            self.send_json(status, payload)
        elif path.startswith("/static/"):
            self.static_file(path.removeprefix("/static/"))
        else:
            self.send_text(404, f"no such page: {path}\n")

    def do_POST(self) -> None:
        """Answer a POST: only /login takes one."""
        if urlsplit(self.path).path != "/login":
            self.send_text(404, f"no such page: {self.path}\n")
            return
        length = int(self.headers.get("content-length") or 0)
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        form.update(parse_qs(urlsplit(self.path).query))
        user = (form.get("username") or [""])[0]
        if user:
            self.redirect(f"{SESSION_COOKIE}={quote(user, safe='')}; Path=/; HttpOnly")
        else:
            self.redirect(f"{SESSION_COOKIE}=; Path=/; Max-Age=0")

    def redirect(self, cookie: str) -> None:
        """Set the session cookie and send the browser back to the product page."""
        self.send_body(
            302, b"", "text/plain", (("Location", "/productpage"), ("Set-Cookie", cookie))
        )

    def session_user(self) -> str:
        """The signed-in user from the session cookie, or ""."""
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(self.headers.get("cookie") or "")
        except CookieError:
            return ""
        morsel = cookies.get(SESSION_COOKIE)
        return unquote(morsel.value) if morsel is not None else ""

    def upstream_headers(self) -> dict[str, str]:
        """Headers for calls to details and reviews: tracing context plus `end-user`."""
        headers = self.forwarded_headers()
        user = self.session_user()
        if user:
            # The header Istio's routing matches on (e.g. `end-user: jason` -> reviews v2).
            headers["end-user"] = user
        return headers

    def product_page(self) -> None:
        """Render the product page from details and reviews."""
        headers = self.upstream_headers()
        details_status, details = get_details("0", headers)
        reviews_status, reviews = get_reviews("0", headers)
        page = render_product_page(
            self.session_user(), details_status, details, reviews_status, reviews
        )
        self.send_text(200, page, "text/html")

    def static_file(self, name: str) -> None:
        """Serve a file from the static directory (no subdirectories)."""
        file = STATIC_DIR / name
        if "/" in name or name.startswith(".") or not file.is_file():
            self.send_text(404, f"no such file: /static/{name}\n")
            return
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self.send_body(200, file.read_bytes(), content_type)


def main(argv: list[str] | None = None) -> None:
    """Run the product page until SIGTERM."""
    args = port_parser(__doc__).parse_args(argv)
    serve_http(ProductPageHandler, args.port, "productpage")


if __name__ == "__main__":
    main()
