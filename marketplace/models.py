"""What the front door keeps in the database: the inventory version search caches on."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class InventoryVersion(models.Model):
    """One row whose ``version`` changes in every transaction that changes what search
    shows: offers, sites, GPU models, nodes (status, site, model, size), GPU devices,
    allocations and the stored pool availability. Database triggers write it at commit
    (migration ``0002_inventory_version``), with a value drawn from a sequence, so a
    version is never reused, even after the table is emptied. ``marketplace.search_cache``
    keys cached search results on it: a result cached under the version read before
    computing it can never be older than that version.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    version = models.BigIntegerField()

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="inventoryversion_one_row")]

    def __str__(self) -> str:
        return f"inventory version {self.version}"
