"""Deployment checks of the capacity app, run by ``manage.py check --deploy``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register


@register(Tags.security, deploy=True)
def agent_urls_public_only(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Agent URLs on private networks are for the simulator: in a deployment they let an
    enrolled agent aim the poller, bearer token included, at the platform's own network."""
    if settings.AGENT_ALLOW_PRIVATE_URLS:
        return [
            Warning(
                "Agent URLs may point at loopback and private networks: the metering "
                "poller can be aimed at internal services (SSRF).",
                hint="Unset HASHGRID_AGENT_ALLOW_PRIVATE_URLS (off in production).",
                id="capacity.W001",
            )
        ]
    return []
