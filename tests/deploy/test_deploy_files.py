"""The files under deploy/ parse and say what the README promises: systemd units (known
keys, restart on failure, an unprivileged user, low priority), the container images, the
compose file (against a schema of the compose keys it uses) and the example worker.toml."""

import argparse
import inspect
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sparegrid.coordinator.domain import Event
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
        *("LoadCredential", "RestartPreventExitStatus"),
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
        "ports": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^(127\.0\.0\.1:)?\d+:\d+$"},
        },
        "command": {"type": "array", "items": {"type": "string"}},
        "volumes": {"type": "array", "items": {"type": "string"}},
        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
        "depends_on": {"type": "array", "items": {"type": "string"}},
        "pid": {"type": "string"},
        "networks": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"aliases": {"type": "array", "items": {"type": "string"}}},
            },
        },
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


def test_compose_file_has_the_whole_stack() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    jsonschema.validate(compose, COMPOSE_SCHEMA)
    services = compose["services"]
    assert set(services) == {"coordinator", "worker", "postgres", "prometheus", "grafana"}
    for service in services.values():
        build = service.get("build")
        if build is not None:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
        else:
            assert ":" in service["image"] and not service["image"].endswith(":latest")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"compose mounts {source}, which is missing"
            else:
                assert source in compose["volumes"]
        for depended in service.get("depends_on", []):
            assert depended in services
    worker = services["worker"]
    [gpu] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert worker["environment"]["SPAREGRID_COORDINATOR"] == "coordinator:50051"
    assert worker["depends_on"] == ["coordinator"]


def test_the_ha_compose_file_runs_two_coordinators_over_one_database_and_a_bucket() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.ha.yaml").read_text())
    jsonschema.validate(compose, COMPOSE_SCHEMA)
    services = compose["services"]
    assert set(services) >= {"coordinator-a", "coordinator-b", "postgres", "minio", "bucket"}
    a, b = services["coordinator-a"], services["coordinator-b"]
    assert a["environment"] == b["environment"]  # one database, one bucket
    assert a["environment"]["SPAREGRID_COORDINATOR_BLOBS"].startswith("s3://")
    assert a["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert a["volumes"] == b["volumes"] == ["coordinator-data:/data"]  # the keys, shared
    assert {p.split(":")[-1] for p in a["ports"] + b["ports"]} == {"50051"}
    assert len({p for p in a["ports"] + b["ports"]}) == 2
    for service in (a, b):
        assert service["networks"]["default"]["aliases"] == ["coordinator"]
    assert services["worker"]["environment"]["SPAREGRID_COORDINATOR"] == "coordinator:50051"
    for name, service in services.items():
        for depended in service.get("depends_on", []):
            assert depended in services, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (
                (DEPLOY / source).exists()
                if source.startswith(".")
                else source in compose["volumes"]
            )
        built = {s["image"] for s in services.values() if "build" in s}
        if "build" not in service and service["image"] not in built:
            assert ":" in service["image"] and not service["image"].endswith(":latest")
    assert "s3" in (DEPLOY / "Dockerfile.coordinator").read_text()  # boto3 in the image


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


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # type: ignore[no-any-return]


def _coordinator_args(compose: dict[str, Any]) -> argparse.Namespace:
    """The coordinator's flags as `coordinator serve` parses them: the image's entry point
    and the compose command together."""
    from sparegrid.cli.main import build_parser

    steps = instructions(DEPLOY / "Dockerfile.coordinator")
    [entry] = [json.loads(arg) for op, arg in steps if op == "ENTRYPOINT"]
    return build_parser().parse_args(entry[1:] + compose["services"]["coordinator"]["command"])


def _hosts_and_ports(compose: dict[str, Any], service: str) -> set[int]:
    return {int(p.rsplit(":", 1)[1]) for p in compose["services"][service].get("ports", [])}


def test_prometheus_scrapes_the_ports_the_flags_open() -> None:
    compose = _compose()
    args = _coordinator_args(compose)
    assert args.metrics_addr == "0.0.0.0" and args.web_addr == "0.0.0.0"  # reachable in-network
    worker_env = compose["services"]["worker"]["environment"]
    worker_port = int(worker_env["SPAREGRID_WORKER_METRICS_PORT"])
    assert worker_env["SPAREGRID_WORKER_METRICS_ADDR"] == "0.0.0.0"
    assert "worker" in worker_env["SPAREGRID_WORKER_METRICS_HOSTS"].split(",")  # name scraped
    prometheus = compose["services"]["prometheus"]
    [config_mount] = [v for v in prometheus["volumes"] if v.startswith("./prometheus.yml:")]
    config_path = config_mount.split(":")[1]
    assert f"--config.file={config_path}" in prometheus["command"]
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {
        "sparegrid-coordinator": [f"coordinator:{args.metrics_port}"],
        "sparegrid-worker": [f"worker:{worker_port}"],
    }
    assert "coordinator" in args.metrics_hosts  # /metrics answers to the name scraped
    # the dashboard is published on this machine only; metrics are not published at all
    assert args.web_port in _hosts_and_ports(compose, "coordinator")
    assert args.metrics_port not in _hosts_and_ports(compose, "coordinator")
    assert all(p.startswith("127.0.0.1:") for p in prometheus["ports"])
    assert "SPAREGRID_DATABASE" in compose["services"]["coordinator"]["environment"]
    assert "--database" not in compose["services"]["coordinator"]["command"]  # not in `ps`


def test_prometheus_loads_the_alert_rules_and_they_watch_real_metrics(tmp_path: Path) -> None:
    prometheus = _compose()["services"]["prometheus"]
    mounts = dict(v.split(":")[:2] for v in prometheus["volumes"] if v.startswith("./"))
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["rule_files"] == [mounts["./alerts.yml"]]
    rules = [
        r for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"] for r in g["rules"]
    ]
    watched = {name for r in rules for name in re.findall(r"\bsparegrid_[a-z_]+", r["expr"])}
    exported = _exported_metrics(tmp_path)
    assert watched and not watched - exported, (
        f"alerts on metrics nothing exports: {watched - exported}"
    )
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    for rule in rules:
        assert rule["annotations"]["summary"] and rule["annotations"]["action"], rule["alert"]
        assert set(re.findall(r'job="([^"]+)"', rule["expr"])) <= jobs, rule["alert"]


def test_grafana_reads_prometheus_and_the_dashboard_queries_real_metrics(
    tmp_path: Path,
) -> None:
    compose = _compose()
    grafana = compose["services"]["grafana"]
    mounts = dict(
        v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith(".")
    )
    provisioning = DEPLOY / mounts["./grafana/provisioning"].replace(
        "/etc/grafana/provisioning", "grafana/provisioning"
    )
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    port = compose["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["url"] == f"http://prometheus:{port}" and source["type"] == "prometheus"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "sparegrid.yaml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == mounts["./grafana/dashboards"]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "sparegrid.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bsparegrid_[a-z_]+", target["expr"])
    }
    assert all(
        t["datasource"]["uid"] == source["uid"] for p in dashboard["panels"] for t in p["targets"]
    )
    exported = _exported_metrics(tmp_path)
    missing = {q for q in queried if q not in exported}
    assert not missing, f"the Grafana dashboard queries metrics nothing exports: {missing}"
    assert len(dashboard["panels"]) >= 15


def _exported_metrics(tmp_path: Path) -> set[str]:
    """Every series name the coordinator's and the worker's registries expose."""
    from prometheus_client import generate_latest

    from sparegrid.coordinator.app import App
    from sparegrid.coordinator.settings import Settings
    from sparegrid.coordinator.store.memory import MemoryStore
    from sparegrid.worker import metrics as worker_metrics

    app = App(MemoryStore(), Settings(data_dir=tmp_path))
    app.metrics.results.labels("echo", "accepted").inc()  # labelled series show once used
    for kind in ("dispute", "ledger"):
        app.metrics.event(
            Event("e", 0.0, kind, "", data={"state": "open", "flow": "paid", "amount": 1})
        )
    app.metrics.event(Event("e", 0.0, "task.failed", "", data={"final": True}))
    names = _names(generate_latest(app.metrics.registry).decode())
    for base in re.findall(r'"(sparegrid_worker_[a-z_]+)"', inspect.getsource(worker_metrics)):
        names |= {base, f"{base}_total", f"{base}_bucket", f"{base}_count", f"{base}_sum"}
    return names


def _names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def _header_commands(path: Path) -> list[str]:
    """The install steps in a unit's header comment: `#   command   # note` lines."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("#   ")]
    return [line[4:].split("  #", 1)[0].strip() for line in lines]


def test_worker_unit_install_steps_match_the_unit_and_the_readme(tmp_path: Path) -> None:
    """pipx puts `sparegrid` where ExecStart runs it; the owner key goes, 0600, where
    LoadCredential takes it from, and the worker reads its copy through the setting the
    unit names; the README gives the same steps."""
    path = DEPLOY / "sparegrid-worker.service"
    unit, steps = parse_unit(path), _header_commands(path)
    command = shlex.split(values(unit, "Service", "ExecStart")[0])
    program = Path(command[0])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert program.name in scripts  # the console script the wheel installs
    [pipx] = [s for s in steps if " pipx install " in s]
    assert f"PIPX_BIN_DIR={program.parent} " in pipx and "'sparegrid[worker]'" in pipx
    [user] = values(unit, "Service", "User")
    assert any(s.startswith("useradd ") and s.endswith(f" {user}") for s in steps)
    [credential] = values(unit, "Service", "LoadCredential")
    name, key_file = credential.split(":", 1)
    assert f"install -D -m 0600 owner.key {key_file}" in steps
    env = dict(v.split("=", 1) for v in values(unit, "Service", "Environment"))
    assert env["SPAREGRID_WORKER_OWNER_KEY_FILE"] == f"%d/{name}"  # %d: the credentials dir
    assert f"systemctl enable --now {path.stem}" in steps
    assert values(unit, "Service", "RestartPreventExitStatus") == ["2"]  # a bad setting
    readme = (ROOT / "README.md").read_text()
    for step in steps:
        assert step in readme, f"the README does not give the unit's step {step!r}"
    # as systemd runs it: the credentials dir holds the key, the settings find it
    (tmp_path / name).write_text("sg_owner_key\n")
    root = argparse.ArgumentParser(prog="sparegrid")
    register(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(command[1:])
    service_env = {k: v.replace("%d", str(tmp_path)) for k, v in env.items()}
    service_env["SPAREGRID_WORKER_DATA_DIR"] = str(tmp_path / "data")
    service_env["SPAREGRID_WORKER_CONFIG"] = str(DEPLOY / "worker.toml")
    assert layered(args, service_env).owner_key == "sg_owner_key"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_itself_accepts_the_units(tmp_path: Path) -> None:
    for name in ("sparegrid-worker.service", "sparegrid-coordinator.service"):
        text = (DEPLOY / name).read_text()
        # the program is not installed here: systemd checks that it exists
        text = re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", text, flags=re.MULTILINE)
        (tmp_path / name).write_text(text)
        done = subprocess.run(
            ["systemd-analyze", "verify", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and "Unknown" not in done.stderr, done.stderr
