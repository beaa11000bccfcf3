"""HealthSync settings, read from the environment.

Every setting that differs between a laptop demo and a hospital deployment comes from an environment
variable, parsed by the small typed helpers below so that a typo fails loudly at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str) -> bool:
    value = os.getenv(name, default).strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}")


def envint(name: str, default: str) -> int:
    value = os.getenv(name, default)
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]


# PRODUCTION switches on the secure defaults (HTTPS-only cookies, HSTS, SSL redirect) and refuses to
# start without a real SECRET_KEY; the demo and the tests run without it over plain HTTP on loopback.
PRODUCTION = envbool("HEALTHSYNC_PRODUCTION", "false")
DEBUG = envbool("DEBUG", "false")
SECRET_KEY = os.getenv("SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY must be set when HEALTHSYNC_PRODUCTION is on")
    SECRET_KEY = "django-insecure-healthsync-demo-key-not-for-production-0123456789"  # noqa: S105
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "django_q",
    "django_htmx",
    "template_partials",
    "auditlog",
    "healthsync",
    "connectors",
    "workflows",
    "dashboards",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "auditlog.middleware.AuditlogMiddleware",
]

ROOT_URLCONF = "healthsync.urls"
WSGI_APPLICATION = "healthsync.wsgi.application"
ASGI_APPLICATION = "healthsync.asgi.application"

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
                "healthsync.context_processors.navigation",
            ],
        },
    }
]

# SQLite (the zero-install demo default) is tuned for several writer processes: WAL, a long busy
# timeout and IMMEDIATE transactions so writers queue instead of failing with "database is locked".
_SQLITE_DEFAULT = f"sqlite:///{BASE_DIR / 'var' / 'healthsync.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(os.getenv("DATABASE_URL", _SQLITE_DEFAULT), conn_max_age=60)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not Django's shared in-memory database: tests that write from several threads (the listener's
    # writer, the worker) then get SQLite's busy timeout instead of "database table is locked".
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / "test.sqlite3")}
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
IS_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.getenv("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.getenv("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION
if not PRODUCTION:
    # Outside production the files are served from static/ through the finders; an empty STATIC_ROOT
    # keeps whitenoise from warning on every process start. Production fills it with collectstatic.
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# Production hardening; `manage.py check --deploy` is clean when DEBUG is off and HTTPS is on.
_SECURE_DEFAULT = "true" if PRODUCTION else "false"
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", _SECURE_DEFAULT)
SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", _SECURE_DEFAULT)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = envint("SESSION_COOKIE_AGE", str(8 * 3600))
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", "31536000" if PRODUCTION else "0")
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if envbool("BEHIND_PROXY", "false") else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# The REST API (healthsync/api/, docs/api.md): API clients authenticate with their bearer token, the browser
# with its session; reads need the model's view permission, exactly as in the console.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "healthsync.api.authentication.ApiClientTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "healthsync.api.permissions.RolePermission",
        "healthsync.api.permissions.HasScope",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["healthsync.api.throttling.ApiClientRateThrottle"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "healthsync.api.base.ApiPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_VERSIONING_CLASS": "rest_framework.versioning.NamespaceVersioning",
    "DEFAULT_VERSION": "v1",
    "ALLOWED_VERSIONS": ["v1"],
    "EXCEPTION_HANDLER": "healthsync.api.problems.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "HealthSync API",
    "DESCRIPTION": "Systems, configuration, the message store, workflow runs, exceptions and KPIs. "
    "Errors are RFC 9457 problem details. Versioning and deprecation policy: docs/api.md.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "healthsync.api.problems.add_problem_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        name + "Enum": f"healthsync.choices.{name}.choices"
        for name in (
            "SystemKind",
            "ExceptionKind",
            "ExceptionStatus",
            "MessageStatus",
            "VersionStatus",
            "RunStatus",
            "ChangeKind",
            "ChangeStatus",
        )
    },
}

# django-q2: the ORM broker needs nothing extra; set REDIS_URL to use Redis at scale.
Q_CLUSTER: dict = {
    "name": "healthsync",
    "workers": envint("Q_WORKERS", "2"),
    "timeout": 300,
    "retry": 360,
    "max_attempts": 1,
    "catch_up": False,
    "ack_failures": True,
    "save_limit": 1000,
    "poll": 0.2,
    "sync": envbool("Q_SYNC", "false"),
}
if os.getenv("REDIS_URL"):
    Q_CLUSTER["redis"] = os.getenv("REDIS_URL")
else:
    Q_CLUSTER["orm"] = "default"

# Connector secrets are encrypted with this key (Fernet, urlsafe base64 of 32 bytes). Derived from
# SECRET_KEY when unset so the demo runs, but a deployment sets its own and rotates it on its own schedule.
HEALTHSYNC_SECRETS_KEY = os.getenv("HEALTHSYNC_SECRETS_KEY", "")

# Runtime tuning.
HEALTHSYNC_BATCH_SIZE = envint("HEALTHSYNC_BATCH_SIZE", "200")
HEALTHSYNC_DELIVERY_TIMEOUT = envint("HEALTHSYNC_DELIVERY_TIMEOUT", "10")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # django-q2 logs every enqueue and every task at INFO: too loud for the demo and for operators.
        "django-q": {"level": os.getenv("Q_LOG_LEVEL", "WARNING")},
        # asyncssh logs every SFTP login and channel at INFO: a line storm on every poll of an SFTP source.
        "asyncssh": {"level": "WARNING"},
        # httpx logs every request line at INFO (with its URL); deliveries log their own outcome.
        "httpx": {"level": "WARNING"},
    },
}

# Reference destinations of the discharge-to-bill skeleton (the simulators in the demo).
HEALTHSYNC_RCM_URL = os.getenv("HEALTHSYNC_RCM_URL", "http://127.0.0.1:8101")
HEALTHSYNC_ERP_URL = os.getenv("HEALTHSYNC_ERP_URL", "http://127.0.0.1:8102")
# Folder the payer (the RCM simulator in the demo) drops 277CA/835 files into; empty = var/rcm-mailbox.
HEALTHSYNC_RCM_MAILBOX = os.getenv("HEALTHSYNC_RCM_MAILBOX", "")
# Seconds after which a message claimed by a worker that never finished it goes back to the queue.
HEALTHSYNC_CLAIM_TIMEOUT = envint("HEALTHSYNC_CLAIM_TIMEOUT", "900")
# Retention (days) when no RetentionPolicy row applies; runtime bookkeeping; the largest replay one request may ask.
HEALTHSYNC_RETENTION_DAYS = envint("HEALTHSYNC_RETENTION_DAYS", "30")
HEALTHSYNC_METRIC_RETENTION_DAYS = envint("HEALTHSYNC_METRIC_RETENTION_DAYS", "14")
HEALTHSYNC_RUN_RETENTION_DAYS = envint("HEALTHSYNC_RUN_RETENTION_DAYS", "90")
HEALTHSYNC_REPLAY_MAX = envint("HEALTHSYNC_REPLAY_MAX", "10000")
# Operations alerts (healthsync.alerts): defaults a connector's config["alerts"] may override.
HEALTHSYNC_ALERT_QUIET_MINUTES = envint("HEALTHSYNC_ALERT_QUIET_MINUTES", "30")
HEALTHSYNC_ALERT_QUEUE_DEPTH = envint("HEALTHSYNC_ALERT_QUEUE_DEPTH", "500")
HEALTHSYNC_ALERT_QUEUE_GROWTH_MINUTES = envint("HEALTHSYNC_ALERT_QUEUE_GROWTH_MINUTES", "10")
