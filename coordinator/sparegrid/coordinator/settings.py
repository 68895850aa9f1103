"""The coordinator's settings, which `App` is given; config.py reads them from defaults, a
TOML file, the environment and flags."""

from dataclasses import dataclass, field
from pathlib import Path

from sparegrid.coordinator.services.admission import AdmissionConfig
from sparegrid.coordinator.services.calls import CallConfig
from sparegrid.coordinator.services.canaries import CanaryConfig
from sparegrid.coordinator.services.events import EventConfig
from sparegrid.coordinator.services.identity import IdentityConfig
from sparegrid.coordinator.services.invites import SignupConfig
from sparegrid.coordinator.services.prices import DEFAULT_PRICES, Price
from sparegrid.coordinator.services.quotas import QuotaConfig
from sparegrid.coordinator.services.reputation import TrustConfig
from sparegrid.coordinator.services.spotcheck import SpotConfig
from sparegrid.coordinator.services.sweeper import SweepConfig
from sparegrid.coordinator.services.vouching import VouchConfig
from sparegrid.coordinator.services.webhooks import WebhookConfig


@dataclass
class Settings:
    data_dir: Path
    heartbeat_seconds: float = 10.0
    # a node holding no task heartbeats this often: it renews nothing, and each heartbeat
    # costs gRPC and the event loop about 0.2 ms whatever it carries (gRPC's keepalive
    # pings, every 30 s, find a dead connection meanwhile)
    idle_heartbeat_seconds: float = 60.0
    lease_seconds: float = 30.0
    reconnect_grace_seconds: float = 10.0
    reap_interval_seconds: float = 1.0
    max_attempt_seconds: float = 3600.0
    max_blob_size: int = 16 << 30
    # where finished blobs live: "local" (DATA_DIR/blobs) or s3://BUCKET[/PREFIX]
    blobs: str = "local"
    # with blobs in a bucket: local copies kept for code that needs a file (blobs_s3.py)
    blob_cache_size: int = 10 << 30
    # credit per work units, by kind (prices.DEFAULT_PRICES says what each unit is)
    prices: dict[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    default_max_attempts: int = 3
    # a job of more tasks is written a slice per group commit (submit.py), and one ending
    # with more queued tasks has them cancelled likewise (Scheduler.sweep)
    bulk_above: int = 2000
    # a job none of whose tasks any connected node can take fails after this long, with
    # the reason it waits as its error (services/waits.py); 0: it waits for ever
    wait_limit_seconds: float = 86400.0
    # workers reporting an older sparegrid are refused at session start, told why; "": any
    min_worker_version: str = ""
    trust: TrustConfig = field(default_factory=TrustConfig)
    canaries: CanaryConfig = field(default_factory=CanaryConfig)
    spot_checks: SpotConfig = field(default_factory=SpotConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    vouching: VouchConfig = field(default_factory=VouchConfig)
    quotas: QuotaConfig = field(default_factory=QuotaConfig)
    sweeps: SweepConfig = field(default_factory=SweepConfig)
    # Heartbeats move a node's last_seen in memory; it is written for all nodes at once
    # this often, and at a clean stop. A crash loses at most this much of it.
    last_seen_flush_seconds: float = 30.0
    # how often the tables that changed much get fresh planner statistics (PostgreSQL:
    # ANALYZE, on a connection of its own, off the event loop; see Store.refresh_statistics)
    statistics_seconds: float = 10.0
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    events: EventConfig = field(default_factory=EventConfig)
    # tasks one account may run at once over all its jobs (0: no cap)
    max_running_per_account: int = 0
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    # signups with an invitation code: attempts allowed per caller address
    signups: SignupConfig = field(default_factory=SignupConfig)
    # unary client calls one account may make (services/calls.py); admins are not counted
    calls: CallConfig = field(default_factory=CallConfig)

    @property
    def key_path(self) -> Path:
        """The coordinator's Ed25519 key, which countersigns accepted results. Several
        coordinators over one database share it."""
        return self.data_dir / "coordinator.key"
