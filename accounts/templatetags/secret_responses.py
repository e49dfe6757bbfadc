"""``{% carries_secret %}``: a template that shows a secret keeps its response out of
caches (``accounts.response_headers``)."""

from __future__ import annotations

from django import template
from django.template.context import Context

from accounts.response_headers import mark_carries_secret

register = template.Library()


@register.simple_tag(takes_context=True)
def carries_secret(context: Context) -> str:
    """Mark the response being rendered as carrying a secret; renders nothing. Rendered
    without a request (an email, a test of the component) there is no response to mark."""
    request = context.get("request")
    if request is not None:
        mark_carries_secret(request)
    return ""
