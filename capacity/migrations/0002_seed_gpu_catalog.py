"""Seed the GPU catalog with the vendors' published memory and maximum board power."""

from django.db import migrations

# (name, family as NVML reports it, memory in MiB, max board power in W) — NVIDIA data sheets.
CATALOG = [
    ("H100 SXM 80GB", "H100", 80 * 1024, 700),
    ("H200 141GB", "H200", 141 * 1024, 700),
    ("A100 80GB", "A100", 80 * 1024, 400),  # SXM4 board power
    ("L40S 48GB", "L40S", 48 * 1024, 350),
    ("RTX 4090 24GB", "4090", 24 * 1024, 450),
]


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
