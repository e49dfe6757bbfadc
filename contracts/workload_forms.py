"""Buyer forms for workloads: they parse and type the input (an image template or the
buyer's own image, ports as a comma list, environment as NAME=value lines); the rules
(valid image, SSH key, ports, free GPUs) are ``contracts.workloads``'."""

from __future__ import annotations

import re
import secrets
from typing import Any

from django import forms

from contracts.models import InferenceProduct
from contracts.workloads import IMAGE_TEMPLATES, MAX_WORKLOAD_GPUS

OWN_IMAGE = "own"
_PORT_SEPARATORS = re.compile(r"[\s,]+")


def template_choices() -> list[tuple[str, str]]:
    return [
        (str(index), f"{template.name} ({template.image}; ports {ports_text(template.ports)})")
        for index, template in enumerate(IMAGE_TEMPLATES)
    ] + [(OWN_IMAGE, "My own image")]


def parse_ports(text: str) -> list[int]:
    """ "22, 8888" → [22, 8888]; a part that is not a whole number is a form error (the
    range and count are the service's rule)."""
    parts = [part for part in _PORT_SEPARATORS.split(text.strip()) if part]
    if not all(part.isascii() and part.isdigit() and len(part) <= 5 for part in parts):
        raise forms.ValidationError("Ports are whole numbers separated by commas, e.g. 22, 8888.")
    return [int(part) for part in parts]


def parse_env(text: str) -> dict[str, str]:
    """One NAME=value per line (blank lines ignored) → {NAME: value}."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, separator, value = line.partition("=")
        if not separator:
            raise forms.ValidationError("Write one NAME=value per line.")
        env[name.strip()] = value
    return env


def ports_text(ports: list[int] | tuple[int, ...]) -> str:
    return ", ".join(str(port) for port in ports)


class ContainerForm(forms.Form):
    """A container: an image (a template or the buyer's own), SSH public key, ports,
    environment, and how many GPUs."""

    template = forms.ChoiceField(label="Image", choices=template_choices, initial="0")
    image = forms.CharField(
        label="Your image",
        required=False,
        max_length=300,
        help_text="Only with “My own image”: a public image reference, e.g. "
        "ghcr.io/acme/trainer:1.4.",
    )
    gpu_count = forms.IntegerField(
        label="GPUs", min_value=1, max_value=MAX_WORKLOAD_GPUS, initial=1
    )
    ssh_public_key = forms.CharField(
        label="SSH public key",
        required=False,
        max_length=4096,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text="The contents of your <code>~/.ssh/id_ed25519.pub</code>. Leave empty "
        "for no SSH.",
    )
    ports = forms.CharField(
        label="Ports",
        required=False,
        max_length=200,
        help_text="TCP ports the container listens on, separated by commas; each gets a "
        "public port on the node. Leave empty for the image template's ports.",
    )
    env = forms.CharField(
        label="Environment",
        required=False,
        max_length=20_000,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text="One NAME=value per line.",
    )

    def clean_ports(self) -> list[int]:
        return parse_ports(self.cleaned_data["ports"])

    def clean_env(self) -> dict[str, str]:
        return parse_env(self.cleaned_data["env"])

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        template = cleaned.get("template")
        if template == OWN_IMAGE:
            if not cleaned.get("image"):
                self.add_error("image", "Enter your image, or choose one of ours.")
        elif template is not None:
            chosen = IMAGE_TEMPLATES[int(template)]
            cleaned["image"] = chosen.image
            if not cleaned.get("ports") and "ports" not in self.errors:
                cleaned["ports"] = list(chosen.ports)
        return cleaned


class InstanceForm(ContainerForm):
    """The container form of an instance start, with a one-time key minted when the form
    is rendered: a double click (or a reload of the post) starts one instance
    (``contracts.workloads.instance_start``'s ``submission_key``)."""

    submission_key = forms.CharField(
        min_length=16,
        max_length=64,
        widget=forms.HiddenInput,
        error_messages={"required": "This form has expired; start again from a fresh one."},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial["submission_key"] = secrets.token_urlsafe(24)


class DeploymentForm(forms.Form):
    """A catalogue model served on reserved GPUs."""

    product = forms.ModelChoiceField(
        label="Model",
        queryset=InferenceProduct.objects.filter(is_active=True).order_by("name"),
        empty_label=None,
        to_field_name="slug",
    )
    gpu_count = forms.IntegerField(
        label="GPUs", min_value=1, max_value=MAX_WORKLOAD_GPUS, initial=1
    )


class RedeployForm(forms.Form):
    """Redeploy on the same GPUs: another image (a container) or model (a deployment),
    or the same again when left as it is."""

    image = forms.CharField(label="Image", required=False, max_length=300)
    product = forms.ModelChoiceField(
        label="Model",
        queryset=InferenceProduct.objects.filter(is_active=True).order_by("name"),
        required=False,
        to_field_name="slug",
    )

    def __init__(self, *args: Any, is_deployment: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.fields["image" if is_deployment else "product"]
