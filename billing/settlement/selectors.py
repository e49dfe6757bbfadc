"""Reads for the partner's earnings pages: statements, charts, a statement's detail.

Buyers are never named to partners: ``buyer_alias`` is a keyed hash of the partner and
the buyer ("Buyer #3f2a9c"), stable for one partner and unrelated across partners, so a
partner can tell its buyers apart without learning who they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from django.db.models import Q, QuerySet, Sum
from django.utils.crypto import salted_hmac

from accounts.models import Organization
from billing.models import (
    Attribution,
    ConnectAccount,
    Payout,
    SettlementStatement,
    StatementAdjustment,
    StatementStatus,
)
from billing.money import minor_to_major
from config.charts import ChartSeries, chart_spec

CHART_HEIGHT = 120
BAR_PITCH = 48
BAR_WIDTH = 32
SITE_BAR_HEIGHT = 14
# A site's row: its label above its bar.
SITE_ROW_HEIGHT = 40


def buyer_alias(*, partner_id: int, buyer_id: int) -> str:
    digest = salted_hmac("hashgrid.settlement.buyer-alias", f"{partner_id}:{buyer_id}").hexdigest()
    return f"Buyer #{digest[:6]}"


def statements_of(*, partner: Organization) -> QuerySet[SettlementStatement]:
    return (
        SettlementStatement.objects.for_organization(partner)  # type: ignore[attr-defined]
        .select_related("payout")
        .order_by("-month", "currency")
    )


def connect_account_of(*, partner: Organization) -> ConnectAccount | None:
    return ConnectAccount.objects.filter(partner=partner).first()


@dataclass(frozen=True)
class Bar:
    label: str
    amount_minor: int
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Chart:
    currency: str
    bars: list[Bar]
    width: int
    height: int

    def spec(self, *, x_title: str, label: str) -> dict[str, Any]:
        """These bars as a Chart.js spec (``config.charts``), money on the value axis."""
        return chart_spec(
            kind="bar",
            labels=[bar.label for bar in self.bars],
            series=[
                ChartSeries(
                    label=label,
                    values=[minor_to_major(bar.amount_minor) for bar in self.bars],
                    unit=self.currency,
                )
            ],
            x_title=x_title,
            y_title=f"{label} ({self.currency})",
        )

    @property
    def month_spec(self) -> dict[str, Any]:
        return self.spec(x_title="Statement month (UTC)", label="Net earnings")

    @property
    def site_spec(self) -> dict[str, Any]:
        return self.spec(x_title="Site", label="Your share")


def _scale(value: int, largest: int, span: int) -> int:
    return 0 if largest <= 0 or value <= 0 else max(1, value * span // largest)


def earnings_by_month(*, partner: Organization, currency: str, months: int = 12) -> Chart:
    """Vertical bars: the partner's net earnings (earnings + adjustments) per month."""
    rows = list(
        SettlementStatement.objects.filter(partner=partner, currency=currency)
        .order_by("-month")
        .values_list("month", "earnings_minor", "adjustments_minor")[:months]
    )[::-1]
    largest = max((earned + adjusted for _, earned, adjusted in rows), default=0)
    bars = []
    for index, (month, earned, adjusted) in enumerate(rows):
        height = _scale(earned + adjusted, largest, CHART_HEIGHT)
        bars.append(
            Bar(
                label=f"{month:%b %Y}",
                amount_minor=earned + adjusted,
                x=index * BAR_PITCH + (BAR_PITCH - BAR_WIDTH) // 2,
                y=CHART_HEIGHT - height,
                width=BAR_WIDTH,
                height=height,
            )
        )
    # A fixed width (a year of bars), so one month is not stretched over the whole card.
    return Chart(currency=currency, bars=bars, width=months * BAR_PITCH, height=CHART_HEIGHT)


def earnings_by_site(*, partner: Organization, currency: str, width: int = 400) -> Chart:
    """Horizontal bars: the partner's share per site over every settled statement."""
    rows = list(
        Attribution.objects.filter(
            partner=partner, currency=currency, statement__isnull=False, site__isnull=False
        )
        .values("site__name")
        .annotate(total=Sum("partner_share_minor"))
        .order_by("-total", "site__name")
    )
    largest = max((int(row["total"]) for row in rows), default=0)
    bars = [
        Bar(
            label=row["site__name"],
            amount_minor=int(row["total"]),
            x=0,
            y=index * SITE_ROW_HEIGHT + 18,
            width=_scale(int(row["total"]), largest, width),
            height=SITE_BAR_HEIGHT,
        )
        for index, row in enumerate(rows)
    ]
    return Chart(
        currency=currency,
        bars=bars,
        width=width,
        height=max(1, len(rows)) * SITE_ROW_HEIGHT,
    )


def earnings_currencies(*, partner: Organization) -> list[str]:
    return sorted(
        set(SettlementStatement.objects.filter(partner=partner).values_list("currency", flat=True))
    )


@dataclass(frozen=True)
class StatementRow:
    site: str
    node: str
    contract: str
    buyer: str
    revenue_kind: str
    basis: str
    amount_minor: int
    partner_share_minor: int
    platform_fee_minor: int


def statement_rows(*, statement: SettlementStatement) -> list[StatementRow]:
    """The statement's attributions by site, node, contract and kind (buyers anonymized)."""
    grouped = (
        Attribution.objects.filter(statement=statement)
        .values(
            "site__name",
            "node__name",
            "contract_id",
            "buyer_id",
            "revenue_kind",
            "basis_unit",
        )
        .annotate(
            amount=Sum("amount_minor"),
            share=Sum("partner_share_minor"),
            fee=Sum("platform_fee_minor"),
            basis=Sum("basis_quantity"),
        )
        .order_by("site__name", "node__name", "contract_id", "revenue_kind", "basis_unit")
    )
    kinds = dict(Attribution._meta.get_field("revenue_kind").choices or [])
    return [
        StatementRow(
            site=row["site__name"] or "",
            node=row["node__name"] or "",
            contract=f"HG-C{row['contract_id']:06d}",
            buyer=buyer_alias(partner_id=statement.partner_id, buyer_id=row["buyer_id"]),
            revenue_kind=str(kinds.get(row["revenue_kind"], row["revenue_kind"])),
            basis=f"{row['basis'].normalize():f} {row['basis_unit']}".strip(),
            amount_minor=int(row["amount"]),
            partner_share_minor=int(row["share"]),
            platform_fee_minor=int(row["fee"]),
        )
        for row in grouped
    ]


def statement_site_totals(*, statement: SettlementStatement) -> list[tuple[str, int]]:
    return [
        (row["site__name"], int(row["total"]))
        for row in Attribution.objects.filter(statement=statement)
        .values("site__name")
        .annotate(total=Sum("partner_share_minor"))
        .order_by("site__name")
    ]


def statement_adjustments(*, statement: SettlementStatement) -> list[StatementAdjustment]:
    return list(
        StatementAdjustment.objects.filter(statement=statement)
        .select_related("credit_note")
        .order_by("pk")
    )


def payout_of(*, statement: SettlementStatement) -> Payout | None:
    return Payout.objects.filter(statement=statement).first()


@dataclass(frozen=True)
class EarningsSummary:
    paid_out_minor: int
    awaiting_payout_minor: int
    carried_minor: int
    latest_month: date | None


def earnings_summary(*, partner: Organization, currency: str) -> EarningsSummary:
    statements = SettlementStatement.objects.filter(partner=partner, currency=currency)
    paid = Payout.objects.filter(partner=partner, currency=currency, status="paid").aggregate(
        total=Sum("amount_minor")
    )["total"]
    waiting = statements.filter(
        Q(status=StatementStatus.APPROVED) | Q(status=StatementStatus.DRAFT)
    ).aggregate(total=Sum("payout_minor"))["total"]
    latest = statements.order_by("-month").first()
    return EarningsSummary(
        paid_out_minor=int(paid or 0),
        awaiting_payout_minor=int(waiting or 0),
        carried_minor=latest.carried_out_minor if latest else 0,
        latest_month=latest.month if latest else None,
    )
