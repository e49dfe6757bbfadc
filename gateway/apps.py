from django.apps import AppConfig


class GatewayConfig(AppConfig):
    """The inference gateway (its own ASGI process; docs/gateway.md). No models: it reads
    keys, lines and routes, and writes the gateway side of ``InferenceRequest``."""

    name = "gateway"
    verbose_name = "Inference gateway"
