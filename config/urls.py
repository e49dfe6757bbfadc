from allauth.account.decorators import secure_admin_login
from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from marketplace import views as marketplace_views

# Staff sign in through allauth (rate limits, MFA), never through the admin's own form.
admin.autodiscover()
admin.site.login = secure_admin_login(admin.site.login)  # type: ignore[method-assign]
admin.site.site_header = "Hashgrid finance"
admin.site.site_title = "Hashgrid admin"
# The index opens with finance's overview (billing/overview_views.py).
admin.site.index_template = "admin/hashgrid_index.html"

urlpatterns = [
    path("", marketplace_views.landing, name="landing"),
    path("healthz", marketplace_views.healthz, name="healthz"),
    path("status/", marketplace_views.status_page, name="status"),
    path("pricing/", marketplace_views.pricing, name="pricing"),
    path("admin/finance/", include("billing.overview_urls")),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("", include("accounts.urls")),
    path("", include("marketplace.urls")),
    path("partner/", include("capacity.urls")),
    path("partner/", include("contracts.serving_urls")),
    path("billing/", include("billing.urls")),
    path("marketplace/", include("marketplace.storefront_urls")),
    path("contracts/", include("contracts.urls")),
    path("api/v1/", include("config.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger's init script from a URL: no inline script (CSP).
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
]

if settings.BENCH_VIEWS:  # manage.py bench_web's baseline; off unless HASHGRID_BENCH_VIEWS=1
    urlpatterns.append(path("bench/", include("devtools.urls")))
