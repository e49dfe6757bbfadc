"""Reference data: rows every database must hold (GPU catalog, default SLA, schedules).

Each app writes one ``ensure(apps)`` function that creates its rows idempotently through
``apps.get_model``. A data migration calls it with the historical registry, and
:func:`connect` also runs it on ``post_migrate`` — so the rows come back after anything
that empties the tables and re-emits the signal, such as ``manage.py flush`` (which the
transactional tests run after each test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate

Ensure = Callable[[Any], None]


def connect(app_config: AppConfig, ensure: Ensure) -> None:
    """Run ``ensure`` after every migrate/flush of ``app_config``'s app."""

    def handler(sender: AppConfig, apps: Any = None, **kwargs: Any) -> None:
        from django.apps import apps as global_apps

        ensure(apps if apps is not None else global_apps)

    post_migrate.connect(
        handler, sender=app_config, weak=False, dispatch_uid=f"reference:{app_config.label}"
    )
