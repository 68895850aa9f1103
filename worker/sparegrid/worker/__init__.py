"""The Sparegrid worker daemon: lends this machine's devices to a coordinator.

Public API: `WorkerConfig`, `Worker` (async `run()`, `shutdown()`), `register` (the
`sparegrid worker` CLI commands) and the executor interface in `sparegrid.worker.executors`.
Names are imported on first use, so the per-device child process, which imports this
package, does not pay for gRPC.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sparegrid.worker.cli import register
    from sparegrid.worker.config import ConfigError, WorkerConfig
    from sparegrid.worker.daemon import Worker
    from sparegrid.worker.node.devices import DeviceInfo, detect_devices

_EXPORTS = {
    "ConfigError": "sparegrid.worker.config",
    "DeviceInfo": "sparegrid.worker.node.devices",
    "Worker": "sparegrid.worker.daemon",
    "WorkerConfig": "sparegrid.worker.config",
    "detect_devices": "sparegrid.worker.node.devices",
    "register": "sparegrid.worker.cli",
}

__all__ = ["ConfigError", "DeviceInfo", "Worker", "WorkerConfig", "detect_devices", "register"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)
