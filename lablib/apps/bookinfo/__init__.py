"""Bookinfo, Istio's four-service sample (productpage, details, reviews v1-v3, ratings), locally.

`classify` tells which reviews version produced a product page, from the page alone.
"""

from __future__ import annotations

import re

from ._texts import RATING_ERROR, REVIEWS_HEADING, REVIEWS_UNAVAILABLE

__all__ = ["classify"]

_STAR_COLOUR = re.compile(r'<font color="(red|black)">')
_MARKER = re.compile(r"<!-- reviews-version: (v1|v2|v3|unavailable) -->")


def classify(html: str) -> str:
    """Which reviews answered this product page: "v1", "v2", "v3", "unavailable" or "error"."""
    # The stars are the signal a learner sees (and the only one Istio's own productpage
    # gives): red stars come from reviews v3, black from v2, none at all from v1.
    if REVIEWS_UNAVAILABLE in html:
        return "unavailable"
    colours = set(_STAR_COLOUR.findall(html))
    if colours == {"red"}:
        return "v3"
    if colours == {"black"}:
        return "v2"
    if colours or REVIEWS_HEADING not in html:
        return "error"
    if RATING_ERROR not in html:
        return "v1"
    # v2 and v3 look alike when ratings failed: only our productpage's marker can tell them
    # apart, and without it the page cannot be classified.
    marker = _MARKER.search(html)
    return marker.group(1) if marker and marker.group(1) in ("v2", "v3") else "error"
