"""Money in the admin as money: "Monthly commitment 1,250.00 USD", not "Monthly commitment
minor 125000".

Models keep money as integer minor units in fields named ``*_minor`` (with the row's
currency beside them or one relation away). ``MoneyColumnsMixin`` swaps every such field
an admin lists, shows or makes read-only for a display column named after the field
without "minor", formatted in major units with the currency, and keeps the raw field out
of any form, so a swapped field is never editable by accident.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.contrib import admin
from django.db import models

from contracts.money import minor_to_major

MINOR_SUFFIX = "_minor"
# Where a row's currency is when it has none of its own, in the order tried.
CURRENCY_PATHS = ("currency", "invoice.currency", "statement.currency", "contract.currency")


def row_currency(obj: object) -> str:
    """The currency of ``obj``'s amounts ('' when nothing names one)."""
    for path in CURRENCY_PATHS:
        value: Any = obj
        for part in path.split("."):
            value = getattr(value, part, None)
            if value is None:
                break
        if isinstance(value, str) and value:
            return value
    return ""


def format_money(amount_minor: int | None, currency: str) -> str:
    """``1,250.00 USD`` for 125000 minor units of USD; an em dash for no amount."""
    if amount_minor is None:
        return "—"
    return f"{minor_to_major(amount_minor):,.2f} {currency}".strip()


def _label(field: models.Field) -> str:
    name = str(field.verbose_name)
    stripped = name[: -len(" minor")] if name.endswith(" minor") else name
    return stripped[:1].upper() + stripped[1:]


def money_column(field: models.Field) -> Callable[[Any, object], str]:
    """A display column for a ``*_minor`` field: its amount in major units, with currency."""

    @admin.display(description=_label(field), ordering=field.name)
    def column(model_admin: Any, obj: object) -> str:
        return format_money(getattr(obj, field.name), row_currency(obj))

    return column


class MoneyColumnsMixin:
    """Mix into a ``ModelAdmin`` or inline before the Django base class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        model: type[models.Model] = getattr(self, "model")  # noqa: B009
        money_fields = {
            field.name: field for field in model._meta.fields if field.name.endswith(MINOR_SUFFIX)
        }

        def swap(names: Sequence[Any] | None) -> Sequence[Any] | None:
            if names is None:
                return None
            result = []
            for name in names:
                if isinstance(name, str) and name in money_fields:
                    display_name = f"{name[: -len(MINOR_SUFFIX)]}_money"
                    if not hasattr(type(self), display_name):
                        setattr(type(self), display_name, money_column(money_fields[name]))
                    result.append(display_name)
                else:
                    result.append(name)
            return type(names)(result) if isinstance(names, tuple) else result

        # Django's admin options are class attributes; set per instance with setattr so the
        # mixin declares none of them (their types are Django's).
        if hasattr(self, "list_display"):  # inlines have none
            setattr(self, "list_display", swap(getattr(self, "list_display")))  # noqa: B009, B010
        readonly = list(swap(getattr(self, "readonly_fields")) or ())  # noqa: B009
        setattr(self, "fields", swap(getattr(self, "fields")))  # noqa: B009, B010
        # Every money field, listed or not, is shown as money on the change and view pages
        # and never as a raw form field.
        for name in sorted(money_fields):
            display_name = f"{name[: -len(MINOR_SUFFIX)]}_money"
            if not hasattr(type(self), display_name):
                setattr(type(self), display_name, money_column(money_fields[name]))
            if display_name not in readonly:
                readonly.append(display_name)
        setattr(self, "readonly_fields", tuple(readonly))  # noqa: B010
        if money_fields:
            excluded = tuple(getattr(self, "exclude", None) or ())
            setattr(self, "exclude", excluded + tuple(sorted(money_fields)))  # noqa: B010
