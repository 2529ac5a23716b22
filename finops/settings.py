"""Django settings: every knob is read from the environment (django-environ), with dev defaults."""

import hashlib
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

from finops import crypto as _crypto

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
# The dev default is only usable with DEBUG on; production must set SECRET_KEY.
SECRET_KEY = env("SECRET_KEY", default="dev-insecure-secret-key-change-me" if DEBUG else environ.Env.NOTSET)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files served from our static files, no CDN (see the CSP below)
    "csp",
    "django_celery_beat",
    "django_celery_results",
    "providers_app",
    "costs_app",
    "tasks_app",
]

MIDDLEWARE = [
    "tasks_app.metrics.MetricsMiddleware",
    # First: an oversize API body is refused before any other work is done for it (finops/limits.py).
    "finops.limits.RequestBodyLimitMiddleware",
    "finops.correlation.CorrelationIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "finops.csp_headers.CSPMiddleware",  # django-csp's, the common header built once
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so a page whose replica read failed is served again from the primary by re-running the view only.
    "finops.db_router.ReplicaMiddleware",
]

# The admin's messages live in the session it already has. The default (cookie, then session) builds a cookie signer
# for every request, API calls included: ~8 % of a cached `GET /tasks/active`'s CPU, for messages only the admin sends.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

ROOT_URLCONF = "finops.urls"
WSGI_APPLICATION = "finops.wsgi.application"

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
            ],
        },
    },
]

# --- Database: PostgreSQL only (COPY, ON CONFLICT, advisory semantics are relied upon) ---
DATABASES = {"default": env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/finops")}
# psycopg 3's connection pool (per process) by default; DB_POOL=false falls back to persistent connections.
if env.bool("DB_POOL", default=True):
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django requires 0 with a pool: connections go back to it
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DB_POOL_MIN_SIZE", default=1),
        "max_size": env.int("DB_POOL_MAX_SIZE", default=10),
        "timeout": env.int("DB_POOL_TIMEOUT", default=10),
    }
    # With a pool, Django passes psycopg_pool's check=ConnectionPool.check_connection: each connection is checked
    # as it leaves the pool (one empty round trip). After a PostgreSQL restart the pooled connections are dead;
    # unchecked, the first request on each answered a 500.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=600)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"].setdefault("TEST", {})
# --- Read replica (optional): reporting reads of safe admin/API requests and exports go there (finops/db_router.py)
if env.str("DATABASE_REPLICA_URL", default=""):
    import copy as _copy

    DATABASES["replica"] = {
        **env.db("DATABASE_REPLICA_URL"),
        **{k: _copy.deepcopy(DATABASES["default"][k]) for k in ("CONN_MAX_AGE", "CONN_HEALTH_CHECKS", "OPTIONS")},
        "TEST": {"MIRROR": "default"},
    }
    if "pool" in DATABASES["replica"]["OPTIONS"]:
        # Short checkout: a replica that hands no connection quickly is treated as down, the page read from the primary.
        DATABASES["replica"]["OPTIONS"]["pool"]["timeout"] = env.int("DB_REPLICA_POOL_TIMEOUT", default=3)
DATABASE_ROUTERS = ["finops.db_router.ReplicaRouter"]
DATABASE_REPLICA_MAX_LAG_SECONDS = env.float("DATABASE_REPLICA_MAX_LAG_SECONDS", default=30.0)
DATABASE_REPLICA_CHECK_SECONDS = env.float("DATABASE_REPLICA_CHECK_SECONDS", default=5.0)
# After a write (POST/PUT/PATCH/DELETE) the same client reads the primary this long: its next page shows the write.
DATABASE_REPLICA_STICKY_SECONDS = env.int("DATABASE_REPLICA_STICKY_SECONDS", default=10)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# The admin's date and time formats (to the second): finops/formats/en/formats.py.
FORMAT_MODULE_PATH = ["finops.formats"]

# --- HTTPS: one switch for a site served over TLS (usually terminated by a proxy in front of gunicorn) ---
HTTPS = env.bool("HTTPS", default=False)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain HTTP
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600)
    # Off by default: they bind every subdomain of the site's domain to HTTPS, which only its owner can decide.
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    # `check --deploy` warns while these two are off (W005, W021). Off is the safe default, not an oversight:
    # includeSubDomains and preload commit every host under the registrable domain (other teams' sites included)
    # to HTTPS for a year and cannot be taken back quickly, so only the domain's owner may switch them on. With
    # them left off, the two warnings are silenced; switching either on brings its check back.
    SILENCED_SYSTEM_CHECKS = [
        *([] if SECURE_HSTS_INCLUDE_SUBDOMAINS else ["security.W005"]),
        *([] if SECURE_HSTS_PRELOAD else ["security.W021"]),
    ]

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- Cache (Redis): short-lived answers such as worker statistics, so API polling does not hammer the broker ---
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env("CACHE_URL", default="redis://127.0.0.1:6379/2"),
        "KEY_PREFIX": "finops",
        "TIMEOUT": 300,
    }
}

# --- Security: credentials encryption and API tokens ---
# Comma-separated Fernet keys; the first encrypts, all decrypt (rotate with `manage.py rotate_credentials`).
# A value that is not a Fernet key is refused here, at startup; `legacy:<passphrase>` is the explicit form of the
# old hashed derivation (see finops/crypto.py). The dev default is a fixed Fernet key, usable with DEBUG on only.
ENCRYPTION_KEY = env(
    "ENCRYPTION_KEY", default="u64SQadxz_PtPqELIW4eC2Fnhw3XoKAuFZmhYusmlG8=" if DEBUG else environ.Env.NOTSET
)
_crypto.parse_keys(ENCRYPTION_KEY)
# Signs the API's JWTs. Its own secret in production (required with DEBUG off): a leaked SECRET_KEY must not also
# mint API tokens, and rotating one must not force the other. In development it is derived from SECRET_KEY.
JWT_SECRET_KEY = env(
    "JWT_SECRET_KEY",
    default=hashlib.sha256(f"finops-dev-jwt:{SECRET_KEY}".encode()).hexdigest() if DEBUG else environ.Env.NOTSET,
)
if JWT_SECRET_KEY == SECRET_KEY:
    raise ImproperlyConfigured("JWT_SECRET_KEY must differ from SECRET_KEY: give the API tokens a secret of their own")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # simplejwt's, plus: the token must carry the fingerprint of the user's current password (finops/jwt_auth.py)
        "finops.jwt_auth.PasswordBoundJWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "finops.limits.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_PARSER_CLASSES": [
        "finops.limits.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # How many proxies in front of gunicorn append to X-Forwarded-For: the per-address throttles trust that many
    # entries (None: REMOTE_ADDR, the right choice without a proxy, since the header is then the client's word).
    "NUM_PROXIES": env.int("NUM_PROXIES", default=None),
    "UNAUTHENTICATED_USER": None,
}

# --- Limits (finops/limits.py): what one request may cost ---
# Request bodies, as Django's forms: the API refuses a larger one with 413 before reading or parsing it.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=2_621_440)  # Django's 2.5 MiB
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=DATA_UPLOAD_MAX_MEMORY_SIZE)
API_MAX_JSON_DEPTH = env.int("API_MAX_JSON_DEPTH", default=32)  # nesting of a JSON body; deeper is a 400
API_PAGE_MAX_LIMIT = env.int("API_PAGE_MAX_LIMIT", default=500)  # ?limit= above it is capped
API_PAGE_MAX_OFFSET = env.int("API_PAGE_MAX_OFFSET", default=1_000_000)  # ?offset= above it is a 400
# Request rates ("N/s|min|hour|day"; empty: no limit), counted in the Redis cache (shared by every web process).
THROTTLE_LOGIN_USER_RATE = env("THROTTLE_LOGIN_USER_RATE", default="5/min")  # token requests per username
THROTTLE_LOGIN_IP_RATE = env("THROTTLE_LOGIN_IP_RATE", default="20/min")  # token requests per address
THROTTLE_REFRESH_IP_RATE = env("THROTTLE_REFRESH_IP_RATE", default="60/min")  # token refreshes per address
THROTTLE_TRIGGER_RATE = env("THROTTLE_TRIGGER_RATE", default="30/min")  # triggers, replays, connection tests per user
SIMPLE_JWT = {
    "SIGNING_KEY": JWT_SECRET_KEY,
    "ALGORITHM": "HS256",
    "AUTH_HEADER_TYPES": ("Bearer",),
    # Access tokens cannot be revoked one by one, so they are short-lived; refresh tokens are single-use (each
    # refresh returns a new one and blacklists the old) and all of a user's are blacklisted when the password
    # changes (finops/jwt_auth.py).
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_TOKEN_MINUTES", default=5)),
    "REFRESH_TOKEN_LIFETIME": timedelta(hours=env.int("JWT_REFRESH_TOKEN_HOURS", default=24)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "TOKEN_OBTAIN_SERIALIZER": "finops.jwt_auth.TokenObtainPairSerializer",
    "TOKEN_REFRESH_SERIALIZER": "finops.jwt_auth.TokenRefreshSerializer",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "FinOps task system API",
    "DESCRIPTION": "Trigger, watch and cancel the FinOps background tasks.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from drf-spectacular-sidecar's static files (no CDN), its script in a file of its own
    # (SpectacularSwaggerSplitView), so the page works under the CSP's script-src 'self'.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The framework's and the limits' error answers (400/401/403/404/413/429) on every operation (finops/schema.py).
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "finops.schema.add_error_responses"],
    # Several serializers have a "status" field with different choices: each set gets a name of its own.
    "ENUM_NAME_OVERRIDES": {
        "RecommendationStatusEnum": "costs_app.models.RecommendationStatus",
        "AnomalyStatusEnum": "costs_app.models.AnomalyStatus",
        "AnomalyStatusChangeEnum": "costs_app.anomalies_api.ANOMALY_STATUS_CHANGES",
        "HealthStatusEnum": ["ok", "fail"],
    },
}

# /api/schema/ and /api/docs/ describe every route and parameter: only signed-in users see them unless this is on
# (the docs page sends others to the admin login; the schema answers 401).
API_DOCS_PUBLIC = env.bool("API_DOCS_PUBLIC", default=False)
if not API_DOCS_PUBLIC:
    SPECTACULAR_SETTINGS["SERVE_PERMISSIONS"] = ["rest_framework.permissions.IsAuthenticated"]

# --- Response headers ---
# Content-Security-Policy (django-csp): everything from this origin only, no inline script, no plugins, no framing.
# The admin and the API docs (Swagger UI from drf-spectacular-sidecar, its init script a separate file) work
# under it; tests/security/test_headers.py and test_browser_csp.py check both. Swagger UI's stylesheet draws
# its icons as data: URIs, hence img-src data:. CSP_REPORT_URI (optional) receives violation reports.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    },
}
if env("CSP_REPORT_URI", default=""):
    CONTENT_SECURITY_POLICY["DIRECTIVES"]["report-uri"] = [env("CSP_REPORT_URI")]
# Django's defaults, stated because the tests and the deploy check rely on them.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# --- Celery (settings namespace CELERY_) ---
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default="redis://127.0.0.1:6379/1")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_COMPRESSION = "gzip"
CELERY_RESULT_COMPRESSION = "gzip"
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_WORKER_PREFETCH_MULTIPLIER", default=1)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("TASK_SOFT_TIME_LIMIT", default=25 * 60)
CELERY_TASK_TIME_LIMIT = env.int("TASK_TIME_LIMIT", default=30 * 60)
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # our JSON logging applies to workers too
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_WORKER_SEND_TASK_EVENTS", default=False)
CELERY_RESULT_EXPIRES = env.int("CELERY_RESULT_EXPIRES", default=7 * 24 * 3600)
CELERY_RESULT_EXTENDED = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_POOL_LIMIT = env.int("CELERY_BROKER_POOL_LIMIT", default=10)
# Longer than the hard time limit, or Redis would redeliver a task that is still running.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=CELERY_TASK_TIME_LIMIT + 30 * 60),
}
# Redis Sentinel: with sentinel:// broker and result URLs, the name of the master the sentinels watch (Celery's and
# the platform's own Redis clients, finops/redis_url.py, ask them for it), and the sentinels' own password if any.
REDIS_SENTINEL_MASTER = env("REDIS_SENTINEL_MASTER", default="")
if REDIS_SENTINEL_MASTER:
    _sentinel = {"master_name": REDIS_SENTINEL_MASTER}
    if env("REDIS_SENTINEL_PASSWORD", default=""):
        _sentinel["sentinel_kwargs"] = {"password": env("REDIS_SENTINEL_PASSWORD")}
    CELERY_BROKER_TRANSPORT_OPTIONS.update(_sentinel)
    CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = dict(_sentinel)
CELERY_BEAT_SCHEDULER = "tasks_app.beat:FinOpsScheduler"
CELERY_TASK_DEFAULT_QUEUE = "default"
TASK_QUEUES = ("default", "cost_sync", "resource_discovery", "monitoring", "analysis", "maintenance")
CELERY_TASK_QUEUES = tuple(Queue(name, routing_key=name) for name in TASK_QUEUES)
CELERY_TASK_ROUTES = {
    "sync_provider_cost_data": {"queue": "cost_sync"},
    "discover_provider_resources": {"queue": "resource_discovery"},
    "monitor_budget": {"queue": "monitoring"},
    "analyze_optimization_opportunities": {"queue": "analysis"},
    "detect_cost_anomalies": {"queue": "analysis"},
    "cleanup_old_data": {"queue": "maintenance"},
}

# --- Task platform behaviour ---
# Retries: TASK_MAX_RETRIES attempts after the first, countdown = base * 2**n (60, 120, 240 s).
TASK_MAX_RETRIES = env.int("TASK_MAX_RETRIES", default=3)
TASK_RETRY_BACKOFF_BASE = env.float("TASK_RETRY_BACKOFF_BASE", default=60.0)
# A run still QUEUED this long after enqueue is considered lost by the reconciler and enqueued again (the slow
# case: a broker that lost its data, and messages a dead worker took, are detected and republished at once).
TASK_QUEUED_LEASE = env.int("TASK_QUEUED_LEASE", default=2 * 3600)
TASK_RECONCILE_INTERVAL = env.int("TASK_RECONCILE_INTERVAL", default=60)
BEAT_HEARTBEAT_MAX_AGE = env.int("BEAT_HEARTBEAT_MAX_AGE", default=120)
# A run's claim in the ledger and its per-account lock live this long unless the executing process renews
# them (every TASK_CLAIM_RENEW s): a killed or frozen executor's run is handed over and its lock lapses
# within about one lease, and the frozen one's late result is refused (fencing).
TASK_CLAIM_LEASE = env.int("TASK_CLAIM_LEASE", default=60)
TASK_CLAIM_RENEW = env.float("TASK_CLAIM_RENEW", default=20.0)
# A run whose lock (per account) is held by a live run waits for it this long in all, looking again at growing
# intervals (at most 60 s) without spending TASK_MAX_RETRIES: by default a holder's longest life, its hard time
# limit plus one claim lease. Past it the run fails, naming the lock.
TASK_LOCK_WAIT = env.int("TASK_LOCK_WAIT", default=CELERY_TASK_TIME_LIMIT + TASK_CLAIM_LEASE)
# A message a worker took (prefetch, or a retry's countdown) but did not start this long after it was due: the
# worker died holding it, and the reconciler publishes the run again (the ledger claim drops a duplicate).
TASK_UNACKED_GRACE = env.int("TASK_UNACKED_GRACE", default=120)
# How long a worker keeps retrying a ledger write (claim, outcome) while PostgreSQL is unreachable.
TASK_LEDGER_PATIENCE = env.int("TASK_LEDGER_PATIENCE", default=120)
# One beat sends: the leader holds a Redis lease this long, renewed every tick; a standby takes over when it lapses.
BEAT_LEADER_LEASE = env.int("BEAT_LEADER_LEASE", default=30)
# platform_probe's countable side effects go here instead of the broker (drills that wipe the broker's Redis).
PROBE_MARKS_URL = env("PROBE_MARKS_URL", default="")
# Failure alerts: the first failure of a task alerts at once, later ones within this many seconds are counted
# and sent as one alert with the count when the window is over (a failure storm sends 2 messages, not 100).
TASK_FAILURE_ALERT_WINDOW = env.int("TASK_FAILURE_ALERT_WINDOW", default=600)
# /metrics: with a token, scrapers send `Authorization: Bearer <token>`; without one, loopback clients only.
METRICS_TOKEN = env("METRICS_TOKEN", default="")
# GET /tasks/active reads the snapshots workers write at each heartbeat; true asks the workers by broadcast (slow).
TASKS_ACTIVE_LIVE = env.bool("TASKS_ACTIVE_LIVE", default=False)
# Each web process serves GET /tasks/active from an answer computed at most this many seconds before (plus the time
# one refresh takes), one per visibility scope (tasks_app/api/answer_cache.py); 0: computed for every request.
TASKS_ACTIVE_CACHE_SECONDS = env.float("TASKS_ACTIVE_CACHE_SECONDS", default=1.0)
# A user authenticated by JWT is read from the database at most once a second per web process and token (finops/
# jwt_auth.py): a deactivation or password change made elsewhere takes effect within this many seconds. 0: every time.
JWT_USER_CACHE_SECONDS = env.float("JWT_USER_CACHE_SECONDS", default=1.0)
# Health: a run QUEUED this long without a message in the broker, or a lock/claim this stale, is reported.
HEALTH_QUEUED_GRACE = env.int("HEALTH_QUEUED_GRACE", default=120)

# --- Cloud connectors ---
# AWS SDK attempts per request (first try included): few, so the platform's retry policy is what retries.
AWS_SDK_MAX_ATTEMPTS = env.int("AWS_SDK_MAX_ATTEMPTS", default=2)
# Connect and read timeout of one AWS SDK request, seconds.
AWS_SDK_TIMEOUT = env.int("AWS_SDK_TIMEOUT", default=30)

# --- FOCUS files (providers_app/connectors/focus.py) ---
# A focus account's settings.path must resolve (symlinks followed) inside this folder; relative paths are taken
# from it. Set by the operator only (environment, never the admin or API); empty refuses every focus path.
# `manage.py import_focus PATH` / `seed_demo` read the path typed by the operator on the command line wherever it is.
FOCUS_IMPORT_ROOT = env("FOCUS_IMPORT_ROOT", default=str(BASE_DIR / "imports"))
# A CSV line longer than this (the reader's block size, so memory stays a few blocks whatever the compression
# ratio) and a field longer than FOCUS_MAX_FIELD_BYTES are rule errors naming the file and row.
FOCUS_MAX_LINE_BYTES = env.int("FOCUS_MAX_LINE_BYTES", default=4 << 20)
FOCUS_MAX_FIELD_BYTES = env.int("FOCUS_MAX_FIELD_BYTES", default=64 << 10)
# A Parquet column chunk larger than this uncompressed is refused before it is read (a "parquet bomb").
FOCUS_MAX_PARQUET_CHUNK_BYTES = env.int("FOCUS_MAX_PARQUET_CHUNK_BYTES", default=256 << 20)

# --- Retention (days) for cleanup_old_data ---
# The defaults of the RetentionPolicy rows (edited in the admin): a data migration creates one row per class
# from these, and a class with no row gets one from them at the next cleanup. 0 creates the policy disabled.
RETENTION_DAYS = {
    "cost_lines": env.int("RETENTION_COST_LINES_DAYS", default=3 * 365),
    "daily_rollups": env.int("RETENTION_DAILY_ROLLUPS_DAYS", default=5 * 365),
    "task_runs": env.int("RETENTION_TASK_RUNS_DAYS", default=90),
    "task_results": env.int("RETENTION_TASK_RESULTS_DAYS", default=30),
    "resolved_alerts": env.int("RETENTION_RESOLVED_ALERTS_DAYS", default=365),
    "closed_recommendations": env.int("RETENTION_CLOSED_RECOMMENDATIONS_DAYS", default=180),
    "terminated_resources": env.int("RETENTION_TERMINATED_RESOURCES_DAYS", default=90),
    "resolved_anomalies": env.int("RETENTION_RESOLVED_ANOMALIES_DAYS", default=365),
}
RETENTION_BATCH_SIZE = env.int("RETENTION_BATCH_SIZE", default=5000)
# A batch waiting longer than this for a lock gives up (the task retries later) instead of queueing writers.
RETENTION_LOCK_TIMEOUT = env.float("RETENTION_LOCK_TIMEOUT", default=5.0)
# Seconds one cleanup may run before it stops between batches (under the soft time limit); the next run goes on.
RETENTION_TIME_BUDGET = env.int("RETENTION_TIME_BUDGET", default=20 * 60)

# An import's swap of a month (DETACH/ATTACH, ACCESS EXCLUSIVE on the month's table) waits at most this long for
# readers of the month per attempt, so queries never queue behind it for longer; then it tries again, this many
# attempts in all, before the import fails and is retried (costs_app.services.partitions.Stage.swap).
INGEST_SWAP_LOCK_TIMEOUT = env.float("INGEST_SWAP_LOCK_TIMEOUT", default=1.0)
INGEST_SWAP_ATTEMPTS = env.int("INGEST_SWAP_ATTEMPTS", default=10)

# --- Alerting ---
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="finops@localhost")
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
# Where django.core.mail.backends.filebased.EmailBackend writes (start_dev_tasks.py chooses it: no mail server).
EMAIL_FILE_PATH = env("EMAIL_FILE_PATH", default=str(BASE_DIR / ".data" / "mail"))
NOTIFICATION_TIMEOUT = env.float("NOTIFICATION_TIMEOUT", default=10.0)
# Hosts (exact names or IP literals, any port) that outbound calls may reach outside the egress policy
# (finops/egress.py), plain http included: emulators, a private S3. Environment only; never the admin or API.
EGRESS_ALLOWED_HOSTS = env.list("EGRESS_ALLOWED_HOSTS", default=[])
# A failed alert delivery is retried after base * 2**(n-1) seconds (60, 120, 240, 480, 960), at most this many
# attempts in all; then it is marked failed (visible in the admin, retriable from there).
BUDGET_NOTIFY_MAX_ATTEMPTS = env.int("BUDGET_NOTIFY_MAX_ATTEMPTS", default=6)
BUDGET_NOTIFY_RETRY_BASE = env.float("BUDGET_NOTIFY_RETRY_BASE", default=60.0)
# Deliveries one monitor_budget run sends at most; the rest go in the follow-up run.
BUDGET_DELIVERY_BATCH = env.int("BUDGET_DELIVERY_BATCH", default=2000)

# --- Budgets (monitor_budget) ---
# The forecast's run rate: the last 7 days of data, shaped by weekday from the last LOOKBACK days (see
# costs_app/services/budgets.py). No forecast (and no FORECASTED alert) from fewer than MIN_DAYS days of data.
BUDGET_FORECAST_LOOKBACK_DAYS = env.int("BUDGET_FORECAST_LOOKBACK_DAYS", default=28)
BUDGET_FORECAST_MIN_DAYS = env.int("BUDGET_FORECAST_MIN_DAYS", default=7)
# Cost data arrives a day or two late: a period that ended fewer than this many days ago is still checked
# against its actual spend, and its alerts are resolved only afterwards.
BUDGET_LATE_DATA_DAYS = env.int("BUDGET_LATE_DATA_DAYS", default=3)
# PostgreSQL work_mem for the check's one aggregate statement (sorts and hashes of the rollups stay in memory).
BUDGET_CHECK_WORK_MEM = env("BUDGET_CHECK_WORK_MEM", default="64MB")

# --- Analysis ---
# Anomalies (costs_app/services/anomalies.py). Baseline: whole weeks, so every weekday is in it equally often.
ANOMALY_BASELINE_DAYS = env.int("ANOMALY_BASELINE_DAYS", default=28)
if ANOMALY_BASELINE_DAYS < 14 or ANOMALY_BASELINE_DAYS % 7:
    raise ImproperlyConfigured(
        f"ANOMALY_BASELINE_DAYS must be a multiple of 7, at least 14 (got {ANOMALY_BASELINE_DAYS})"
    )
# Floors given to new monitors (each monitor keeps its own): impact in billing currency and in % of expected.
ANOMALY_MIN_IMPACT = env.float("ANOMALY_MIN_IMPACT", default=10.0)
ANOMALY_MIN_IMPACT_PERCENT = env.float("ANOMALY_MIN_IMPACT_PERCENT", default=20.0)
# Width of the band in standard deviations of the out-of-sample prediction error (bench/anomalies.py: 6.5).
ANOMALY_SCORE_THRESHOLD = env.float("ANOMALY_SCORE_THRESHOLD", default=6.5)
# Days up to each account's latest data day that every run (re)judges.
ANOMALY_LOOKBACK_DAYS = env.int("ANOMALY_LOOKBACK_DAYS", default=7)
# Anomalous days of a series separated by at most this many normal days are one anomaly (0 = strictly consecutive).
ANOMALY_MERGE_GAP_DAYS = env.int("ANOMALY_MERGE_GAP_DAYS", default=2)
# Optimisation rules (costs_app/services/optimization/; the README has the catalogue).
OPTIMIZATION_STALE_RESOURCE_DAYS = env.int("OPTIMIZATION_STALE_RESOURCE_DAYS", default=7)
OPTIMIZATION_LOOKBACK_DAYS = env.int("OPTIMIZATION_LOOKBACK_DAYS", default=30)
OPTIMIZATION_MIN_MONTHLY_SAVING = env.float("OPTIMIZATION_MIN_MONTHLY_SAVING", default=1.0)
# Typical 1-year no-upfront savings-plan discount on compute, used to estimate commitment savings.
OPTIMIZATION_COMMITMENT_DISCOUNT_RATE = env.float("OPTIMIZATION_COMMITMENT_DISCOUNT_RATE", default=0.25)
# CPU-based rules read this many days of hourly CPU, and judge an instance only when this share of the hours
# has a sample.
OPTIMIZATION_CPU_DAYS = env.int("OPTIMIZATION_CPU_DAYS", default=14)
OPTIMIZATION_CPU_MIN_COVERAGE = env.float("OPTIMIZATION_CPU_MIN_COVERAGE", default=0.8)
OPTIMIZATION_IDLE_CPU_P95 = env.float("OPTIMIZATION_IDLE_CPU_P95", default=5.0)
OPTIMIZATION_RIGHTSIZING_HEADROOM = env.float("OPTIMIZATION_RIGHTSIZING_HEADROOM", default=0.2)
# Where memory use is measured (Azure VMs): no downsizing that would put the memory p95 above this % of the
# smaller size's memory (a smaller size of a family has proportionally less memory).
OPTIMIZATION_RIGHTSIZING_MAX_MEMORY_PCT = env.float("OPTIMIZATION_RIGHTSIZING_MAX_MEMORY_PCT", default=80.0)
OPTIMIZATION_STOPPED_DAYS = env.int("OPTIMIZATION_STOPPED_DAYS", default=30)
OPTIMIZATION_UNATTACHED_VOLUME_DAYS = env.int("OPTIMIZATION_UNATTACHED_VOLUME_DAYS", default=7)
OPTIMIZATION_SNAPSHOT_MAX_AGE_DAYS = env.int("OPTIMIZATION_SNAPSHOT_MAX_AGE_DAYS", default=180)
OPTIMIZATION_ORPHANED_SNAPSHOT_DAYS = env.int("OPTIMIZATION_ORPHANED_SNAPSHOT_DAYS", default=14)
OPTIMIZATION_UNASSOCIATED_IP_DAYS = env.int("OPTIMIZATION_UNASSOCIATED_IP_DAYS", default=3)
OPTIMIZATION_IDLE_LB_DAYS = env.int("OPTIMIZATION_IDLE_LB_DAYS", default=14)
OPTIMIZATION_IDLE_LB_MAX_DAILY_REQUESTS = env.int("OPTIMIZATION_IDLE_LB_MAX_DAILY_REQUESTS", default=10)
OPTIMIZATION_REQUIRED_TAG_KEYS = env.list("OPTIMIZATION_REQUIRED_TAG_KEYS", default=["owner"])
OPTIMIZATION_UNTAGGED_MAX_SHARE = env.float("OPTIMIZATION_UNTAGGED_MAX_SHARE", default=0.1)
# A done recommendation's realised saving is measured once this many days of cost data follow it.
OPTIMIZATION_REALISED_MIN_DAYS = env.int("OPTIMIZATION_REALISED_MIN_DAYS", default=7)

# --- Logging: JSON lines on stdout, each carrying the correlation id ---
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "finops.logging.ContextFilter"}},
    "formatters": {
        "json": {
            "()": "finops.logging.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "celery": {"level": LOG_LEVEL},
    },
}
