"""ASGI entry point of the gateway (``gateway.asgi:application``)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

from gateway.app import create_app  # noqa: E402 - Django must be set up first

application = create_app()
