"""One owner for billable usage, as a property (hypothesis): for random reservations,
instances on on-demand GPU lines (started and stopped at any minute around the month, or
still running), inference keys (created, revoked), on-demand lines (started, ended),
tokens and busy time reported on any GPU at any minute around the month, and outages, the month's invoice, its settlement
attributions and the buyer's month to date agree to the cent:

    Σ invoice lines = Σ settlement attributions = dashboard month to date,

for every contract, and line by line between the invoice and the dashboard. (No
commitments, fees or earlier months: those are on an invoice only.)
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import count

import pytest
from django.db.models import Sum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.invoices import draft_invoices, finalize_invoices
from billing.models import Attribution, Invoice, PaymentStatus
from billing.settlement.attribution import attribute_paid_invoices
from contracts.models import ContractLine
from contracts.usage import month_to_date
from tests.contracts.usage_builders import (
    active_contract,
    gpu_line,
    inference_line,
    inference_product,
    instance,
    key_for,
    observe,
    reserved_line,
    use,
    work,
)
from tests.factories import OfferFactory, OrganizationFactory, SiteFactory, gpu_pool

OCTOBER = date(2026, 10, 1)
OCT_1 = datetime(2026, 10, 1, tzinfo=UTC)
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
CLOSED_AT = datetime(2026, 11, 5, tzinfo=UTC)
GPUS = 6
MINUTES_IN_OCTOBER = 31 * 1440
_slugs = count()

# Minutes from Oct 1 00:00 (negative: September; past 44,640: November).
around_october = st.integers(min_value=-2 * 1440, max_value=MINUTES_IN_OCTOBER + 1440)
prices = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("20"), places=4)
# A minute (from the hold's start) and a length the held GPU is down, if it is.
hold_outages = st.none() | st.tuples(
    st.integers(min_value=0, max_value=20 * 1440), st.integers(min_value=1, max_value=1440)
)
holds = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=GPUS - 1),
        around_october,
        st.integers(min_value=1, max_value=40 * 1440),  # minutes held
        hold_outages,
    ),
    min_size=1,
    max_size=2,
)
# Created from two days before the month to mid-month, revoked some minutes after.
keys = st.lists(
    st.tuples(
        st.integers(min_value=-2 * 1440, max_value=15 * 1440),
        st.none() | st.integers(min_value=0, max_value=30 * 1440),
    ),
    min_size=1,
    max_size=2,
)
usage = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3),  # which key (of the buyer's)
        st.integers(min_value=0, max_value=GPUS - 1),
        around_october,
        st.integers(min_value=0, max_value=10**9),  # busy ms or input tokens
        st.integers(min_value=0, max_value=10**9),  # output tokens
    ),
    max_size=10,
)
buyers = st.lists(
    st.fixed_dictionaries(
        {
            "reservations": st.lists(st.tuples(holds, prices), max_size=2),
            # (GPU, start minute, minutes held or None: still running) of instances.
            "instances": st.lists(
                st.tuples(
                    st.integers(min_value=0, max_value=GPUS - 1),
                    around_october,
                    st.none() | st.integers(min_value=1, max_value=40 * 1440),
                ),
                max_size=2,
            ),
            "inference_keys": keys,
            "line_start": st.integers(min_value=-2 * 1440, max_value=10 * 1440),
            # When the on-demand lines end (minutes after they start), if they do.
            "line_end": st.none() | st.integers(min_value=1, max_value=60 * 1440),
            "prices": st.tuples(prices, prices, prices),
            "usage": usage,
        }
    ),
    min_size=1,
    max_size=2,
)
outages = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=GPUS - 1),
        st.integers(min_value=0, max_value=30),  # day of October
        st.integers(min_value=0, max_value=1439),  # first minute down
        st.integers(min_value=1, max_value=1440),  # minutes down (within the day)
    ),
    max_size=6,
)


FOREVER = datetime(9999, 1, 1, tzinfo=UTC)


def minute(offset: int) -> datetime:
    return OCT_1 + timedelta(minutes=offset)


def _go_down(down: dict[int, dict[date, set[int]]], gpu: int, at: int, minutes: int) -> None:
    """GPU ``gpu`` down for ``minutes`` from minute ``at`` of October (clipped to its day)."""
    day, first = divmod(at, 1440)
    if 0 <= day < 31:
        down[gpu].setdefault(date(2026, 10, 1 + day), set()).update(
            range(first, min(1440, first + minutes))
        )


def _build_buyer(spec, *, offer, devices, product, held, down) -> int:
    contract = active_contract(buyer=OrganizationFactory(is_buyer=True), since=minute(-40_000))
    for hold_specs, rate in spec["reservations"]:
        free = []
        for gpu, start, minutes, outage in hold_specs:
            period = (minute(start), minute(start + minutes))
            if all(period[1] <= s or e <= period[0] for s, e in held[gpu]):
                held[gpu].append(period)
                free.append((devices[gpu], *period))
                if outage is not None:
                    _go_down(down, gpu, start + outage[0] % minutes, outage[1])
        if free:
            reserved_line(contract=contract, offer=offer, holds=free, rate=rate)
    gpu_rate, input_price, output_price = spec["prices"]
    since = minute(spec["line_start"])
    ended_at = None if spec["line_end"] is None else since + timedelta(minutes=spec["line_end"])
    if spec["instances"]:
        line = gpu_line(contract=contract, offer=offer, since=since, rate=gpu_rate)
        ContractLine.objects.filter(pk=line.pk).update(ended_at=ended_at)
        for gpu, start, minutes in spec["instances"]:
            period = (minute(start), minute(start + minutes) if minutes else FOREVER)
            if all(period[1] <= s or e <= period[0] for s, e in held[gpu]):
                held[gpu].append(period)
                workload = instance(
                    line=line,
                    gpus=[devices[gpu]],
                    start=period[0],
                    end=None if minutes is None else period[1],
                )
                # Busy time under the assignment: shown, never billed.
                work(workload=workload, gpu=devices[gpu], at=period[0], busy_ms=30_000)
    keys_owned = []
    if spec["inference_keys"]:
        line = inference_line(
            contract=contract,
            product=product,
            since=since,
            input_price=input_price,
            output_price=output_price,
        )
        ContractLine.objects.filter(pk=line.pk).update(ended_at=ended_at)
        for created, revoked_after in spec["inference_keys"]:
            created_at = minute(created)
            revoked_at = (
                None if revoked_after is None else created_at + timedelta(minutes=revoked_after)
            )
            keys_owned.append(key_for(line, created_at=created_at, revoked_at=revoked_at))
    for which, gpu, at, first, second in spec["usage"] if keys_owned else ():
        use(
            key=keys_owned[which % len(keys_owned)],
            product=product,
            gpu=devices[gpu],
            at=minute(at),
            input_tokens=first,
            output_tokens=second,
        )
    return contract.pk


@pytest.mark.django_db
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(month=st.tuples(buyers, outages))
def test_invoice_settlement_and_dashboard_agree_to_the_cent(month, partner_org):
    buyer_specs, outage_specs = month
    # Examples share one database transaction: each builds its own site, GPUs and buyers.
    site = SiteFactory(organization=partner_org)
    devices = gpu_pool(site=site, gpus=GPUS, per_node=3)
    offer = OfferFactory(site=site, gpu_count=GPUS)
    product = inference_product(f"property-llm-{next(_slugs)}")
    down: dict[int, dict[date, set[int]]] = defaultdict(dict)
    for gpu, day, first, minutes in outage_specs:
        _go_down(down, gpu, day * 1440 + first, minutes)
    held: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
    contract_ids = [
        _build_buyer(spec, offer=offer, devices=devices, product=product, held=held, down=down)
        for spec in buyer_specs
    ]
    for index, device in enumerate(devices):
        observe(device, since=date(2026, 9, 29), until=date(2026, 11, 2), down=down[index])

    draft_invoices(month=OCTOBER, contract_ids=contract_ids, now=CLOSED_AT)
    finalize_invoices(month=OCTOBER, contract_ids=contract_ids, now=CLOSED_AT)
    invoices = Invoice.objects.filter(contract_id__in=contract_ids, month=OCTOBER)
    invoices.update(payment_status=PaymentStatus.PAID)
    attribute_paid_invoices(up_to_month=OCTOBER, now=CLOSED_AT)

    assert invoices.count() == len(contract_ids)
    for invoice in invoices.prefetch_related("lines"):
        lines = list(invoice.lines.all())
        attributed = Attribution.objects.filter(invoice=invoice).aggregate(
            total=Sum("amount_minor")
        )["total"]
        dashboard = month_to_date(contracts=[invoice.contract], since=OCT_1, until=NOV_1)
        assert (
            invoice.total_minor
            == sum(line.amount_minor for line in lines)
            == (attributed or 0)
            == dashboard.total_minor
        )
        per_line: dict[int, int] = defaultdict(int)
        for line in lines:
            assert line.contract_line_id is not None  # no commitments or fees here
            per_line[line.contract_line_id] += line.amount_minor
        assert {pk: amount for pk, amount in per_line.items() if amount} == {
            cost.line.pk: cost.amount_minor for cost in dashboard.line_costs if cost.amount_minor
        }
