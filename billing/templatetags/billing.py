from django import template

from billing.money import format_money

register = template.Library()


@register.filter
def money(amount_minor: int | None, currency: str) -> str:
    """``{{ invoice.total_minor|money:invoice.currency }}`` → ``$6,854.40``."""
    if amount_minor is None:
        return ""
    return format_money(int(amount_minor), currency)
