"""Every metric, attribute, event and environment-variable name otel-budget uses."""

from __future__ import annotations

import enum

# Metrics a scope is measured on (DESIGN.md, "What is measured").
DURATION_MS = "duration_ms"
CPU_MS = "cpu_ms"
MEMORY_GROWTH_MB = "memory.growth_mb"
MEMORY_PEAK_GROWTH_MB = "memory.peak_growth_mb"
DB_QUERIES = "db.queries"
DB_DURATION_MS = "db.duration_ms"
DB_REPEATED_QUERIES = "db.repeated_queries"
# DB time of the statement `db.repeated_queries` counts (the most repeated one): an N+1 that costs something.
DB_REPEATED_DURATION_MS = "db.repeated_duration_ms"
EXTERNAL_CALLS = "external.calls"
EXTERNAL_DURATION_MS = "external.duration_ms"
TASKS_ENQUEUED = "tasks.enqueued"
EXTERNAL_UNTIMED_CALLS = "external.untimed_calls"
DB_UNTIMED_CONNECTIONS = "db.untimed_connections"

FIXED_METRICS = (
    DURATION_MS,
    CPU_MS,
    MEMORY_GROWTH_MB,
    MEMORY_PEAK_GROWTH_MB,
    DB_QUERIES,
    DB_DURATION_MS,
    DB_REPEATED_QUERIES,
    DB_REPEATED_DURATION_MS,
    EXTERNAL_CALLS,
    EXTERNAL_DURATION_MS,
    TASKS_ENQUEUED,
    EXTERNAL_UNTIMED_CALLS,
    DB_UNTIMED_CONNECTIONS,
)
# Measured on every scope span but given no histogram unless OTEL_BUDGET_METRICS names them: each histogram
# is one SDK record per scope (~70 000 instructions, docs/benchmarks.md), and these counts are 0 on almost
# every scope; their violations are counted by `budget.violations` all the same.
NOT_DEFAULT_HISTOGRAMS = frozenset({EXTERNAL_UNTIMED_CALLS, DB_UNTIMED_CONNECTIONS})
# Metrics whose `budget.exceeded` event names the most repeated statement (`budget.statement`).
STATEMENT_METRICS = frozenset({DB_REPEATED_QUERIES, DB_REPEATED_DURATION_MS})
# Metrics known only when the scope ends; their events carry the scope's end time.
END_ONLY_METRICS = frozenset({DURATION_MS, CPU_MS, MEMORY_GROWTH_MB, MEMORY_PEAK_GROWTH_MB})
# Metrics whose value is an integer count.
COUNT_METRICS = frozenset(
    {DB_QUERIES, DB_REPEATED_QUERIES, EXTERNAL_CALLS, TASKS_ENQUEUED, EXTERNAL_UNTIMED_CALLS, DB_UNTIMED_CONNECTIONS}
)

# `db.system` values with per-system metrics `db.<system>.queries` / `db.<system>.duration_ms`
# (the OpenTelemetry semantic conventions' list, plus the stable names that differ).
DB_SYSTEMS = frozenset(
    {
        "postgresql", "mongodb", "redis", "sqlite", "mysql", "mariadb", "mssql", "oracle",
        "cassandra", "elasticsearch", "opensearch", "couchbase", "couchdb", "dynamodb",
        "memcached", "neo4j", "clickhouse", "cockroachdb", "db2", "hbase", "hive", "h2",
        "influxdb", "trino", "spanner", "firestore", "cosmosdb", "other_sql", "sqlserver",
        "oracle.db", "ibm.db2", "microsoft.sql_server", "aws.dynamodb", "azure.cosmosdb",
        "gcp.spanner",
    }
)


# `db.system` values whose statements are SQL: normalised as SQL before repeats are counted.
SQL_SYSTEMS = frozenset(
    {
        "postgresql", "mysql", "mariadb", "sqlite", "mssql", "oracle", "other_sql", "cockroachdb", "db2", "h2",
        "clickhouse", "trino", "hive", "sqlserver", "oracle.db", "ibm.db2", "microsoft.sql_server", "spanner",
        "gcp.spanner",
    }
)  # fmt: skip


def db_queries_metric(system: str) -> str:
    return f"db.{system}.queries"


def db_duration_metric(system: str) -> str:
    return f"db.{system}.duration_ms"


# Attributes and events we add.
PREFIX = "budget."
ATTR_VIOLATIONS = "budget.violations"
ATTR_RULE = "budget.rule"
ATTR_CONFIG_ERROR = "budget.config_error"
ATTR_KILLED = "budget.killed"  # a Celery task whose pool process was killed, reported by the main process
EVENT_EXCEEDED = "budget.exceeded"
EVENT_METRIC = "budget.metric"
EVENT_LIMIT = "budget.limit"
EVENT_ACTUAL = "budget.actual"
EVENT_RULE = "budget.rule"
EVENT_STATEMENT = "budget.statement"
# What an untimed call or connection was: `Violation.details` keys (`library`, `target` as host:port,
# `call_site` as file:line) under PREFIX.
DETAIL_LIBRARY = "library"
DETAIL_TARGET = "target"
DETAIL_CALL_SITE = "call_site"
EVENT_LIBRARY = PREFIX + DETAIL_LIBRARY
EVENT_TARGET = PREFIX + DETAIL_TARGET
EVENT_CALL_SITE = PREFIX + DETAIL_CALL_SITE
# What grew in a studied run (`OTEL_BUDGET_MEMORY_STUDY`): its top allocation sites, `file:line +N KiB`
# joined by "; ", on the `memory.growth_mb` event (a `Violation.details` key) and on the scope span.
DETAIL_MEMORY_TOP = "memory.top"
ATTR_MEMORY_TOP = PREFIX + DETAIL_MEMORY_TOP
EVENT_DETAILS = (EVENT_LIBRARY, EVENT_TARGET, EVENT_CALL_SITE, ATTR_MEMORY_TOP)

# Scope names stay bounded (metric attributes): a request with no route is named `<method> unmatched`,
# and past MAX_SCOPE_NAMES distinct names in a process, a new one is named SCOPE_NAME_OVERFLOW.
UNMATCHED_ROUTE = "unmatched"


def unmatched_scope_name(method: str | None) -> str:
    """The name of a request that matched no route: `GET unmatched` (`HTTP unmatched` with no method)."""
    return f"{method or 'HTTP'} {UNMATCHED_ROUTE}"


SCOPE_NAME_OVERFLOW = "_other"
MAX_SCOPE_NAMES = 1000

# DB client spans that are not statements: connection and pool spans (SQLAlchemy's `connect`).
NOT_QUERY_SPANS = frozenset({"connect", "checkout", "checkin", "pool.checkout", "pool.connect"})
# Instrumentations whose DB client span wraps the driver's without being its parent (both are children of
# the span current at the call): their span around a driver span with the same statement is not counted.
SIBLING_LAYERS = frozenset({"opentelemetry.instrumentation.sqlalchemy"})


class ScopeKind(str, enum.Enum):
    """What a scope is: an HTTP request, a Celery task, or code the user wrapped in `budget_scope`.

    The values are also the budgets file's section names and the rule names of those sections.
    """

    HTTP = "http"
    CELERY = "celery"
    SCOPE = "scope"

    def __str__(self) -> str:  # "http", not "ScopeKind.HTTP" (StrEnum is Python 3.11+)
        return str(self.value)

    def __format__(self, format_spec: str) -> str:
        return format(str(self.value), format_spec)


# Rule names (`budget.rule`).
RULE_HTTP = ScopeKind.HTTP.value
RULE_CELERY = ScopeKind.CELERY.value
RULE_CODE = "code"
RULE_SCOPE = ScopeKind.SCOPE.value
ROUTE_RULE_PREFIX = "route:"
TASK_RULE_PREFIX = "task:"

# Attributes we read from spans (old and stable semantic conventions); the first of each pair wins.
DB_SYSTEM_NAME = "db.system.name"
DB_SYSTEM_OLD = "db.system"
DB_QUERY_TEXT = "db.query.text"
DB_STATEMENT_OLD = "db.statement"
HTTP_REQUEST_METHOD_OLD = "http.method"
DB_SYSTEM = (DB_SYSTEM_NAME, DB_SYSTEM_OLD)
DB_STATEMENT = (DB_QUERY_TEXT, DB_STATEMENT_OLD)
DB_OPERATION = ("db.operation.name", "db.operation")
DB_COLLECTION = ("db.collection.name", "db.mongodb.collection")
HTTP_METHOD = ("http.request.method", HTTP_REQUEST_METHOD_OLD)
HTTP_URL = ("url.full", "http.url")
HTTP_ROUTE = "http.route"
HTTP_REQUEST_METHOD = "http.request.method"
CELERY_TASK_NAME = "celery.task_name"
CELERY_ACTION = "celery.action"
CELERY_TASK_ID = "messaging.message.id"  # where the Celery instrumentation puts the task id
SCOPE_NAME = "budget.scope"
SPAN_KIND = "span.kind"  # Jaeger's tag for the span kind

# Where `@budget(...)` leaves its limits on the function it wraps (a killed task's rule `code`).
CODE_LIMITS_ATTR = "__otel_budget_limits__"

# OpenTelemetry metrics (instruments).
METER_NAME = "otel_budget"
INSTRUMENT_VIOLATIONS = "budget.violations"
INSTRUMENT_EVICTED = "budget.scopes.evicted"
INSTRUMENT_SPANS_DROPPED = "budget.spans.dropped"
# An observable instrument that never observes: its callback merges the in-process histograms (_metrics).
INSTRUMENT_FLUSH = "budget.histograms.flush"

# Environment variables.
ENV_CONFIG = "OTEL_BUDGET_CONFIG"
ENV_ENABLED = "OTEL_BUDGET_ENABLED"
ENV_MAX_SCOPES = "OTEL_BUDGET_MAX_OPEN_SCOPES"
ENV_METRICS = "OTEL_BUDGET_METRICS"
ENV_SAMPLING = "OTEL_BUDGET_SAMPLING"
ENV_MEMORY_STUDY = "OTEL_BUDGET_MEMORY_STUDY"
ENV_COMPILED = "OTEL_BUDGET_COMPILED"

# `OTEL_BUDGET_SAMPLING` values: tally every scope whatever the head sampler decides, or only sampled ones.
SAMPLING_ALL = "all"
SAMPLING_FOLLOW = "follow"

# Cap on the statement text exported in `budget.statement`.
STATEMENT_MAX_CHARS = 200
