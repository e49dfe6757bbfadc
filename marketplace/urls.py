from django.urls import path

from marketplace import views

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
]
