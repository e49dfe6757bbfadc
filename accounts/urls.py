"""Organization pages: settings, members, invitations, API keys (no namespace)."""

from django.urls import path

from accounts import views

urlpatterns = [
    path("organizations/new/", views.organization_create, name="organization_create"),
    path("organizations/switch/", views.organization_switch, name="organization_switch"),
    path("organization/", views.organization_settings, name="organization_settings"),
    path("organization/members/", views.organization_members, name="organization_members"),
    path("organization/members/<int:pk>/", views.membership_update, name="membership_update"),
    path(
        "organization/members/<int:pk>/remove/", views.membership_remove, name="membership_remove"
    ),
    path("organization/invitations/", views.invitation_create, name="invitation_create"),
    path(
        "organization/invitations/<int:pk>/revoke/",
        views.invitation_revoke,
        name="invitation_revoke",
    ),
    path("invitations/<str:token>/", views.invitation_respond, name="invitation_respond"),
    path("organization/api-keys/", views.api_keys, name="api_keys"),
    path("organization/api-keys/<int:pk>/revoke/", views.api_key_revoke, name="api_key_revoke"),
]
