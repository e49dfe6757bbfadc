"""Small template helpers for the shared UI: pagination links, navigation, initials."""

from __future__ import annotations

from typing import Any

from django import template

from marketplace.navigation import NavLink, build_navigation

register = template.Library()


@register.simple_tag(takes_context=True)
def query_replace(context: dict[str, Any], **changes: Any) -> str:
    """The current query string with ``changes`` applied, e.g. ``?{% query_replace page=2 %}``.

    Other parameters (filters, sort order) are preserved; a value of ``None`` or ``""``
    drops the parameter.
    """
    request = context.get("request")
    query = request.GET.copy() if request is not None else None
    if query is None:
        from django.http import QueryDict

        query = QueryDict(mutable=True)
    for key, value in changes.items():
        if value is None or value == "":
            query.pop(key, None)
        else:
            query[key] = str(value)
    return query.urlencode()


@register.simple_tag(takes_context=True)
def query_page(context: dict[str, Any], number: int, param: str | None = None) -> str:
    """``query_replace`` for a page number under ``param`` (default ``page``): a page with
    two paginated lists gives the second its own parameter."""
    return str(query_replace(context, **{param or "page": number}))


@register.simple_tag(takes_context=True)
def primary_navigation(context: template.Context) -> list[NavLink]:
    """Navigation links: from the ``navigation`` context processor when it is registered,
    else built here, so the layout works either way; built here too when the page names
    the ``nav_section`` it belongs under (``marketplace.navigation``)."""
    links = context.get("nav_links")
    section = context.get("nav_section")
    if links is not None and not section:
        return links  # type: ignore[no-any-return]
    request = context.get("request")
    return build_navigation(request, section=section) if request is not None else []


@register.filter
def initials(value: object) -> str:
    """Up to two initials for an avatar: "ada@example.com" → "A", "Ada Lovelace" → "AL"."""
    text = str(value or "").split("@", 1)[0].replace(".", " ").replace("_", " ").replace("-", " ")
    parts = [part for part in text.split() if part]
    return "".join(part[0] for part in parts[:2]).upper() or "?"
