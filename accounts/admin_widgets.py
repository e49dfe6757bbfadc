"""Admin widgets that hold against hostile input.

Django's ``AutocompleteSelect`` looks the posted value up as it came when it re-renders
a refused form (``pk__in=[value]``), so a value that is not an id ("1e400", "東京")
raised ``ValueError`` in the template: a 500 instead of the field's own "Select a valid
choice" message. ``IdAutocompleteMixin`` gives a ModelAdmin's or inline's
``autocomplete_fields`` a widget that drops such values before the lookup; the field's
validation has already refused them with its message.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.options import BaseModelAdmin
from django.contrib.admin.widgets import AutocompleteSelect
from django.db.models import ForeignKey
from django.http import HttpRequest


class IdAutocompleteSelect(AutocompleteSelect):
    """``AutocompleteSelect`` that renders only posted values that can be ids."""

    def optgroups(self, name: str, value: Any, attr: dict[str, Any] | None = None) -> Any:
        return super().optgroups(name, [item for item in value if str(item).isdigit()], attr)


class IdAutocompleteMixin(BaseModelAdmin):  # type: ignore[type-arg]
    """Autocomplete foreign keys through ``IdAutocompleteSelect``."""

    def formfield_for_foreignkey(
        self, db_field: ForeignKey, request: HttpRequest, **kwargs: Any
    ) -> Any:
        if "widget" not in kwargs and db_field.name in self.get_autocomplete_fields(request):
            kwargs["widget"] = IdAutocompleteSelect(
                db_field, self.admin_site, using=kwargs.get("using")
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)
