"""Health of the parts the site cannot work without: the database and the broker."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.db.utils import Error as DatabaseError
from kombu import Connection
from kombu.exceptions import KombuError


def database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except DatabaseError:
        return False


def broker_ok() -> bool:
    transport_options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})
    try:
        with Connection(
            settings.CELERY_BROKER_URL,
            connect_timeout=2,
            transport_options=transport_options,
        ) as broker:
            broker.ensure_connection(max_retries=1, timeout=2)
            return True
    except (KombuError, OSError, ConnectionError):
        return False
