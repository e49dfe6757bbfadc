"""Fixtures for the contracts tests: a partner's pool of GPUs listed by one offer."""

from __future__ import annotations

import pytest

from tests.factories import OfferFactory, SiteFactory, gpu_pool


@pytest.fixture(autouse=True)
def payment_method(settings):
    """Buyers have a saved payment method unless a test says otherwise (billing's seam)."""
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True


@pytest.fixture
def site(partner_org):
    return SiteFactory(organization=partner_org, name="Permian Flare 1")


@pytest.fixture
def devices(site):
    return gpu_pool(site=site, gpus=8, per_node=4)


@pytest.fixture
def offer(site, devices):
    return OfferFactory(site=site, gpu_count=8)
