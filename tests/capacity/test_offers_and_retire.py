"""Offers: every validation rule with its message; retiring nodes and its seam."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import AuditEvent
from capacity import selectors, services
from capacity.models import EnrollmentCode, NodeStatus, Offer
from tests.factories import NodeFactory, OfferFactory, catalog_gpu


def _offer_kwargs(site, **overrides):
    kwargs = {
        "site": site,
        "actor": None,
        "gpu_model": catalog_gpu(),
        "gpu_count": 2,
        "on_demand_price_per_gpu_hour": Decimal("2.5000"),
        "reserved_price_1m_per_gpu_hour": Decimal("2.2000"),
        "reserved_price_3m_per_gpu_hour": Decimal("2.0000"),
        "reserved_price_6m_per_gpu_hour": Decimal("1.9000"),
        "reserved_price_12m_per_gpu_hour": Decimal("1.7000"),
    }
    kwargs.update(overrides)
    return kwargs


@pytest.mark.django_db
def test_offer_create(node):
    offer = services.offer_create(**_offer_kwargs(node.site))
    assert Offer.objects.filter(pk=offer.pk, gpu_count=2, is_active=True).exists()
    assert offer.reserved_prices() == {
        1: Decimal("2.2000"),
        3: Decimal("2.0000"),
        6: Decimal("1.9000"),
        12: Decimal("1.7000"),
    }
    assert AuditEvent.objects.filter(action="offer.created").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"on_demand_price_per_gpu_hour": Decimal("0")},
            {"on_demand_price_per_gpu_hour": ["The on-demand price must be greater than zero."]},
        ),
        (
            {"reserved_price_6m_per_gpu_hour": Decimal("-1")},
            {
                "reserved_price_6m_per_gpu_hour": [
                    "The 6-month reserved price must be greater than zero."
                ]
            },
        ),
        (
            {"reserved_price_3m_per_gpu_hour": Decimal("2.6000")},
            {
                "reserved_price_3m_per_gpu_hour": [
                    "The 3-month reserved price (2.6000) is above the on-demand price (2.5000); "
                    "a reservation must not cost more than on demand."
                ]
            },
        ),
        (
            {
                "on_demand_price_per_gpu_hour": Decimal("999999.9999"),
                "reserved_price_1m_per_gpu_hour": Decimal("999999.9999"),
            },
            {
                "on_demand_price_per_gpu_hour": [
                    "A price per GPU-hour is at most 1000.0000; check the decimal point."
                ],
                "reserved_price_1m_per_gpu_hour": [
                    "A price per GPU-hour is at most 1000.0000; check the decimal point."
                ],
            },
        ),
        (
            {"gpu_count": 3},
            {
                "gpu_count": [
                    "Permian Flare 1 has 2 H100 SXM 80GB GPUs on its nodes; this offer lists 3."
                ]
            },
        ),
        (
            {"gpu_model": "L40S 48GB"},
            {
                "gpu_count": [
                    "Permian Flare 1 has 0 L40S 48GB GPUs on its nodes; this offer lists 2."
                ]
            },
        ),
        (
            {
                "available_from": timezone.now(),
                "available_until": timezone.now() - timedelta(days=1),
            },
            {"available_until": ["The availability window must end after it starts."]},
        ),
    ],
)
def test_offer_validation_messages(node, overrides, expected):
    if overrides.get("gpu_model"):
        overrides["gpu_model"] = catalog_gpu(overrides["gpu_model"])
    with pytest.raises(ValidationError) as caught:
        services.offer_create(**_offer_kwargs(node.site, **overrides))
    assert caught.value.message_dict == expected
    assert Offer.objects.count() == 0
    assert AuditEvent.objects.filter(action="offer.created").count() == 0


@pytest.mark.django_db
def test_retired_nodes_do_not_count_as_capacity(site):
    NodeFactory(site=site, gpu_count=4)
    NodeFactory(site=site, gpu_count=4, status=NodeStatus.RETIRED)
    assert selectors.site_gpu_capacity(site=site, gpu_model=catalog_gpu()) == 4


@pytest.mark.django_db
def test_offer_check_constraints_hold_in_the_database(site):
    with pytest.raises(IntegrityError), transaction.atomic():
        OfferFactory(site=site, reserved_price_12m_per_gpu_hour=Decimal("9.0000"))
    with pytest.raises(IntegrityError), transaction.atomic():
        OfferFactory(site=site, on_demand_price_per_gpu_hour=Decimal("0"))
    assert Offer.objects.count() == 0


@pytest.mark.django_db
def test_offer_prices_are_bounded_in_the_model_and_the_database(site):
    """1000.0000 per GPU-hour is the most; 999999.9999 fits the column but not the rule."""
    at_bound = OfferFactory(
        site=site,
        on_demand_price_per_gpu_hour=Decimal("1000.0000"),
        reserved_price_1m_per_gpu_hour=Decimal("1000.0000"),
    )
    at_bound.full_clean()
    at_bound.on_demand_price_per_gpu_hour = Decimal("1000.0001")
    with pytest.raises(ValidationError) as caught:
        at_bound.full_clean()
    assert caught.value.message_dict == {
        "on_demand_price_per_gpu_hour": [
            "A price per GPU-hour is at most 1000.0000; check the decimal point."
        ]
    }
    with pytest.raises(IntegrityError, match="offer_price_bounded"), transaction.atomic():
        Offer.objects.filter(pk=at_bound.pk).update(
            on_demand_price_per_gpu_hour=Decimal("999999.9999")
        )
    assert Offer.objects.get(pk=at_bound.pk).on_demand_price_per_gpu_hour == Decimal("1000.0000")


@pytest.mark.django_db
def test_offer_update_and_deactivate(node):
    offer = services.offer_create(**_offer_kwargs(node.site))
    with pytest.raises(ValidationError) as caught:
        services.offer_update(
            offer=offer, actor=None, data={"on_demand_price_per_gpu_hour": Decimal("1.0000")}
        )
    assert set(caught.value.message_dict) == {
        "reserved_price_1m_per_gpu_hour",
        "reserved_price_3m_per_gpu_hour",
        "reserved_price_6m_per_gpu_hour",
        "reserved_price_12m_per_gpu_hour",
    }
    assert Offer.objects.get(pk=offer.pk).on_demand_price_per_gpu_hour == Decimal("2.5000")
    services.offer_update(
        offer=offer, actor=None, data={"on_demand_price_per_gpu_hour": Decimal("3.0000")}
    )
    assert Offer.objects.get(pk=offer.pk).on_demand_price_per_gpu_hour == Decimal("3.0000")
    services.offer_deactivate(offer=offer, actor=None)
    assert Offer.objects.get(pk=offer.pk).is_active is False
    with pytest.raises(ValidationError) as caught:
        services.offer_deactivate(offer=offer, actor=None)
    assert caught.value.messages == ["This offer is already inactive."]


@pytest.mark.django_db
def test_retire_clears_the_token_and_revokes_codes(site):
    created = services.node_create(
        site=site,
        actor=None,
        name="n1",
        gpu_model=catalog_gpu(),
        gpu_count=2,
        cpu_cores=8,
        ram_gib=64,
    )
    retired_at = timezone.now()
    with time_machine.travel(retired_at, tick=False):
        node = services.node_retire(node=created.node, actor=None)
    assert node.status == NodeStatus.RETIRED
    assert node.poll_token_ciphertext == ""
    assert EnrollmentCode.objects.get(node=node).revoked_at == retired_at
    with pytest.raises(ValidationError) as caught:
        services.node_retire(node=node, actor=None)
    assert caught.value.messages == ["This node is already retired."]


@pytest.mark.django_db
def test_retire_refused_while_allocations_exist(node, monkeypatch):
    monkeypatch.setattr(selectors, "node_has_future_allocations", lambda node: True)
    with pytest.raises(ValidationError) as caught:
        services.node_retire(node=node, actor=None)
    assert caught.value.messages == [
        "This node has current or future reservations; it can be retired once they end."
    ]
    node.refresh_from_db()
    assert node.status == NodeStatus.PENDING


@pytest.mark.django_db
def test_retire_seam_says_no_allocations_yet(node):
    assert selectors.node_has_future_allocations(node) is False


@pytest.mark.django_db
def test_retire_refused_while_an_offer_needs_the_gpus(node):
    offer = services.offer_create(**_offer_kwargs(node.site))
    with pytest.raises(ValidationError) as caught:
        services.node_retire(node=node, actor=None)
    assert caught.value.messages == [
        f"Offer #{offer.pk} lists 2 H100 SXM 80GB GPUs; without this node the site has 0. "
        "Reduce or deactivate the offer first."
    ]
    node.refresh_from_db()
    assert node.status == NodeStatus.PENDING


@pytest.mark.django_db
def test_partner_overview(site, other_node):
    NodeFactory(site=site, gpu_count=8, status=NodeStatus.ONLINE)
    NodeFactory(site=site, gpu_count=4, status=NodeStatus.DEGRADED)
    NodeFactory(site=site, gpu_count=8, status=NodeStatus.RETIRED)
    OfferFactory(site=site, gpu_count=8)
    OfferFactory(site=site, gpu_count=4, is_active=False)
    overview = selectors.partner_overview(site.organization)
    assert overview.site_count == 1
    assert overview.node_count == 2
    assert overview.gpu_count == 12
    assert overview.active_offer_count == 1
    assert overview.nodes_by_status == {
        "pending": 0,
        "online": 1,
        "degraded": 1,
        "unreachable": 0,
        "maintenance": 0,
        "curtailed": 0,
        "retired": 1,
    }
