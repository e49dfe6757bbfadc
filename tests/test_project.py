"""Project-wide promises: migrations are in step with models, settings fail fast."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from config.env import ImproperlyConfiguredEnv, env_bool, env_choice, env_int


@pytest.mark.django_db
def test_models_and_migrations_are_in_step() -> None:
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_env_helpers_fail_fast_on_bad_values() -> None:
    with pytest.raises(ImproperlyConfiguredEnv, match="PORT must be an integer"):
        env_int("PORT", 1, environ={"PORT": "eighty"})
    with pytest.raises(ImproperlyConfiguredEnv, match="at least 5"):
        env_int("INTERVAL", 60, minimum=5, environ={"INTERVAL": "1"})
    with pytest.raises(ImproperlyConfiguredEnv, match="boolean"):
        env_bool("DEBUG", False, environ={"DEBUG": "maybe"})
    with pytest.raises(ImproperlyConfiguredEnv, match="one of development, production"):
        env_choice("ENV", "development", ("development", "production"), environ={"ENV": "prod"})
    assert env_int("PORT", 1, environ={"PORT": " 8080 "}) == 8080
    assert env_bool("DEBUG", False, environ={"DEBUG": "yes"}) is True
