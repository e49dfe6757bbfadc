"""Bench-only URLs, included by config/urls.py only when ``HASHGRID_BENCH_VIEWS=1``."""

from django.urls import path

from devtools import bench

urlpatterns = [path("trivial", bench.trivial, name="bench-trivial")]
