"""The files under deploy/ parse and say what the README promises: systemd units (known
keys, restart on failure, an unprivileged user, low priority), the container images, the
compose file (against a schema of the compose keys it uses) and the example worker.toml."""

import argparse
import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from sparegrid.worker.cli import register
from sparegrid.worker.settings import layered

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROOT = DEPLOY.parent

KNOWN_KEYS = {
    "Unit": {"Description", "After", "Wants", "Requires", "Documentation", "Before"},
    "Service": {
        *("Type", "User", "Group", "SupplementaryGroups", "StateDirectory", "Environment"),
        *("EnvironmentFile", "ExecStart", "Restart", "RestartSec", "KillSignal"),
        *("TimeoutStopSec", "Nice", "CPUSchedulingPolicy", "IOSchedulingClass"),
        *("IOSchedulingPriority", "CPUWeight", "IOWeight", "NoNewPrivileges", "ProtectSystem"),
        *("ProtectHome", "PrivateTmp", "ReadWritePaths", "WorkingDirectory"),
    },
    "Install": {"WantedBy"},
}


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """systemd's INI dialect: sections, KEY=VALUE lines (keys may repeat), # and ; comments."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}:{number}: not KEY=VALUE in a section"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


@pytest.mark.parametrize("name", ["sparegrid-worker.service", "sparegrid-coordinator.service"])
def test_units_use_only_known_keys(name: str) -> None:
    unit = parse_unit(DEPLOY / name)
    assert set(unit) == {"Unit", "Service", "Install"}
    for section, pairs in unit.items():
        unknown = {k for k, _ in pairs} - KNOWN_KEYS[section]
        assert not unknown, f"{name} [{section}] has keys systemd does not know: {unknown}"
    assert values(unit, "Service", "Restart") == ["on-failure"]
    assert values(unit, "Service", "User") and values(unit, "Service", "User") != ["root"]
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_worker_unit_runs_the_worker_at_low_priority() -> None:
    unit = parse_unit(DEPLOY / "sparegrid-worker.service")
    command = shlex.split(values(unit, "Service", "ExecStart")[0])
    assert command[1:3] == ["worker", "run"]
    assert int(values(unit, "Service", "Nice")[0]) >= 10
    assert values(unit, "Service", "IOSchedulingClass") == ["idle"]
    env = dict(v.split("=", 1) for v in values(unit, "Service", "Environment"))
    assert env["SPAREGRID_WORKER_DATA_DIR"] == "/var/lib/sparegrid-worker"
    assert env["SPAREGRID_WORKER_DATA_DIR"] in values(unit, "Service", "ReadWritePaths")


def instructions(path: Path) -> list[tuple[str, str]]:
    joined = path.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


@pytest.mark.parametrize(
    ("name", "base", "command"),
    [
        ("Dockerfile.worker", "nvidia/cuda:", ["sparegrid", "worker", "run"]),
        ("Dockerfile.coordinator", "python:3.11", ["sparegrid", "coordinator", "serve"]),
    ],
)
def test_images(name: str, base: str, command: list[str]) -> None:
    steps = instructions(DEPLOY / name)
    froms = [arg for op, arg in steps if op == "FROM"]
    assert froms[-1].startswith(base)
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    [entry] = [arg for op, arg in steps if op == "ENTRYPOINT"]
    assert json.loads(entry)[:3] == command
    for op, arg in steps:
        if op == "COPY" and not arg.startswith("--from"):
            *sources, _ = arg.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{name} copies {source}, which is missing"


SERVICE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "build": {
            "type": "object",
            "additionalProperties": False,
            "required": ["context"],
            "properties": {"context": {"type": "string"}, "dockerfile": {"type": "string"}},
        },
        "image": {"type": "string"},
        "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
        "ports": {"type": "array", "items": {"type": "string", "pattern": r"^\d+:\d+$"}},
        "volumes": {"type": "array", "items": {"type": "string"}},
        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
        "depends_on": {"type": "array", "items": {"type": "string"}},
        "pid": {"type": "string"},
        "stop_grace_period": {"type": "string", "pattern": r"^\d+(s|m)$"},
        "deploy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "resources": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "reservations": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "devices": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["capabilities"],
                                        "properties": {
                                            "driver": {"type": "string"},
                                            "count": {
                                                "anyOf": [{"type": "integer"}, {"const": "all"}]
                                            },
                                            "device_ids": {"type": "array"},
                                            "capabilities": {
                                                "type": "array",
                                                "items": {"type": "string"},
                                            },
                                        },
                                    },
                                }
                            },
                        }
                    },
                }
            },
        },
    },
}
COMPOSE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["services"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
        "services": {"type": "object", "additionalProperties": SERVICE_SCHEMA},
        "volumes": {"type": "object"},
    },
}


def test_compose_file_has_a_coordinator_and_a_gpu_worker() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    jsonschema.validate(compose, COMPOSE_SCHEMA)
    services = compose["services"]
    assert set(services) == {"coordinator", "worker"}
    for service in services.values():
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"compose mounts {source}, which is missing"
            else:
                assert source in compose["volumes"]
    worker = services["worker"]
    [gpu] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert worker["environment"]["SPAREGRID_COORDINATOR"] == "coordinator:50051"
    assert worker["depends_on"] == ["coordinator"]


def test_the_schema_catches_a_typo() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    compose["services"]["worker"]["enviroment"] = {}
    with pytest.raises(jsonschema.ValidationError, match="enviroment"):
        jsonschema.validate(compose, COMPOSE_SCHEMA)


def test_example_worker_toml_is_valid(tmp_path: Path) -> None:
    root = argparse.ArgumentParser(prog="sparegrid")
    register(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["worker", "run", "--config", str(DEPLOY / "worker.toml")])
    config = layered(args, {"SPAREGRID_WORKER_DATA_DIR": str(tmp_path)})
    assert (config.max_vram, config.max_temp, config.cache_size) == (0.8, 80.0, 50 << 30)
