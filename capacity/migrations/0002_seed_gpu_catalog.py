"""Seed the GPU catalog with the vendors' published memory and maximum board power."""

from django.db import migrations

from capacity.catalog import GPU_CATALOG as CATALOG

def seed(apps, schema_editor):
    GpuModel = apps.get_model("capacity", "GpuModel")
    for name, family, memory_mib, max_power_w in CATALOG:
        GpuModel.objects.update_or_create(
            name=name,
            defaults={
                "vendor": "NVIDIA",
                "family": family,
                "memory_mib": memory_mib,
                "max_power_w": max_power_w,
            },
        )


def unseed(apps, schema_editor):
    GpuModel = apps.get_model("capacity", "GpuModel")
    GpuModel.objects.filter(
        name__in=[name for name, *_ in CATALOG], nodes__isnull=True, offers__isnull=True
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("capacity", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
