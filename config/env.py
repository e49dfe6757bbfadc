"""Typed readers for environment variables.

Every setting that comes from the environment goes through one of these helpers, so a
bad value stops the process at start-up with a message naming the variable, instead of
surfacing later as a confusing error deep inside a request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation


class ImproperlyConfiguredEnv(RuntimeError):
    """An environment variable is missing or holds a value of the wrong shape."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(
    name: str, default: str | None = None, *, environ: Mapping[str, str] = os.environ
) -> str:
    value = environ.get(name)
    if value is None:
        if default is None:
            raise ImproperlyConfiguredEnv(f"{name} must be set")
        return default
    return value


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] = os.environ) -> bool:
    value = environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfiguredEnv(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> int:
    value = environ.get(name)
    if value is None:
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ImproperlyConfiguredEnv(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfiguredEnv(f"{name} must be at least {minimum}, got {number}")
    return number


def env_list(
    name: str, default: list[str], *, environ: Mapping[str, str] = os.environ
) -> list[str]:
    value = environ.get(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(
    name: str, default: str, choices: tuple[str, ...], *, environ: Mapping[str, str] = os.environ
) -> str:
    value = environ.get(name, default).strip().lower()
    if value not in choices:
        raise ImproperlyConfiguredEnv(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_decimal(
    name: str,
    default: str,
    *,
    minimum: str | None = None,
    maximum: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Decimal:
    raw = environ.get(name, default).strip()
    try:
        number = Decimal(raw)
    except InvalidOperation:
        raise ImproperlyConfiguredEnv(f"{name} must be a decimal number, got {raw!r}") from None
    if not number.is_finite():
        raise ImproperlyConfiguredEnv(f"{name} must be a finite decimal number, got {raw!r}")
    if minimum is not None and number < Decimal(minimum):
        raise ImproperlyConfiguredEnv(f"{name} must be at least {minimum}, got {number}")
    if maximum is not None and number > Decimal(maximum):
        raise ImproperlyConfiguredEnv(f"{name} must be at most {maximum}, got {number}")
    return number
