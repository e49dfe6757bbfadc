from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    """The front door: search and its cache, offer and checkout pages, dashboards."""

    name = "marketplace"
    verbose_name = "Marketplace"
