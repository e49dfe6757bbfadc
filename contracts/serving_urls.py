"""Partner pages of serving, mounted at /partner/ (namespace "serving")."""

from django.urls import path

from contracts import serving_views as views

app_name = "serving"

urlpatterns = [
    path("nodes/<int:pk>/models/", views.node_models, name="node_models"),
    path("nodes/<int:pk>/models/update/", views.node_models_update, name="node_models_update"),
]
