"""Partner pages, mounted at /partner/ (namespace "capacity")."""

from django.urls import path

from capacity import views

app_name = "capacity"

urlpatterns = [
    path("sites/", views.site_list, name="sites"),
    path("sites/new/", views.site_create, name="site_create"),
    path("sites/<int:pk>/", views.site_detail, name="site_detail"),
    path("sites/<int:pk>/edit/", views.site_update, name="site_update"),
    path("nodes/", views.node_list, name="nodes"),
    path("nodes/new/", views.node_create, name="node_create"),
    path("nodes/<int:pk>/", views.node_detail, name="node_detail"),
    path(
        "nodes/<int:pk>/enrollment-code/",
        views.enrollment_code_regenerate,
        name="enrollment_code_regenerate",
    ),
    path("nodes/<int:pk>/windows/new/", views.window_create, name="window_create"),
    path("nodes/<int:pk>/retire/", views.node_retire, name="node_retire"),
    path("windows/<int:pk>/cancel/", views.window_cancel, name="window_cancel"),
    path("offers/", views.offer_list, name="offers"),
    path("offers/new/", views.offer_create, name="offer_create"),
    path("offers/<int:pk>/edit/", views.offer_update, name="offer_update"),
    path("offers/<int:pk>/deactivate/", views.offer_deactivate, name="offer_deactivate"),
]
