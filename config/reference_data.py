"""Reference data: rows every database must hold (GPU catalog, default SLA, schedules).

Each app writes one ``ensure_...`` function that creates its rows idempotently from the
model classes it is given. Its data migration passes the historical models (the only
place ``apps.get_model`` belongs); :func:`connect` runs it on ``post_migrate`` with the
app's own models, so the rows come back after anything that empties the tables and
re-emits the signal, such as ``manage.py flush`` (which the transactional tests run
after each test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def connect(app_config: AppConfig, ensure: Callable[[], object]) -> None:
    """Run ``ensure`` after every migrate/flush of ``app_config``'s app."""

    def handler(sender: AppConfig, **kwargs: Any) -> None:
        ensure()

    post_migrate.connect(
        handler, sender=app_config, weak=False, dispatch_uid=f"reference:{app_config.label}"
    )
