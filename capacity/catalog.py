"""The GPU catalog every deployment starts with (vendors' data sheets).

The data migration and a post_migrate hook (config.reference_data) seed it.
"""

from __future__ import annotations

from typing import Any

# (name, family as NVML reports it, memory in MiB, max board power in W).
GPU_CATALOG: list[tuple[str, str, int, int]] = [
    ("H100 SXM 80GB", "H100", 80 * 1024, 700),
    ("H200 141GB", "H200", 141 * 1024, 700),
    ("A100 80GB", "A100", 80 * 1024, 400),  # SXM4 board power
    ("L40S 48GB", "L40S", 48 * 1024, 350),
    ("RTX 4090 24GB", "4090", 24 * 1024, 450),
]


def ensure_gpu_model(gpu_model_class: Any, name: str) -> Any:
    """Return the catalog row called ``name``, creating it from ``GPU_CATALOG`` if missing.

    Takes the model class so the data migration can pass its historical model.
    """
    for entry_name, family, memory_mib, max_power_w in GPU_CATALOG:
        if entry_name == name:
            gpu_model, _ = gpu_model_class.objects.get_or_create(
                name=name,
                defaults={
                    "vendor": "NVIDIA",
                    "family": family,
                    "memory_mib": memory_mib,
                    "max_power_w": max_power_w,
                },
            )
            return gpu_model
    raise KeyError(f"{name!r} is not in the GPU catalog")


def ensure_gpu_catalog(gpu_model_class: Any) -> None:
    """Reference data of the capacity app (see config.reference_data): every catalog row,
    brought up to the data sheet. Takes the model class, as ``ensure_gpu_model``."""
    for name, family, memory_mib, max_power_w in GPU_CATALOG:
        gpu_model_class.objects.update_or_create(
            name=name,
            defaults={
                "vendor": "NVIDIA",
                "family": family,
                "memory_mib": memory_mib,
                "max_power_w": max_power_w,
            },
        )
