"""Test overrides: fast hashing, in-memory email, a per-run test database name."""

import os

from config.settings import *  # noqa: F403
from config.settings import DATABASES

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
# Several suites may run side by side on one server (developers, CI): keep them apart.
DATABASES["default"]["TEST"] = {
    "NAME": f"test_hashgrid_{os.environ.get('HASHGRID_TEST_DB', 'main')}"
}
DATABASES["default"]["CONN_MAX_AGE"] = 0

# A Celery worker started by a test (a subprocess) must use that test's database.
if os.environ.get("HASHGRID_DB_NAME_OVERRIDE"):
    DATABASES["default"]["NAME"] = os.environ["HASHGRID_DB_NAME_OVERRIDE"]
    # A worker keeps its connection between tasks, as in production (where a dropped one
    # is replaced by the health check before the next task uses it).
    DATABASES["default"]["CONN_MAX_AGE"] = 60
