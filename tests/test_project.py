"""Project-wide promises: migrations are in step with models, settings fail fast."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command

from config.env import ImproperlyConfiguredEnv, env_bool, env_choice, env_decimal, env_int


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
    with pytest.raises(ImproperlyConfiguredEnv, match="at most 1"):
        env_decimal("SHARE", "0.80", minimum="0", maximum="1", environ={"SHARE": "1.5"})
    with pytest.raises(ImproperlyConfiguredEnv, match="decimal number"):
        env_decimal("SHARE", "0.80", environ={"SHARE": "eighty"})
    assert env_decimal("SHARE", "0.80", environ={}) == Decimal("0.80")
    assert env_int("PORT", 1, environ={"PORT": " 8080 "}) == 8080
    assert env_bool("DEBUG", False, environ={"DEBUG": "yes"}) is True


@pytest.mark.django_db
def test_healthz_is_200_when_database_and_broker_answer(client, settings, tmp_path) -> None:
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(tmp_path),
        "data_folder_out": str(tmp_path),
    }
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}


@pytest.mark.django_db
def test_healthz_is_503_when_the_broker_is_down(client, settings) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:9/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "broker": "down"}


def _production_environment() -> dict[str, str]:
    return {
        **os.environ,
        "HASHGRID_ENV": "production",
        "DJANGO_SECRET_KEY": "x" * 20 + "-production-test-key-" + "y" * 30,
        "DJANGO_ALLOWED_HOSTS": "hashgrid.example",
        "DATABASE_URL": os.environ.get(
            "DATABASE_URL", "postgres://postgres@127.0.0.1:54329/hashgrid"
        ),
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
        "CACHE_URL": "redis://127.0.0.1:6379/1",
        "STRIPE_SECRET_KEY": "sk_test_placeholder",
        # base64 of a 32-byte Ed25519 seed (the receipt-signing key production must set).
        "HASHGRID_GATEWAY_SIGNING_KEY": "cHJvZHVjdGlvbi10ZXN0LXJlY2VpcHQta2V5LTMyYiE=",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_check_deploy() -> None:
    result = _check_deploy(_production_environment())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_warns_when_rate_limits_would_be_per_process() -> None:
    env = {k: v for k, v in _production_environment().items() if k != "CACHE_URL"}
    result = _check_deploy(env)
    assert result.returncode == 1
    assert "?: (hashgrid.W001) The default cache is each process's own memory" in result.stderr


def test_check_deploy_warns_when_the_content_security_policy_is_off() -> None:
    result = _check_deploy({**_production_environment(), "HASHGRID_CSP": "0"})
    assert result.returncode == 1
    assert "?: (hashgrid.W002) HASHGRID_CSP is off" in result.stderr


def test_production_refuses_to_start_without_a_secret_key() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    env.update({"HASHGRID_ENV": "production", "DJANGO_SETTINGS_MODULE": "config.settings"})
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_application_code_type_checks(tmp_path) -> None:
    """mypy (django-stubs, settings in pyproject.toml) finds nothing in the apps."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "config",
            "accounts",
            "marketplace",
            "capacity",
            "contracts",
            "billing",
            "devtools",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found")
