"""REST API of the front door: search offers, quote, reserve (``views``, ``serializers``)."""

from marketplace.api.views import OfferSearchApi, QuoteApi, ReservationCreateApi

__all__ = ["OfferSearchApi", "QuoteApi", "ReservationCreateApi"]
