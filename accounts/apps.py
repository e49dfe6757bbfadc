from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """The ground floor: people, organizations, roles, API keys, tenancy, the audit trail."""

    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from allauth.account.signals import user_logged_in

        from accounts import checks  # noqa: F401 (registers the deployment checks)
        from accounts.security import count_sign_in_as_recent_authentication

        user_logged_in.connect(
            count_sign_in_as_recent_authentication, dispatch_uid="hashgrid-sign-in-counts"
        )
