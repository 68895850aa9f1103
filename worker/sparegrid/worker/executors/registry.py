"""Which executors a worker offers: the built-ins plus the `sparegrid.executors` entry points.

An executor is named by an import target ("module:Class") so the per-device child process
can load it by itself; the daemon only reads its name and version.
"""

import importlib
import importlib.util
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points

from sparegrid.worker.executors.base import Executor

ENTRY_POINT_GROUP = "sparegrid.executors"
_log = logging.getLogger("sparegrid.worker.executors")

BUILTIN_TARGETS = (
    "sparegrid.worker.executors.builtin:EchoExecutor",
    "sparegrid.worker.executors.builtin:ChecksumExecutor",
)
# Heavy executors: named without importing them (torch takes seconds to import), and
# offered only where the packages they need are installed.
OPTIONAL_BUILTINS = (
    (
        "inference",
        "1.0",
        "sparegrid.worker.executors.inference:InferenceExecutor",
        ("torch", "safetensors"),
    ),
    (
        "generate",
        "1.0",
        "sparegrid.worker.executors.generate:GenerateExecutor",
        ("torch", "safetensors", "transformers"),
    ),
)
FAKE_TARGETS = (
    "sparegrid.worker.executors.fake:CrashExecutor",
    "sparegrid.worker.executors.fake:RaisingExecutor",
    "sparegrid.worker.executors.fake:ChattyExecutor",
    "sparegrid.worker.executors.fake:DeviceFaultExecutor",
)


@dataclass(frozen=True)
class ExecutorSpec:
    name: str
    version: str
    target: str  # "module:Class"


class RegistryError(Exception):
    pass


def load_target(target: str) -> object:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise RegistryError(f"executor target {target!r} is not 'module:Class'")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def instantiate(target: str) -> Executor:
    """Builds the executor in the process that will run it."""
    obj = load_target(target)
    executor = obj() if isinstance(obj, type) else obj
    if not isinstance(executor, Executor):
        raise RegistryError(f"{target} has no name, version and run(task)")
    return executor


def spec_for(target: str) -> ExecutorSpec:
    obj = load_target(target)
    name, version = getattr(obj, "name", None), getattr(obj, "version", None)
    if not isinstance(name, str) or not isinstance(version, str) or not name:
        raise RegistryError(f"{target} must have string class attributes name and version")
    return ExecutorSpec(name=name, version=version, target=target)


class ExecutorRegistry:
    """Job kind -> executor spec. Immutable; `with_targets` returns a new registry."""

    def __init__(self, specs: Iterable[ExecutorSpec] = ()) -> None:
        self._specs: dict[str, ExecutorSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                _log.warning(
                    "executor %r is defined twice; keeping %s",
                    spec.name,
                    self._specs[spec.name].target,
                )
                continue
            self._specs[spec.name] = spec

    @classmethod
    def builtin(cls) -> "ExecutorRegistry":
        specs = [spec_for(t) for t in BUILTIN_TARGETS]
        for name, version, target, needs in OPTIONAL_BUILTINS:
            missing = [n for n in needs if importlib.util.find_spec(n) is None]
            if missing:
                _log.info("no %s executor: %s not installed", name, ", ".join(missing))
            else:
                specs.append(ExecutorSpec(name, version, target))
        return cls(specs)

    @classmethod
    def discover(cls, group: str = ENTRY_POINT_GROUP) -> "ExecutorRegistry":
        """The built-ins plus every loadable entry point of `group`; bad ones are logged."""
        return cls.builtin().with_specs(_entry_point_specs(group))

    def with_targets(self, targets: Iterable[str]) -> "ExecutorRegistry":
        return self.with_specs(spec_for(t) for t in targets)

    def with_specs(self, specs: Iterable[ExecutorSpec]) -> "ExecutorRegistry":
        return ExecutorRegistry([*self._specs.values(), *specs])

    def get(self, name: str) -> ExecutorSpec | None:
        return self._specs.get(name)

    def specs(self) -> list[ExecutorSpec]:
        return sorted(self._specs.values(), key=lambda s: s.name)

    def targets(self) -> Mapping[str, str]:
        return {name: spec.target for name, spec in self._specs.items()}

    def describe(self) -> str:
        """The job kinds this node takes, for its volunteer: "checksum, echo, inference,
        render (Blender 5.0.1)"; a kind missing here (render without bpy) is one whose
        executor could not load, which the log said when it was looked for."""
        return ", ".join(_described(spec) for spec in self.specs()) or "no"


def _described(spec: ExecutorSpec) -> str:
    _, _, blender = spec.version.partition("+blender")
    return f"{spec.name} (Blender {blender})" if blender else spec.name


def _entry_point_specs(group: str) -> list[ExecutorSpec]:
    specs = []
    for ep in entry_points(group=group):
        try:
            spec = spec_for(ep.value)
        except Exception as exc:  # a broken plugin must not stop the worker
            _log.warning("skipping executor plugin %s = %s: %s", ep.name, ep.value, exc)
            continue
        if spec.name != ep.name:
            _log.warning("skipping executor plugin %s: its class says name=%r", ep.name, spec.name)
            continue
        specs.append(spec)
    return specs
