"""Transitional alias: metering is installed in config.settings now. Remove when unused."""

from config.test_settings import *  # noqa: F403
