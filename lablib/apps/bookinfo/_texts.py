"""Texts the Bookinfo apps show, word for word as Istio's (labs and classify match them)."""

DETAILS_UNAVAILABLE = "Sorry, product details are currently unavailable for this book."
REVIEWS_UNAVAILABLE = "Sorry, product reviews are currently unavailable for this book."
RATINGS_UNAVAILABLE = "Sorry, product ratings are currently unavailable for this book."
RATING_ERROR = "Ratings service is currently unavailable"
REVIEWS_HEADING = "Book Reviews"
