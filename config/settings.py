"""Hashgrid settings: one module, driven by the environment.

``HASHGRID_ENV`` picks the profile: ``development`` (default; debug on, console email,
embedded PostgreSQL when DATABASE_URL is unset) or ``production`` (debug off, secure
cookies and HSTS, every secret required). ``config.test_settings`` layers a few test
overrides on top. Every variable is listed in the README.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url

from config.env import env_bool, env_choice, env_decimal, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = BASE_DIR / ".run"

ENVIRONMENT = env_choice("HASHGRID_ENV", "development", ("development", "production"))
PRODUCTION = ENVIRONMENT == "production"

DEBUG = env_bool("DJANGO_DEBUG", not PRODUCTION)
SECRET_KEY = env_str(
    "DJANGO_SECRET_KEY",
    None if PRODUCTION else "django-insecure-development-only-key-never-use-in-production",
)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
SITE_URL = env_str("HASHGRID_SITE_URL", "http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "django_celery_beat",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "accounts",
    "marketplace",
    "capacity",
    "capacity.metering",
    "contracts",
    "billing",
    "gateway",
]
# Development tools (embedded database, dev runner, demo seeder, benchmarks): on top of
# every app above, never installed in production.
if not PRODUCTION:
    INSTALLED_APPS.append("devtools")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "accounts.response_headers.ResponseHeadersMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "accounts.tenancy.CurrentOrganizationMiddleware",
    "accounts.security.StaffMfaRequiredMiddleware",
]

# Bench-only: a Server-Timing header on every response and a trivial view at
# /bench/trivial (devtools/bench.py), for ``manage.py bench_web``. Never in production.
BENCH_VIEWS = env_bool("HASHGRID_BENCH_VIEWS", False)
if BENCH_VIEWS:
    MIDDLEWARE.insert(0, "devtools.bench.ServerTimingMiddleware")

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.tenancy.organization_context",
                "accounts.response_headers.csp_context",
            ],
            # |utc_datetime and |utc_date: one date format on every page (config/formats.py).
            "builtins": ["config.formats"],
        },
    },
]


# Development without DATABASE_URL: the embedded PostgreSQL server that `make run` and the
# test bootstrap start at this URL (devtools/devdb.py runs it, data in .run/pgdata).
EMBEDDED_DATABASE_URL = (
    "postgres://postgres@127.0.0.1:"
    f"{env_int('HASHGRID_EMBEDDED_PG_PORT', 54329, minimum=1)}/hashgrid"
)


def _database_url() -> str:
    url = env_str("DATABASE_URL", "")
    if url:
        return url
    if PRODUCTION:
        return env_str("DATABASE_URL")  # raises: production needs an explicit database
    return EMBEDDED_DATABASE_URL


DATABASES = {
    "default": dj_database_url.parse(
        _database_url(), conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
    )
}
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

# Caches. ``default``: allauth's rate limits and the enrollment throttle. ``CACHE_URL``
# (``redis://host:6379/1``) shares one Redis between every web process, which production
# wants (limits hold across workers); without it each process keeps its own in memory.
# ``search``: search results (``marketplace.search_cache``), always each process's own
# memory and bounded, so clients cannot grow it or evict the limits.
_CACHE_URL = env_str("CACHE_URL", "")
CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": _CACHE_URL,
            "KEY_PREFIX": "hashgrid",
        }
        if _CACHE_URL
        else {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "hashgrid",
        }
    ),
    "search": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "hashgrid-search",
        "OPTIONS": {"MAX_ENTRIES": env_int("SEARCH_CACHE_ENTRIES", 1000, minimum=10)},
    },
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# django-allauth: email is the login; verification is mandatory; rate limits stay at
# allauth's defaults (on). MFA (TOTP + recovery codes) is open to every user and
# required for staff by accounts.security.StaffMfaRequiredMiddleware.
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Hashgrid] "
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "https" if PRODUCTION else "http"
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "Hashgrid"
LOGIN_REDIRECT_URL = "dashboard"
LOGIN_URL = "account_login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Production serves collected files (whitenoise); development serves from the finders.
STATIC_ROOT = (
    Path(env_str("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles"))) if PRODUCTION else None
)
WHITENOISE_USE_FINDERS = not PRODUCTION
WHITENOISE_AUTOREFRESH = DEBUG
# Browser libraries installed by npm (package.json, `make install`), served by the app
# under static/vendor/: never a CDN, never copied into the repository.
NODE_MODULES = BASE_DIR / "node_modules"
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/chartjs", NODE_MODULES / "chart.js" / "dist"),
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

EMAIL_BACKEND = env_str(
    "DJANGO_EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend"
    if PRODUCTION
    else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Hashgrid <no-reply@hashgrid.example>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# Celery: Redis or RabbitMQ when CELERY_BROKER_URL is set; otherwise kombu's filesystem
# transport under .run/ so development needs no broker process at all.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "" if not PRODUCTION else None)
if not CELERY_BROKER_URL:
    CELERY_BROKER_URL = "filesystem://"
    _broker_dir = RUN_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        # Exchange tables; kombu's default is ./control, outside .run and `make clean`.
        "control_folder": str(_broker_dir / "control"),
    }
    # The transport does not make its folders: a task queued from a page before `make run`
    # ever ran (manage.py runserver, a test) would fail.
    for _folder in ("queue", "processed", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

# The client's address, wherever one is read (DRF's throttles, allauth's rate limits): how
# many proxies in front of the app append to X-Forwarded-For (a load balancer: 1). At 0,
# the default, no forwarded address is trusted and the client is REMOTE_ADDR; at N, it is
# the Nth entry from the right, the one our outermost proxy wrote, so a client cannot
# choose its address (and dodge a rate limit) by sending the header itself.
TRUSTED_PROXY_COUNT = env_int("HASHGRID_TRUSTED_PROXY_COUNT", 0, minimum=0)
ALLAUTH_TRUSTED_PROXY_COUNT = TRUSTED_PROXY_COUNT

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.api_auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_RATES": {"enroll": "30/min"},
    # Throttles key on the client's address (TRUSTED_PROXY_COUNT, above).
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Hashgrid API",
    "DESCRIPTION": (
        "GPU capacity marketplace: buyers, partners and node agents. "
        "Model inference (OpenAI-compatible, on the gateway) is described in the "
        "[inference API reference](/docs/inference-api/)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # httpx logs every request at INFO: one line per agent poll is noise.
        "httpx": {"level": "WARNING"},
        # The Stripe SDK logs every request at INFO.
        "stripe": {"level": "WARNING"},
    },
}

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Content-Security-Policy on every page (accounts.response_headers): scripts and styles
# from this origin and Stripe.js only, inline blocks by nonce. On in every environment, so
# development and the browser tests run under the policy production sends.
CSP_ENABLED = env_bool("HASHGRID_CSP", True)
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# Stripe: billing/stripe_gateway.py is the only module that talks to it. Development
# (make run) and the tests point STRIPE_API_BASE at localstripe on loopback.
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "" if not PRODUCTION else None)
STRIPE_PUBLISHABLE_KEY = env_str("STRIPE_PUBLISHABLE_KEY", "")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "")
STRIPE_JS_URL = env_str("STRIPE_JS_URL", "https://js.stripe.com/v3/")
STRIPE_API_VERSION = "2025-03-31.basil"
STRIPE_CONNECT_TIMEOUT_SECONDS = env_int("STRIPE_CONNECT_TIMEOUT_SECONDS", 5, minimum=1)
STRIPE_READ_TIMEOUT_SECONDS = env_int("STRIPE_READ_TIMEOUT_SECONDS", 30, minimum=1)
STRIPE_MAX_NETWORK_RETRIES = env_int("STRIPE_MAX_NETWORK_RETRIES", 2, minimum=0)
# Stripe Connect (partner payouts); tests point it at a stateful fake, empty = Stripe.
STRIPE_CONNECT_API_BASE = env_str("STRIPE_CONNECT_API_BASE", "")
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env_int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300, minimum=1)

# Billing.
BILLING_GRACE_DAYS = env_int("BILLING_GRACE_DAYS", 3, minimum=0)
BILLING_DUNNING_RETRY_DAYS = (3, 5, 7)
BILLING_LATE_USAGE_LOOKBACK_MONTHS = env_int("BILLING_LATE_USAGE_LOOKBACK_MONTHS", 3, minimum=1)
# Partner share of revenue when no partner agreement covers a line kind (0.80 = 80 %).
SETTLEMENT_DEFAULT_PARTNER_SHARE = env_decimal(
    "SETTLEMENT_DEFAULT_PARTNER_SHARE", "0.80", minimum="0", maximum="1"
)
# Let buyers reserve without a saved card (never in production).
CONTRACTS_ASSUME_PAYMENT_METHOD = env_bool("CONTRACTS_ASSUME_PAYMENT_METHOD", False)

CELERY_BEAT_SCHEDULE = {
    "billing: close due periods": {
        "task": "billing.tasks.close_due_periods",
        "schedule": 24 * 3600,
    },
    "billing: dunning": {"task": "billing.tasks.run_dunning", "schedule": 3600},
    "contracts: roll over ended terms": {"task": "contracts.tasks.roll_over", "schedule": 3600},
    "contracts: fail instances no node took": {
        "task": "contracts.tasks.instances_never_taken",
        "schedule": 300,
    },
    "contracts: inference cap alerts (80 %, 100 %)": {
        "task": "contracts.tasks.inference_cap_alerts",
        "schedule": 300,
    },
    "metering: attribute usage to allocations and API keys": {
        "task": "capacity.metering.tasks.attribute_usage",
        "schedule": 60,
    },
    "metering: pool availability for search": {
        "task": "capacity.metering.tasks.refresh_pool_availability",
        "schedule": 300,
    },
}

# Metering.
METERING_POLL_INTERVAL_SECONDS = env_int("METERING_POLL_INTERVAL_SECONDS", 60, minimum=5)
METERING_BATCH_SIZE = env_int("METERING_BATCH_SIZE", 200, minimum=1)
METERING_POLL_CONCURRENCY = env_int("METERING_POLL_CONCURRENCY", 16, minimum=1)
FLEET_URL = env_str("HASHGRID_FLEET_URL", "http://127.0.0.1:9100")
# Agent URLs may point at loopback and private networks (the fleet simulator). Off in
# production: agents are on partners' networks, and an agent URL aimed at the platform's
# own would have the poller fetch internal URLs with a bearer token (SSRF).
AGENT_ALLOW_PRIVATE_URLS = env_bool("HASHGRID_AGENT_ALLOW_PRIVATE_URLS", not PRODUCTION)
# Announced maintenance (>= 7 days ahead) excluded from availability and the SLA: at most
# this many hours per GPU per calendar month (UTC); maintenance beyond it counts as downtime.
SLA_MAINTENANCE_ALLOWANCE_HOURS = env_int("HASHGRID_SLA_MAINTENANCE_ALLOWANCE_HOURS", 8, minimum=0)
# Celery time limits of one polling batch (seconds). Every poll already has a deadline;
# these stop a batch that still overruns: the soft limit cancels its polls (what was
# stored stays, the rest is polled next sweep), the hard one replaces the worker process.
METERING_BATCH_SOFT_TIME_LIMIT_SECONDS = env_int(
    "METERING_BATCH_SOFT_TIME_LIMIT_SECONDS", 300, minimum=10
)
METERING_BATCH_TIME_LIMIT_SECONDS = METERING_BATCH_SOFT_TIME_LIMIT_SECONDS + 60

# Secret used to encrypt agent credentials at rest (derived from SECRET_KEY by default).
FIELD_ENCRYPTION_KEY = env_str("HASHGRID_FIELD_ENCRYPTION_KEY", "")

# Inference gateway (gateway/, its own ASGI process; docs/gateway.md).
# Where buyers send OpenAI-compatible requests; shown next to every key.
GATEWAY_URL = env_str("HASHGRID_GATEWAY_URL", "http://127.0.0.1:8001")
# The platform's Ed25519 key that signs gateway receipts: base64 of the raw 32-byte
# private seed. Required in production; in development and tests derived from
# SECRET_KEY (config.gateway_keys) so every process of one checkout agrees.
GATEWAY_SIGNING_KEY = env_str("HASHGRID_GATEWAY_SIGNING_KEY", "" if not PRODUCTION else None)
# The store every gateway process shares for budgets and rate limits (Redis URL). Empty:
# an in-process store, right only for a single gateway process (make run).
GATEWAY_STORE_URL = env_str("HASHGRID_GATEWAY_STORE_URL", "")
# Requests and tokens per minute of a key whose line sets none.
GATEWAY_DEFAULT_REQUESTS_PER_MINUTE = env_int("HASHGRID_GATEWAY_DEFAULT_RPM", 600, minimum=1)
GATEWAY_DEFAULT_TOKENS_PER_MINUTE = env_int("HASHGRID_GATEWAY_DEFAULT_TPM", 2_000_000, minimum=1)
# How long the gateway waits for an agent: to connect, then for its answer's headers and
# between any two reads of its body (a stall before the first byte fails over; after it,
# the stream ends with an error). Milliseconds.
GATEWAY_CONNECT_TIMEOUT_MS = env_int("HASHGRID_GATEWAY_CONNECT_TIMEOUT_MS", 2_000, minimum=1)
GATEWAY_READ_TIMEOUT_MS = env_int("HASHGRID_GATEWAY_READ_TIMEOUT_MS", 30_000, minimum=1)
# Nodes one request may be tried on (failover happens only before the first byte).
GATEWAY_MAX_ATTEMPTS = env_int("HASHGRID_GATEWAY_MAX_ATTEMPTS", 3, minimum=1)
# Circuit breaker: consecutive failures that set a node aside, and for how long before a
# probe request may try it again.
GATEWAY_CIRCUIT_FAILURES = env_int("HASHGRID_GATEWAY_CIRCUIT_FAILURES", 3, minimum=1)
GATEWAY_CIRCUIT_COOLDOWN_MS = env_int("HASHGRID_GATEWAY_CIRCUIT_COOLDOWN_MS", 10_000, minimum=1)
