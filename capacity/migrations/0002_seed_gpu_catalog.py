"""Seed the GPU catalog with the vendors' published memory and maximum board power."""

from django.db import migrations

from capacity.catalog import GPU_CATALOG as CATALOG
from capacity.catalog import ensure_gpu_catalog


def seed(apps, schema_editor):
    ensure_gpu_catalog(apps.get_model("capacity", "GpuModel"))


def unseed(apps, schema_editor):
    GpuModel = apps.get_model("capacity", "GpuModel")
    GpuModel.objects.filter(
        name__in=[name for name, *_ in CATALOG], nodes__isnull=True, offers__isnull=True
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("capacity", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
