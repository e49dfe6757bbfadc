from django.urls import path

from marketplace import views

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
    path("docs/inference-api/", views.inference_api_docs, name="inference_api_docs"),
]
