"""`coordinator serve`'s settings: defaults (those of `Settings` and the services'
configs, named once here) < a TOML file < `SPAREGRID_*` environment < flags, through the
loader the worker uses too (`sparegrid.wire.config`). `deploy/coordinator.toml` documents
every key.

The file is `--config FILE`, else `$SPAREGRID_COORDINATOR_CONFIG`, else
`/etc/sparegrid/coordinator.toml` when it exists. Keys sit at the top of the file or in a
`[coordinator]` table; each key is also a flag (`lease = 30` is `--lease 30`) and an
environment variable (`SPAREGRID_COORDINATOR_LEASE`; a few keep older names, e.g.
`SPAREGRID_LISTEN`), as `--help` shows.
"""

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparegrid.coordinator.blobs_s3 import parse_url
from sparegrid.coordinator.services.admission import AdmissionConfig
from sparegrid.coordinator.services.calls import CALL_BURST_SECONDS, CallConfig
from sparegrid.coordinator.services.canaries import CanaryConfig
from sparegrid.coordinator.services.identity import Enrollment, IdentityConfig
from sparegrid.coordinator.services.invites import SignupConfig
from sparegrid.coordinator.services.prices import DEFAULT_PRICES, Price, parse_price, prices_text
from sparegrid.coordinator.services.quotas import QuotaConfig
from sparegrid.coordinator.services.spotcheck import SpotConfig
from sparegrid.coordinator.services.sweeper import SweepConfig
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store import url_problem
from sparegrid.wire.config import (
    ConfigError,
    Schema,
    Setting,
    to_duration,
    to_float,
    to_int,
    to_path,
    to_size,
    to_str,
    to_str_list,
)

DEFAULT_CONFIG_FILE = "/etc/sparegrid/coordinator.toml"
ENV_CONFIG = "SPAREGRID_COORDINATOR_CONFIG"
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA_DIR = Path("sparegrid-coordinator")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_S: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Settings)}
_Q, _W = QuotaConfig(), SweepConfig()


def _gib(n: int) -> str:
    return f"{n >> 30}GiB"


def _choice(choices: tuple[str, ...], upper: bool = False) -> Any:
    def convert(value: object) -> str:
        text = to_str(value).upper() if upper else to_str(value)
        if text not in choices:
            raise ValueError(f"is not one of {', '.join(choices)}")
        return text

    return convert


def _blobs_url(value: object) -> str:
    text = to_str(value)
    if text != "local":
        parse_url(text)  # ValueError saying what is wrong
    return text


def _prices(value: object) -> dict[str, Price]:
    prices = {}
    for item in to_str_list(value):
        kind, sep, text = item.partition("=")
        if not sep or not kind:
            raise ValueError(f"has {item!r}; a price is KIND=CREDIT[/UNITS]")
        prices[kind] = parse_price(text)
    return prices


SETTINGS = (
    Setting(
        "listen",
        to_str,
        "address to listen on (port 0 picks a free one)",
        env="SPAREGRID_LISTEN",
        metavar="HOST:PORT",
        default=DEFAULT_LISTEN,
    ),
    Setting(
        "data_dir",
        to_path,
        "database, blobs, coordinator.key and admin.key live here",
        metavar="DIR",
        default=DEFAULT_DATA_DIR,
    ),
    Setting(
        "database",
        to_str,
        "sqlite:///path.db or postgresql://... [DATA_DIR/coordinator.db]",
        env="SPAREGRID_DATABASE",
        metavar="URL",
    ),
    Setting("tls_cert", to_path, "PEM certificate chain; enables TLS", metavar="PEM"),
    Setting("tls_key", to_path, "PEM private key for --tls-cert", metavar="PEM"),
    Setting(
        "heartbeat",
        to_float,
        "seconds between worker heartbeats",
        metavar="S",
        default=_S["heartbeat_seconds"],
    ),
    Setting(
        "idle_heartbeat",
        to_float,
        "seconds between heartbeats of a worker holding no task (at least --heartbeat)",
        metavar="S",
        default=_S["idle_heartbeat_seconds"],
    ),
    Setting(
        "lease",
        to_float,
        "lease seconds: a task whose node stops heartbeating goes back to the queue",
        metavar="S",
        default=_S["lease_seconds"],
    ),
    Setting(
        "registration_rate",
        to_float,
        f"worker registrations admitted a second; one whose turn comes within "
        f"{AdmissionConfig.hold:g} s waits for it, later ones are told when to retry (0: no limit)",
        metavar="N",
        default=AdmissionConfig.rate,
    ),
    Setting(
        "registration_share",
        to_float,
        "the share of --registration-rate (and of its burst) one caller address may take "
        "while others wait: an IPv4 address, an IPv6 /64; loopback is exempt (1: no limit)",
        metavar="F",
        default=AdmissionConfig.share,
    ),
    Setting(
        "anonymous_sessions_per_address",
        to_int,
        "worker sessions without an owner account's key one caller address may hold at "
        "once: an IPv4 address, an IPv6 /64; loopback is exempt (0: no limit)",
        metavar="N",
        default=AdmissionConfig.anonymous_sessions,
    ),
    Setting(
        "client_call_rate",
        to_float,
        "client calls one account may make a second, after ten seconds' worth at once (a "
        "page of results or jobs counts a call per 100 items); more are told when to try "
        "again; admins and streams (watches, uploads, downloads) are not counted (0: no limit)",
        metavar="N",
        default=CallConfig.rate,
    ),
    Setting(
        "new_anonymous_nodes_per_address",
        to_int,
        "node keys never seen before, of workers without an owner account's key, one caller "
        "address may bring at once, and as many more an hour: an IPv4 address, an IPv6 /64; "
        "known keys are not counted, loopback is exempt (0: no limit)",
        metavar="N",
        default=AdmissionConfig.new_anonymous_nodes,
    ),
    Setting(
        "signup_rate",
        to_float,
        "signup attempts with an invitation code one address may make a minute, after "
        f"{SignupConfig.burst} at once (more are told to wait)",
        metavar="N",
        default=SignupConfig.per_minute,
    ),
    Setting(
        "reconnect_grace",
        to_float,
        "seconds a lost node's leases wait for it to come back",
        metavar="S",
        default=_S["reconnect_grace_seconds"],
    ),
    Setting(
        "max_blob_size",
        to_size,
        "largest blob, in bytes or e.g. 16GiB",
        metavar="SIZE",
        default=_gib(_S["max_blob_size"]),
    ),
    Setting(
        "blobs",
        _blobs_url,
        "where finished blobs are kept: local (DATA_DIR/blobs) or s3://BUCKET[/PREFIX], an S3-compatible bucket (pip install 'sparegrid[s3]'; endpoint from AWS_ENDPOINT_URL, credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE, region from AWS_REGION)",
        metavar="URL",
        default="local",
    ),
    Setting(
        "blob_cache_size",
        to_size,
        "with --blobs s3://...: local copies of blobs kept for code that needs a file (a kind inspecting an input, a comparison of outputs), least recently used out first",
        metavar="SIZE",
        default=_gib(_S["blob_cache_size"]),
    ),
    Setting(
        "price",
        _prices,
        "credit per UNITS work units of a job kind (repeatable; a list in the file; an echo task is 1 unit, checksum 1 per byte, inference 1 per GFLOP x sample, render 1 per pixel x sample); defaults: "
        + prices_text(DEFAULT_PRICES)
        + "; a kind not listed 1 per unit",
        metavar="KIND=CREDIT[/UNITS]",
        repeat=True,
    ),
    Setting(
        "canary_rate",
        to_float,
        "share of cross-checked results re-issued as known-answer tasks",
        metavar="SHARE",
        default=CanaryConfig.rate,
    ),
    Setting(
        "spot_share",
        to_float,
        "share of a PNG render task's pixels its spot check re-renders; 0 checks whole tasks",
        metavar="SHARE",
        default=SpotConfig.share,
    ),
    Setting(
        "enrollment",
        _choice(tuple(e.value for e in Enrollment)),
        "which nodes may work: open (any; only nodes of owner accounts vote), approve (a new node works once `admin node approve` lets it), owners (only nodes of owner accounts may connect)",
        env="SPAREGRID_ENROLLMENT",
        metavar="MODE",
        default=IdentityConfig.enrollment.value,
    ),
    Setting(
        "min_stake",
        to_int,
        "credit an owner must stake (`sparegrid account stake`) for its nodes' results to count as votes",
        metavar="CREDIT",
        default=IdentityConfig.min_stake,
    ),
    Setting(
        "max_attempt_seconds",
        to_float,
        "longest a task may run on a node, heartbeats included (a worker's own limit when smaller), plus a quarter",
        metavar="S",
        default=_S["max_attempt_seconds"],
    ),
    Setting(
        "in_flight_quota",
        to_size,
        "bytes of unfinished uploads an account may have, its nodes' included (at their announced size)",
        metavar="SIZE",
        default=_gib(_Q.in_flight),
    ),
    Setting(
        "stored_quota",
        to_size,
        "bytes an account (its nodes included) may hold in blobs it uploaded and outputs its nodes sent inline, each until collected or for --blob-retention after upload",
        metavar="SIZE",
        default=_gib(_Q.stored),
    ),
    Setting(
        "anonymous_in_flight_quota",
        to_size,
        "bytes of unfinished uploads all nodes without an owner account may have together",
        metavar="SIZE",
        default=_gib(_Q.anonymous_in_flight),
    ),
    Setting(
        "anonymous_stored_quota",
        to_size,
        "bytes all nodes without an owner account may hold together in blobs they uploaded and outputs they sent inline",
        metavar="SIZE",
        default=_gib(_Q.anonymous_stored),
    ),
    Setting(
        "upload_expiry",
        to_duration,
        "an unfinished upload untouched this long is deleted; seconds, or 30m, 24h, 3d",
        metavar="DURATION",
        default=f"{_W.upload_expiry:g}s",
    ),
    Setting(
        "blob_retention",
        to_duration,
        "a blob no job needs (not an input of a job, not an output of one finished less than this long ago) is deleted this long after its last upload",
        metavar="DURATION",
        default=f"{_W.blob_retention:g}s",
    ),
    Setting(
        "node_expiry",
        to_duration,
        "a node that never worked is forgotten when unseen this long",
        metavar="DURATION",
        default=f"{_W.node_expiry:g}s",
    ),
    Setting(
        "sweep_interval",
        to_duration,
        "how often expired uploads, blobs and nodes are deleted",
        metavar="DURATION",
        default=f"{_W.interval:g}s",
    ),
    Setting(
        "wait_limit",
        to_duration,
        "a job that no connected node can run fails after waiting this long, saying why (e.g. 90m, 24h, 2d; 0 waits for ever)",
        metavar="DURATION",
        default=f"{_S['wait_limit_seconds']:g}s",
    ),
    Setting(
        "max_running_per_account",
        to_int,
        "tasks one account may run at once over all its jobs, so that one account cannot take the whole network (0: no cap)",
        metavar="N",
        default=0,
    ),
    Setting(
        "min_worker_version",
        to_str,
        "workers running an older sparegrid are refused at session start, told why (default: any)",
        metavar="VERSION",
    ),
    Setting(
        "log_level",
        _choice(LOG_LEVELS, upper=True),
        "log verbosity: DEBUG, INFO, WARNING or ERROR",
        env="SPAREGRID_LOG_LEVEL",
        metavar="LEVEL",
        default="INFO",
    ),
)
SCHEMA = Schema(SETTINGS, "SPAREGRID_COORDINATOR_", "coordinator", ENV_CONFIG, "coordinator")


@dataclass
class ServeConfig:
    """What `coordinator serve` runs with: the App's settings and how it is reached."""

    settings: Settings
    listen: str = DEFAULT_LISTEN
    database: str = ""  # "": SQLite in the data directory
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_level: str = "INFO"
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.settings.data_dir / 'coordinator.db'}"


def add_flags(parser: argparse.ArgumentParser, only: frozenset[str] | None = None) -> None:
    """`--config` and a flag per setting (or those in `only`), its default shown."""
    SCHEMA.add_flags(parser, DEFAULT_CONFIG_FILE, only)


def load(args: argparse.Namespace, env: Mapping[str, str]) -> ServeConfig:
    """The layered settings, checked; ConfigError naming each bad one and where it was set."""
    values, sources = SCHEMA.layer(args, env, DEFAULT_CONFIG_FILE)
    where = {s.name: sources.get(s.name, s.flag) for s in SETTINGS}
    get = values.get
    problems = _problems(values, where)
    if problems:
        raise ConfigError("invalid coordinator settings: " + "; ".join(problems))
    settings = Settings(data_dir=get("data_dir", DEFAULT_DATA_DIR))
    plain = {
        "heartbeat": "heartbeat_seconds",
        "idle_heartbeat": "idle_heartbeat_seconds",
        "lease": "lease_seconds",
        "reconnect_grace": "reconnect_grace_seconds",
        "max_blob_size": "max_blob_size",
        "blobs": "blobs",
        "blob_cache_size": "blob_cache_size",
        "max_attempt_seconds": "max_attempt_seconds",
        "wait_limit": "wait_limit_seconds",
        "min_worker_version": "min_worker_version",
        "max_running_per_account": "max_running_per_account",
    }
    for key, attribute in plain.items():
        if key in values:
            setattr(settings, attribute, values[key])
    if "idle_heartbeat" not in values:  # never more often than --heartbeat asks
        settings.idle_heartbeat_seconds = max(
            settings.idle_heartbeat_seconds, settings.heartbeat_seconds
        )
    settings.prices.update(get("price", {}))
    rate = get("registration_rate", AdmissionConfig.rate)
    share = get("registration_share", AdmissionConfig.share)
    sessions = get("anonymous_sessions_per_address", AdmissionConfig.anonymous_sessions)
    new_nodes = get("new_anonymous_nodes_per_address", AdmissionConfig.new_anonymous_nodes)
    settings.admission = AdmissionConfig(
        rate=rate,
        burst=max(1, int(rate)),
        share=share,
        anonymous_sessions=sessions,
        new_anonymous_nodes=new_nodes,
    )
    calls = get("client_call_rate", CallConfig.rate)
    settings.calls = CallConfig(rate=calls, burst=max(1, int(calls * CALL_BURST_SECONDS)))
    settings.signups = SignupConfig(per_minute=get("signup_rate", SignupConfig.per_minute))
    settings.canaries = CanaryConfig(rate=get("canary_rate", CanaryConfig.rate))
    settings.spot_checks = SpotConfig(share=get("spot_share", SpotConfig.share))
    settings.identity = IdentityConfig(
        Enrollment(get("enrollment", IdentityConfig.enrollment.value)),
        min_stake=get("min_stake", IdentityConfig.min_stake),
    )
    settings.quotas = QuotaConfig(
        in_flight=get("in_flight_quota", _Q.in_flight),
        stored=get("stored_quota", _Q.stored),
        anonymous_in_flight=get("anonymous_in_flight_quota", _Q.anonymous_in_flight),
        anonymous_stored=get("anonymous_stored_quota", _Q.anonymous_stored),
    )
    settings.sweeps = SweepConfig(
        interval=get("sweep_interval", _W.interval),
        upload_expiry=get("upload_expiry", _W.upload_expiry),
        blob_retention=get("blob_retention", _W.blob_retention),
        node_expiry=get("node_expiry", _W.node_expiry),
    )
    return ServeConfig(
        settings,
        listen=get("listen", DEFAULT_LISTEN),
        database=get("database", ""),
        tls_cert=get("tls_cert"),
        tls_key=get("tls_key"),
        log_level=get("log_level", "INFO"),
        sources=sources,
    )


def _problems(values: dict[str, Any], where: dict[str, str]) -> list[str]:
    get = values.get
    problems = []
    if ("tls_cert" in values) != ("tls_key" in values):
        problems.append("--tls-cert and --tls-key go together")
    heartbeat = get("heartbeat", _S["heartbeat_seconds"])
    lease = get("lease", _S["lease_seconds"])
    for name, value in [("heartbeat", heartbeat), ("lease", lease)]:
        if value <= 0:
            problems.append(f"{where[name]} must be positive, got {value:g}")
    if 0 < lease <= heartbeat:
        problems.append(f"{where['lease']} must be longer than {where['heartbeat']}")
    idle = get("idle_heartbeat", heartbeat)
    if idle < heartbeat:
        problems.append(
            f"{where['idle_heartbeat']} ({idle:g}) must be at least {where['heartbeat']}"
            f" ({heartbeat:g})"
        )
    for name in ("canary_rate", "spot_share"):
        share = get(name, 0.0)
        if not 0.0 <= share <= 1.0:
            problems.append(f"{where[name]} is a share from 0 to 1, got {share:g}")
    listen = str(get("listen", DEFAULT_LISTEN))
    host, sep, port = listen.rpartition(":")
    if not (host and sep and port.isdigit() and int(port) <= 65535):
        problems.append(
            f"{where['listen']} is HOST:PORT (e.g. 0.0.0.0:50051; port 0 picks a free one), "
            f"got {listen!r}"
        )
    if problem := url_problem(get("database", "") or "memory:"):
        problems.append(f"{where['database']}: {problem}")
    if get("registration_rate", 0.0) < 0:
        rate = get("registration_rate")
        problems.append(f"{where['registration_rate']} must be 0 or more, got {rate:g}")
    if not 0.0 < get("registration_share", 1.0) <= 1.0:
        share = get("registration_share")
        problems.append(f"{where['registration_share']} is a share above 0, up to 1, got {share:g}")
    if get("anonymous_sessions_per_address", 0) < 0:
        n = get("anonymous_sessions_per_address")
        problems.append(
            f"{where['anonymous_sessions_per_address']} is 0 (no limit) or more, got {n}"
        )
    if get("client_call_rate", 0.0) < 0:
        rate = get("client_call_rate")
        problems.append(f"{where['client_call_rate']} is 0 (no limit) or more, got {rate:g}")
    if get("new_anonymous_nodes_per_address", 0) < 0:
        n = get("new_anonymous_nodes_per_address")
        problems.append(
            f"{where['new_anonymous_nodes_per_address']} is 0 (no limit) or more, got {n}"
        )
    if get("signup_rate", 1.0) <= 0:
        rate = get("signup_rate")
        problems.append(f"{where['signup_rate']} must be positive, got {rate:g}")
    if get("min_stake", 0) < 0:
        problems.append(f"{where['min_stake']} must be 0 or more")
    if get("max_attempt_seconds", 1.0) <= 0:
        problems.append(f"{where['max_attempt_seconds']} must be positive")
    for name in ("upload_expiry", "blob_retention", "node_expiry", "sweep_interval"):
        if get(name, 1.0) <= 0:
            problems.append(f"{where[name]} must be positive")
    if get("max_running_per_account", 0) < 0:
        n = get("max_running_per_account")
        problems.append(f"{where['max_running_per_account']} is 0 (no cap) or more, got {n}")
    if get("wait_limit", 0.0) < 0:
        problems.append(f"{where['wait_limit']} must be 0 (for ever) or more")
    for name in (
        "max_blob_size",
        "blob_cache_size",
        "in_flight_quota",
        "stored_quota",
        "anonymous_in_flight_quota",
        "anonymous_stored_quota",
    ):
        if get(name, 1) <= 0:
            problems.append(f"{where[name]} must be a positive size")
    version = get("min_worker_version", "")
    if version and not _is_version(version):
        problems.append(f"{where['min_worker_version']} {version!r} is not a version like 0.2")
    return problems


def _is_version(text: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        Version(text)
    except InvalidVersion:
        return False
    return True
