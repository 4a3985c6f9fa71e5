"""Settings for BotArmy HITL, read from the environment (12-factor).

With no DATABASE_URL and no REDIS_URL everything runs on one machine: SQLite, the
in-process channel layer and Celery's filesystem broker (no server needed). With them
set, PostgreSQL (psycopg 3), channels-redis and a Redis broker are used.
"""
import math
import os
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("HITL_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()


def _read(name: str, default, cast, kind: str, least=None, above=None, most=None):
    """The setting ``name`` from the environment (``default`` when unset or blank), cast, and held
    to its range: a value a process cannot run with (a negative timeout, a beat period of 0, a
    word for a number) stops every process at start-up with a message naming it, instead of 500s
    or a beat sending thousands of tasks a second once it runs."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = cast(raw.strip())
    except (ValueError, ArithmeticError):
        raise ImproperlyConfigured(f"{name} must be {kind}, not {raw!r}.") from None
    if (isinstance(value, Decimal) and not value.is_finite()) or \
            (isinstance(value, float) and not math.isfinite(value)):
        raise ImproperlyConfigured(f"{name} must be a finite number, not {raw!r}.")
    if least is not None and value < least:
        raise ImproperlyConfigured(f"{name} must be {least} or more (it is {raw.strip()}).")
    if above is not None and not value > above:
        raise ImproperlyConfigured(f"{name} must be more than {above} (it is {raw.strip()}).")
    if most is not None and value > most:
        raise ImproperlyConfigured(f"{name} must be at most {most} (it is {raw.strip()}).")
    return value


# Upper bounds of the periods and ages: past them a date computed from now overflows (a beat task
# failing on every run, HITL_START_WITHIN_MINUTES=99999999999 timed nothing out) or a period never comes.
_DAY_SECONDS, _YEAR_HOURS, _YEAR_MINUTES = 24 * 3600, 366 * 24, 366 * 24 * 60


def _int(name: str, default: int, **bounds) -> int:
    return _read(name, default, int, "a whole number", **bounds)


def _float(name: str, default: float, **bounds) -> float:
    return _read(name, default, float, "a number", **bounds)


def _amount(name: str, default: str) -> str:
    """A money amount (a decimal string, 0 or more), kept as the string its readers parse."""
    value = _read(name, None, Decimal, "a decimal amount such as 1.0000", least=0)
    return default if value is None else str(value)


_TRUE, _FALSE = ("1", "true", "yes", "on", "y", "t", "ok"), ("0", "false", "no", "off", "n", "f")  # ok: django-environ's


def _bool(name: str, default: bool) -> bool:
    """True or false; another word is refused (it counted as off: HITL_BEHIND_HTTPS_PROXY=enabled
    left cookies without Secure)."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false (1 / 0, yes / no, on / off), not {raw!r}.")


DEBUG = _bool("DJANGO_DEBUG", False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is required unless DJANGO_DEBUG is on (set DJANGO_DEBUG=1 for local use)."
        )
    SECRET_KEY = "dev-insecure-only-for-DJANGO_DEBUG"
ALLOWED_HOSTS = env.list(
    "DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
# The reviewer pages' htmx posts get a plain note, not Django's page pasted into a panel (review/auth.py)
CSRF_FAILURE_VIEW = "review.auth.csrf_failure"
# Behind a proxy that terminates HTTPS (and sets X-Forwarded-Proto): requests are known to be secure,
# cookies are sent only over HTTPS, and browsers are told to keep to HTTPS (HSTS) for that long.
if _bool("HITL_BEHIND_HTTPS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = _bool("HITL_SSL_REDIRECT", False)  # usually the proxy's job
    SECURE_HSTS_SECONDS = _int("HITL_HSTS_SECONDS", 0, least=0)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    # before django.contrib.auth: its createsuperuser and changepassword are the audited ones
    # (access/management/commands); its models, migrations and admin do not depend on the order
    "access",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "channels",
    "django_htmx",
    # shared domain
    "core",
    "projects",
    "audit",
    "events",
    # safety domains
    "approvals",
    "budgets",
    "emergency",
    "recovery",
    "hitl",
    # the reviewers' pages (top layer)
    "review",
    "demo",
]

MIDDLEWARE = [
    "core.middleware.request_middleware",
    "django.middleware.security.SecurityMiddleware",
    "core.middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

# The chain of an API request that authenticates with ``Authorization: Bearer`` (an agent or a
# script, never a browser): the browser's middleware (static files, sessions, CSRF, the session
# user, messages, framing, htmx) has nothing to do for it, so core/asgi.py runs it through this
# shorter chain. Every other request (pages, the admin, the API with a session cookie) takes
# MIDDLEWARE.
HITL_API_MIDDLEWARE = [
    "core.middleware.request_middleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "botarmy_hitl.urls"
WSGI_APPLICATION = "botarmy_hitl.wsgi.application"
ASGI_APPLICATION = "botarmy_hitl.asgi.application"

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
                "review.context_processors.review",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASE_URL = env.str("DATABASE_URL", default="")
# The health check's own wait for a pooled connection (PostgreSQL): a probe learns within it that
# the database does not answer (503), not after HITL_DB_POOL_TIMEOUT.
HITL_HEALTH_DB_TIMEOUT = _float("HITL_HEALTH_DB_TIMEOUT", 3.0, above=0)
if DATABASE_URL:
    try:
        DATABASES = {"default": env.db_url_config(DATABASE_URL)}
    except ValueError as _exc:  # a port past 65535 and the like: a traceback
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL ({_exc}): e.g. "
                                   f"postgres://user:password@host:5432/name.") from None
    if DATABASES["default"].get("ENGINE") not in ("django.db.backends.postgresql", "django.db.backends.sqlite3"):
        # `postgres//host/db` (no colon) was a bare KeyError: 'ENGINE'
        raise ImproperlyConfigured("DATABASE_URL must be a PostgreSQL URL such as postgres://user:password@host:5432/"
                                   "name (it does not start with postgres:// or postgresql://).")
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Under ASGI every request runs its database work in a thread of its own, so persistent
        # per-thread connections would pile up: a psycopg pool bounds them per process instead.
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        _pool_max = _int("HITL_DB_POOL_MAX", 20, least=1)
        if _bool("HITL_DB_POOL", True):
            DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
                # at most the maximum (psycopg refuses a pool whose minimum is larger: every request was a 500)
                "min_size": min(_int("HITL_DB_POOL_MIN", 2, least=0), _pool_max),
                "max_size": _pool_max,
                "timeout": _float("HITL_DB_POOL_TIMEOUT", 30.0, above=0),
            }
        else:  # manage.py's commands (one thread at a time): a refused connection says why at once,
            # where the pool retried for HITL_DB_POOL_TIMEOUT and ended in a PoolTimeout traceback
            DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 10)
        # Server-side parameter binding lets psycopg prepare a statement on its connection once
        # it has run HITL_DB_PREPARE_THRESHOLD times; PostgreSQL then skips parsing and planning
        # it (the same few statements run in every request): about a third less database CPU per
        # round trip in bench/throughput.py. Django leaves both off for the sake of external
        # poolers (pgbouncer in transaction mode cannot keep prepared statements): set
        # HITL_DB_PREPARE_THRESHOLD=0 behind one.
        prepare_threshold = _int("HITL_DB_PREPARE_THRESHOLD", 2, least=0)
        if prepare_threshold > 0:
            DATABASES["default"]["OPTIONS"]["server_side_binding"] = True
            DATABASES["default"]["OPTIONS"]["prepare_threshold"] = prepare_threshold
        # A statement that waits longer than this for a lock (held by a stuck transaction: a
        # person's psql session, a hung process) fails with "lock not available" and the API
        # answers 503 with Retry-After, instead of holding one of the process's few threads until
        # the holder lets go (every other project's requests and the health check queued behind it).
        _lock_timeout = _float("HITL_DB_LOCK_TIMEOUT", 10.0, least=0)  # 0: no limit
        if _lock_timeout:
            _options = DATABASES["default"]["OPTIONS"]
            _options["options"] = f"{_options.get('options', '')} -c lock_timeout={round(_lock_timeout * 1000)}".strip()
        # Django's backend with timestamps parsed in C and the connection parameters built once
        # (core/postgresql/base.py).
        DATABASES["default"]["ENGINE"] = "core.postgresql"
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "core.sqlite3",  # Django's, refusing amounts past a column's precision (core/sqlite3)
            "NAME": env.str("SQLITE_PATH", default=str(VAR_DIR / "db.sqlite3")),
            # Web, worker and beat share one file: wait for the writer instead of failing,
            # take the write lock at BEGIN so a reader never fails to upgrade, and use WAL
            # so readers do not block the writer.
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "access.backends.StaffSessionBackend",  # ModelBackend, whose sessions hold while their user is staff
    "guardian.backends.ObjectPermissionBackend",
]
GUARDIAN_USER_OBJ_PERMS_MODEL = "guardian.UserObjectPermission"
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user with permissions
GUARDIAN_MONKEY_PATCH_USER = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
FORMAT_MODULE_PATH = ["botarmy_hitl.formats"]  # times with their zone in the admin (botarmy_hitl/formats/en)
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True
LOGIN_URL = "/admin/login/"

# Request bodies: anything larger is refused with 400 before it is parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = _int("HITL_MAX_BODY_BYTES", 1024 * 1024, least=1024)

# --- API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "access.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "core.api.JsonFirstNegotiation",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "COERCE_DECIMAL_TO_STRING": True,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "URL_FORMAT_OVERRIDE": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "BotArmy HITL API",
    "DESCRIPTION": "Human-in-the-loop safety control plane for fleets of LLM agents. "
    "Authenticate with `Authorization: Bearer <api key>`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "approvals.schema.add_wait_endpoint",
                             "core.api.require_output_fields"],
    "ENUM_NAME_OVERRIDES": {
        "ProjectStatusEnum": "projects.models.Project.Status",
        "TaskStatusEnum": "projects.models.Task.Status",
        "AgentStateStatusEnum": "projects.models.AgentState.Status",
        "AgentTypeEnum": "projects.models.AgentType",
        "EventTypeEnum": "events.models.EventType",
        "AgentCallApprovalStatusEnum": "approvals.models.AgentCallApproval.Status",
        "ResponseApprovalStatusEnum": "approvals.models.ResponseApproval.Status",
        "DecisionEnum": ["approve", "reject"],
        "ResponseDecisionEnum": ["approve", "reject", "requires_modification"],
        "SeverityEnum": "emergency.models.Severity",
        "BudgetOverrideStatusEnum": "budgets.models.BudgetOverrideRequest.Status",
        "RecoveryStepStatusEnum": "recovery.models.RecoveryStep.Status",
        "RecoverySessionStatusEnum": "recovery.models.RecoverySession.Status",
        "HitlRequestStatusEnum": "hitl.models.HitlRequest.Status",
        "HitlRequestTypeEnum": "hitl.models.HitlRequest.RequestType",
        "HitlActionEnum": ["approve", "reject", "amend"],
    },
}

# --- Agent call approvals -------------------------------------------------------------
# Risk analyzers run in this order over every requested call (approvals/analyzers/).
HITL_RISK_ANALYZERS = env.list("HITL_RISK_ANALYZERS", default=[
    "approvals.analyzers.SecretsAnalyzer",
    "approvals.analyzers.PersonalDataAnalyzer",
    "approvals.analyzers.PromptInjectionAnalyzer",
    "approvals.analyzers.DestructiveCommandAnalyzer",
    "approvals.analyzers.ExfiltrationAnalyzer",
    "approvals.analyzers.ProductionDeployAnalyzer",
    "approvals.analyzers.CodeSafetyAnalyzer",
    "approvals.analyzers.InvisibleUnicodeAnalyzer",
    "approvals.analyzers.LinkAnalyzer",
    "approvals.analyzers.exposure.ExposureAnalyzer",
    "approvals.analyzers.CostAnalyzer",
])
# ... and over every agent response (the same pipeline; completeness and consistency are response-only).
HITL_RESPONSE_ANALYZERS = env.list("HITL_RESPONSE_ANALYZERS", default=[
    "approvals.analyzers.SecretsAnalyzer",
    "approvals.analyzers.PersonalDataAnalyzer",
    "approvals.analyzers.PromptInjectionAnalyzer",
    "approvals.analyzers.InvisibleUnicodeAnalyzer",
    "approvals.analyzers.LinkAnalyzer",
    "approvals.analyzers.DestructiveCommandAnalyzer",
    "approvals.analyzers.ExfiltrationAnalyzer",
    "approvals.analyzers.exposure.ExposureAnalyzer",
    "approvals.analyzers.CodeSafetyAnalyzer",
    "approvals.analyzers.CompletenessAnalyzer",
    "approvals.analyzers.ConsistencyAnalyzer",
])
# Each analyzer must finish within this many seconds; one that does not is reported (analyzer.timeout).
HITL_ANALYZER_TIME_LIMIT_SECONDS = _float("HITL_ANALYZER_TIME_LIMIT_SECONDS", 2.0, above=0)
HITL_APPROVAL_TIMEOUT_MINUTES = _int("HITL_APPROVAL_TIMEOUT_MINUTES", 30, least=1, most=24 * 60)
# Rows one admin bulk action takes at once (each goes through its service in the same request:
# "select all" over 50,000 calls was a 16 s, 8 MB confirmation page and a request of half an hour).
HITL_ADMIN_BULK_MAX = _int("HITL_ADMIN_BULK_MAX", 500, least=1, most=100_000)
# --- Response approvals (an agent's output held for review) -------------------------------
HITL_RESPONSE_TIMEOUT_MINUTES = _int("HITL_RESPONSE_TIMEOUT_MINUTES", 60, least=1, most=24 * 60)
# How many times one task's output may be sent back with requires_modification.
HITL_RESPONSE_MAX_MODIFICATION_ROUNDS = _int("HITL_RESPONSE_MAX_MODIFICATION_ROUNDS", 3, least=0)
# An approved call must be started within this many minutes of its approval (410 afterwards).
HITL_START_WITHIN_MINUTES = _int("HITL_START_WITHIN_MINUTES", 60, least=1, most=_YEAR_MINUTES)
# How often beat times out due approvals and sends timeout warnings.
HITL_APPROVAL_SWEEP_SECONDS = _int("HITL_APPROVAL_SWEEP_SECONDS", 10, least=1, most=_DAY_SECONDS)
# A waiting agent's long poll (and the /ws/events/ hub) re-reads the database this often, in case a
# push was lost (for example an event written in another process on the in-process channel layer).
HITL_WAIT_POLL_SECONDS = _float("HITL_WAIT_POLL_SECONDS", 5.0 if env.str("REDIS_URL", default="") else 1.0,
                                least=0.1)
# A stream of every project (/ws/events/ without project_id) sends an event once every lower id is
# committed (ids are drawn before commit), or has stayed a gap this long: a rolled-back write. Longer
# than HITL_DB_LOCK_TIMEOUT: a write waits up to that for the audit chain's lock after its event.
HITL_EVENT_SETTLE_SECONDS = _float("HITL_EVENT_SETTLE_SECONDS", 15.0, least=0.1, most=3600)
# The /ws/events/ websocket sends {"type": "ping"} this often (daphne's protocol pings drop dead peers).
HITL_WS_HEARTBEAT_SECONDS = _float("HITL_WS_HEARTBEAT_SECONDS", 20.0, least=0.1, most=_DAY_SECONDS)
# How often beat evaluates the automatic emergency-stop conditions of every active project.
HITL_CONDITION_CHECK_SECONDS = _int("HITL_CONDITION_CHECK_SECONDS", 5, least=1, most=_DAY_SECONDS)
# Reservations of calls approved but never settled are released after this many hours.
HITL_BUDGET_STALE_RESERVATION_HOURS = _int("HITL_BUDGET_STALE_RESERVATION_HOURS", 24, least=1, most=_YEAR_HOURS)
# A single call estimated above these amounts (USD) is flagged medium / high.
HITL_RISK_COST_MEDIUM = _amount("HITL_RISK_COST_MEDIUM", "1.0000")
HITL_RISK_COST_HIGH = _amount("HITL_RISK_COST_HIGH", "10.0000")

# --- Budgets: estimates, managers, retries ---------------------------------------------
# The server's estimate is the floor of every reservation: the offline token count of the input
# plus this output allowance (tokens; the model's own default_output_tokens when it has a price),
# priced with the call's model, or with this model's price when the call names none.
HITL_OUTPUT_TOKEN_ALLOWANCE = _int("HITL_OUTPUT_TOKEN_ALLOWANCE", 1000, least=0)
HITL_FLOOR_PRICE_MODEL = env.str("HITL_FLOOR_PRICE_MODEL", default="gpt-4o")
# Reported usage above this many times the estimate raises a usage_overrun flag (safety_alert).
HITL_USAGE_FLAG_FACTOR = _float("HITL_USAGE_FLAG_FACTOR", 2.0, least=1)
# Budget overrides above these amounts need a manager (API.md: "above 100.0000"): cost limits
# in USD, token limits in tokens. Deployment settings, not a project's: no API changes them.
HITL_MANAGER_COST_THRESHOLD = _amount("HITL_MANAGER_COST_THRESHOLD", "100.0000")
HITL_MANAGER_TOKEN_THRESHOLD = _int("HITL_MANAGER_TOKEN_THRESHOLD", 100_000, least=0)
# daphne closes a connection with nothing received for this many seconds; a request received
# only in part by then (a client stalled mid-head or mid-body) is answered 408 first (core.middleware).
HITL_HTTP_IDLE_TIMEOUT = _float("HITL_HTTP_IDLE_TIMEOUT", 60.0, above=0)
# A deadlock or serialization failure is retried this many times before the API answers 503.
HITL_DB_RETRIES = _int("HITL_DB_RETRIES", 3, least=0)
# The Retry-After (seconds) of a 503 answered for a transient database error.
HITL_RETRY_AFTER_SECONDS = _int("HITL_RETRY_AFTER_SECONDS", 1, least=0)
# A webhook receiver that has not answered within this many seconds counts as failed: the alert
# is sent again (with the same X-HITL-Delivery id) after the retry's back-off.
HITL_WEBHOOK_TIMEOUT_SECONDS = _float("HITL_WEBHOOK_TIMEOUT_SECONDS", 10, above=0)
# An alert handed to the broker whose delivery is not over after this long (its task lost: a Redis
# restarted without persistence) is queued again by beat; longer than a delivery's retries (~6 min).
HITL_NOTIFICATION_REQUEUE_MINUTES = _int("HITL_NOTIFICATION_REQUEUE_MINUTES", 15, least=10, most=_DAY_SECONDS // 60)
# Threads per web process that run requests' Django code (core/asgi.py): at most this many requests
# of a process run at once; keep it at or below HITL_DB_POOL_MAX (the long polls' own 4 database
# threads and the health check's own thread use the rest). A request that waits longer than
# HITL_QUEUE_TIMEOUT_SECONDS for its turn is answered 503 with Retry-After.
HITL_WEB_THREADS = _int("HITL_WEB_THREADS", 2, least=1)
HITL_QUEUE_TIMEOUT_SECONDS = _float("HITL_QUEUE_TIMEOUT_SECONDS", 30.0, above=0)

# --- Redis, channels and Celery -------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    from redis.exceptions import ConnectionError as _RedisConnectionError

    # Read as redis-py reads it, at start: a malformed one (http://x, a port past 65535, no scheme)
    # started every process and then made the health check a 500 and the worker die on its transport.
    try:
        import redis as _redis

        _redis.ConnectionPool.from_url(REDIS_URL)  # its scheme (redis://, rediss://, unix://), its db
        if REDIS_URL.startswith(("redis://", "rediss://")):
            from urllib.parse import urlsplit as _urlsplit

            _urlsplit(REDIS_URL).port  # noqa: B018  (a port past 65535 raises)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"REDIS_URL is not a Redis URL ({_exc}): e.g. redis://127.0.0.1:6379/0.") from None

    # channels-redis receives with a 5 s blocking pop; redis-py 8 reads with a 5 s socket timeout
    # by default, so an idle receive raised TimeoutError. Read longer than the pop blocks.
    # A pooled connection that a restarted Redis closed fails its next command: reconnect and try
    # it once more (else the first push after a Redis restart was lost).
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "core.channel_layer.RedisChannelLayer",  # channels_redis, fewer trips per group send
                    "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15,
                                          "retry_on_error": [_RedisConnectionError]}], "capacity": 1000}}
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}}

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS = {}
# Redis broker: a task a worker took and never acknowledged (the worker was killed mid-task: the
# tasks acknowledge late) is handed out again after this many seconds, checked every 10 s
# (Redis's default would hold an alert's retry for an hour). It must outlast a task's whole stay
# in a worker, or the task runs twice: its retry countdown (at most 80 s), its wait behind the
# tasks in front of it (a worker takes one task ahead per process: CELERY_WORKER_PREFETCH_MULTIPLIER
# below) and its run (at most 60 s). Ten minutes leave room for a backlog of slow webhooks.
HITL_BROKER_VISIBILITY_TIMEOUT = _int("HITL_BROKER_VISIBILITY_TIMEOUT", 600, least=1)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A broker that hangs (a Redis that neither answers nor refuses) holds whoever hands it a task
# for at most this many seconds per try, and a task is tried twice: a request's alerts are
# handed over after its commit in its own thread (they wait in the database for the next sweep
# when the broker does not take them), which waited for ever and held every web thread.
HITL_BROKER_SOCKET_TIMEOUT = _float("HITL_BROKER_SOCKET_TIMEOUT", 2.0, above=0)
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                    "interval_max": 0.2}
if CELERY_BROKER_URL.startswith("redis"):  # redis://, rediss://, redis+socket://
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": HITL_BROKER_VISIBILITY_TIMEOUT,
                                       "unacked_restore_interval": min(10, HITL_BROKER_VISIBILITY_TIMEOUT),
                                       "unacked_restore_throttle": 1,
                                       "socket_timeout": HITL_BROKER_SOCKET_TIMEOUT,
                                       "socket_connect_timeout": HITL_BROKER_SOCKET_TIMEOUT}
    CELERY_BROKER_CONNECTION_TIMEOUT = HITL_BROKER_SOCKET_TIMEOUT
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "celery-broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT = "core.kombu_fs:Transport"  # kombu's, each message written whole (a race lost one)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ALWAYS_EAGER = _bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_TASK_ROUTES = {"emergency.*": {"queue": "emergency"}}
# Both queues are declared, so a plain `celery -A botarmy_hitl worker` consumes both; a dedicated
# emergency worker can take `-Q emergency`.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = (Queue("celery"), Queue("emergency"))
HITL_HEARTBEAT_SECONDS = _int("HITL_HEARTBEAT_SECONDS", 10, least=1, most=_DAY_SECONDS)
CELERY_BEAT_SCHEDULE = {
    "core-heartbeat": {
        "task": "core.heartbeat",
        "schedule": timedelta(seconds=HITL_HEARTBEAT_SECONDS),
        "options": {"expires": HITL_HEARTBEAT_SECONDS},
    },
    "projects-requeue-notifications": {
        "task": "projects.requeue_notifications",
        "schedule": timedelta(seconds=60),
        "options": {"expires": 60},
    },
    # The same on the emergency queue: a worker that consumes only `celery` leaves the automatic
    # stop conditions unchecked, and /api/v1/health says so.
    "core-heartbeat-emergency": {
        "task": "core.heartbeat",
        "schedule": timedelta(seconds=HITL_HEARTBEAT_SECONDS),
        "kwargs": {"name": "emergency"},
        "options": {"expires": HITL_HEARTBEAT_SECONDS, "queue": "emergency"},
    },
    "approvals-expire-overdue": {
        "task": "approvals.expire_overdue",
        "schedule": timedelta(seconds=HITL_APPROVAL_SWEEP_SECONDS),
        "options": {"expires": HITL_APPROVAL_SWEEP_SECONDS},
    },
    "hitl-expire-overdue": {
        "task": "hitl.expire_overdue",
        "schedule": timedelta(seconds=HITL_APPROVAL_SWEEP_SECONDS),
        "options": {"expires": HITL_APPROVAL_SWEEP_SECONDS},
    },
    "approvals-warn-due": {
        "task": "approvals.warn_due",
        "schedule": timedelta(seconds=HITL_APPROVAL_SWEEP_SECONDS),
        "options": {"expires": HITL_APPROVAL_SWEEP_SECONDS},
    },
    "hitl-warn-due": {
        "task": "hitl.warn_due",
        "schedule": timedelta(seconds=HITL_APPROVAL_SWEEP_SECONDS),
        "options": {"expires": HITL_APPROVAL_SWEEP_SECONDS},
    },
    "emergency-check-conditions": {
        "task": "emergency.check_conditions",
        "schedule": timedelta(seconds=HITL_CONDITION_CHECK_SECONDS),
        "options": {"expires": HITL_CONDITION_CHECK_SECONDS},
    },
    "budgets-release-stale": {
        "task": "budgets.release_stale",
        "schedule": timedelta(minutes=10),
        "options": {"expires": 600},
    },
    "budgets-close-past-windows": {
        "task": "budgets.close_past_windows",
        "schedule": timedelta(minutes=5),
        "options": {"expires": 300},
    },
    "core-purge-idempotency-keys": {
        "task": "core.purge_idempotency_keys",
        "schedule": timedelta(hours=1),
        "options": {"expires": 3600},
    },
}

# How long a stored Idempotency-Key answer is replayed.
HITL_IDEMPOTENCY_TTL = timedelta(hours=_int("HITL_IDEMPOTENCY_TTL_HOURS", 24, least=1, most=_YEAR_HOURS))

# A refused request (403, 404, 409...) logs one warning line without traceback (Django logs the
# exception's traceback with it); server errors (5xx) keep theirs. See core.errors.OneLineRefusals.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"one_line_refusals": {"()": "core.errors.OneLineRefusals"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["one_line_refusals"]}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django": {"handlers": ["console"], "level": "INFO", "propagate": False},
                # the SDK's HTTP client (the demo fleet) logs every request at INFO: keep its warnings only
                "httpx": {"level": "WARNING"}},
}

# --- audit chain keys and checkpoints ---
# Audit rows are chained with HMAC-SHA256 (audit/keys.py, audit/hashing.py), each row naming its key.
# HITL_AUDIT_KEYS="k2:secret2,k1:secret1": the first key signs new rows, the others only verify older
# rows (to rotate, put a new key first and keep the old ones listed). Unset, a development key derived
# from DJANGO_SECRET_KEY is used: production MUST set random keys (32+ characters) of its own, kept out
# of the database (`manage.py check --deploy` warns otherwise).
HITL_AUDIT_KEYS = env.list("HITL_AUDIT_KEYS", default=[])
# Signs the checkpoint files (chain heads written outside the database); separate from the chain keys.
# Unset, derived from DJANGO_SECRET_KEY (development only).
HITL_AUDIT_CHECKPOINT_KEY = env.str("HITL_AUDIT_CHECKPOINT_KEY", default="")
# Keys that signed older checkpoint files (comma-separated): a rotated checkpoint key (or the move
# from the SECRET_KEY-derived one, `manage.py audit_dev_key --checkpoint`) leaves them verifying.
HITL_AUDIT_CHECKPOINT_OLD_KEYS = [k.strip() for k in env.str("HITL_AUDIT_CHECKPOINT_OLD_KEYS", default="").split(",")
                                  if k.strip()]
# Keep it off the database's host if you can (another volume, synced to write-once storage).
HITL_AUDIT_CHECKPOINT_DIR = Path(env.str("HITL_AUDIT_CHECKPOINT_DIR", default=str(VAR_DIR / "audit-checkpoints")))
# How often beat writes a checkpoint; 0 disables it (it was refused: 1 or more).
HITL_AUDIT_CHECKPOINT_MINUTES = _int("HITL_AUDIT_CHECKPOINT_MINUTES", 60, least=0, most=_YEAR_MINUTES)
if HITL_AUDIT_CHECKPOINT_MINUTES > 0:
    CELERY_BEAT_SCHEDULE["audit-checkpoint"] = {
        "task": "audit.checkpoint",
        "schedule": timedelta(minutes=HITL_AUDIT_CHECKPOINT_MINUTES),
        "options": {"expires": HITL_AUDIT_CHECKPOINT_MINUTES * 60},
    }
