"""The policy file's schema, decoded strictly with msgspec.

These Structs mirror the file one to one (TOML by default, JSON accepted). They
hold raw values: money stays a string here and is parsed into integer
micro-units by the loader, which also performs every cross-field check, so that
each error can name the key path it came from.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from guardpool.policy import bounds

FailMode = Literal["deny", "allow"]

# Upper bounds are part of the schema (msgspec refuses larger values while
# decoding, naming the key); lower bounds and cross-field rules are the
# loader's, whose messages say why. Every bound is explained in bounds.py.
Workers = Annotated[int, msgspec.Meta(le=bounds.MAX_WORKERS)]
JobMs = Annotated[int, msgspec.Meta(le=bounds.MAX_JOB_MS)]
MemoryMb = Annotated[int, msgspec.Meta(le=bounds.MAX_MEMORY_MB)]
IdlePollUs = Annotated[int, msgspec.Meta(le=bounds.MAX_IDLE_POLL_US)]
JobsPerWorker = Annotated[int, msgspec.Meta(le=bounds.MAX_JOBS_PER_WORKER)]
InputBytes = Annotated[int, msgspec.Meta(le=bounds.MAX_INPUT_BYTES)]
RegexMem = Annotated[int, msgspec.Meta(le=bounds.MAX_REGEX_MEM)]
StoreTimeoutMs = Annotated[int, msgspec.Meta(le=bounds.MAX_STORE_TIMEOUT_MS)]
TtlMs = Annotated[int, msgspec.Meta(le=bounds.MAX_RESERVATION_TTL_MS)]
# Limits and estimates: negative values get the loader's message.
ConfigAmount = Annotated[int, msgspec.Meta(le=bounds.MAX_AMOUNT)]
# Names are checked by the loader (its message says what a name may be).
Dimensions = Annotated[dict[str, ConfigAmount], msgspec.Meta(max_length=64)]


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class PoolConfig(_Section):
    """``[pool]``: the one place its defaults live; ``policy/poolsettings.py`` checks them."""

    workers: Workers | None = None
    job_timeout_ms: JobMs = 1000
    job_cpu_ms: JobMs = 1000
    memory_mb: MemoryMb = 256
    max_rss_mb: MemoryMb | None = None
    max_jobs_per_worker: JobsPerWorker = 10_000
    max_input_bytes: InputBytes = 1_048_576
    preload: list[str] = msgspec.field(default_factory=list)
    hardening: Literal["standard", "strict"] = "standard"
    user: str | int | None = None  # started as root, workers drop to this (default: nobody)
    pids_max: int = 64  # per-worker cgroup cap on processes and threads
    # How long (µs) a worker looks for its next job, and a waiting caller for its answer,
    # before sleeping. Unset: 50, or 0 on one CPU only (poolsettings.idle_look_s).
    idle_poll_us: IdlePollUs | None = None


class GuardDefaults(_Section):
    timeout_ms: JobMs = 1000
    on_timeout: FailMode = "deny"
    on_error: FailMode = "deny"
    regex_max_mem: RegexMem = 8 << 20


class GuardSpec(_Section):
    name: str
    phase: Literal["before", "after"] = "before"
    ops: list[str] = msgspec.field(default_factory=lambda: ["*"])
    deny_regex: list[str] = msgspec.field(default_factory=list)
    require_regex: list[str] = msgspec.field(default_factory=list)
    call: str | None = None
    reason: str = ""
    timeout_ms: JobMs | None = None
    on_timeout: FailMode | None = None
    on_error: FailMode | None = None
    privileged: bool = False


class LimitSpec(_Section):
    calls: ConfigAmount | None = None
    tokens: ConfigAmount | None = None
    cost: str | int | None = None
    wall_ms: ConfigAmount | None = None
    dimensions: Dimensions = msgspec.field(default_factory=dict)
    window: str = "run"
    scope: Literal["run", "principal", "global"] = "run"
    enforcement: Literal["fail-fast", "post-hoc"] = "fail-fast"
    on_exceed: Literal["deny", "warn", "ask"] = "deny"
    warn_at: float | None = 0.8
    on_warn_at: Literal["warn", "ask"] = "warn"
    margin: float = 0.05


class PriceSpec(_Section):
    input_per_mtok: str | int | None = None
    output_per_mtok: str | int | None = None
    per_call: str | int | None = None


class EstimateSpec(_Section):
    tokens: ConfigAmount | None = None
    input_tokens: ConfigAmount | None = None
    output_tokens: ConfigAmount | None = None
    cost: str | int | None = None
    wall_ms: ConfigAmount | None = None
    dimensions: Dimensions = msgspec.field(default_factory=dict)


class StoreConfig(_Section):
    backend: Literal["memory", "sqlite", "redis", "postgres"] = "sqlite"
    path: str = "guardpool.db"
    url: str | None = None
    key_prefix: str = "guardpool"
    connect_timeout_ms: StoreTimeoutMs = 250
    op_timeout_ms: StoreTimeoutMs = 250
    reservation_ttl_ms: TtlMs = 60_000


class AuditConfig(_Section):
    path: str = "guardpool.db"
    capture_input: bool = False
    on_failure: FailMode = "deny"
    # backend = "postgres": one ledger for a fleet (guardpool/audit/pg_ledger.py).
    backend: Literal["sqlite", "postgres"] = "sqlite"
    url: str | None = None
    schema: str = "guardpool"
    chain: str = "host"  # "host" (the host name), "run" (one chain per run), or a fixed name
    op_timeout_ms: int = 1000


class Config(_Section):
    pool: PoolConfig = msgspec.field(default_factory=PoolConfig)
    guards: GuardDefaults = msgspec.field(default_factory=GuardDefaults)
    guard: list[GuardSpec] = msgspec.field(default_factory=list)
    limits: dict[str, LimitSpec] = msgspec.field(default_factory=dict)
    prices: dict[str, PriceSpec] = msgspec.field(default_factory=dict)
    estimates: dict[str, EstimateSpec] = msgspec.field(default_factory=dict)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    audit: AuditConfig = msgspec.field(default_factory=AuditConfig)
