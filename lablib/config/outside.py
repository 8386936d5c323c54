"""The sites the local outside world serves (local/outside.py runs them): one home for
which external names answer on the local mesh, read by the stand-in and by the analyzer."""

from __future__ import annotations

__all__ = ["REDIRECTS_TO_HTTPS", "SITES", "served_hosts", "site_of"]

# Each site: the names its certificate carries, and the title of its page.
SITES: dict[str, tuple[tuple[str, ...], str]] = {
    "httpbin.org": (("httpbin.org", "www.httpbin.org"), "httpbin.org"),
    "edition.cnn.com": (("edition.cnn.com",), "CNN International - Breaking News"),
    "www.google.com": (("www.google.com",), "Google"),
    "istio.io": (("istio.io", "www.istio.io"), "Istio"),
    "*.wikipedia.org": (("*.wikipedia.org", "wikipedia.org"), "Wikipedia"),
}
REDIRECTS_TO_HTTPS = frozenset({"edition.cnn.com"})


def site_of(host: str) -> str | None:
    """The site serving `host` (a Host header or SNI, port allowed), or None."""
    name = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else host
    for site, (names, _) in SITES.items():
        for pattern in names:
            if pattern == name or (pattern.startswith("*.") and name.endswith(pattern[1:])
                                   and name.count(".") == pattern.count(".")):
                return site
    return None


def served_hosts() -> list[str]:
    """One name of each site, for messages."""
    return [names[0] for names, _ in SITES.values()]
