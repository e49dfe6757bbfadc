from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """The ground floor: people, organizations, roles, API keys, tenancy, the audit trail."""

    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from accounts import checks  # noqa: F401 (registers the deployment checks)
