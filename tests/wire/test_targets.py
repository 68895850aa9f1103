"""Coordinator address lists become gRPC targets, and a list gRPC cannot take is refused
by the worker's settings and the SDK in words that say what works."""

import re
from pathlib import Path

import pytest

from sparegrid.sdk import Client, SparegridError
from sparegrid.wire.targets import TargetError, grpc_target
from sparegrid.worker.config import ConfigError, WorkerConfig


def test_one_address_is_its_own_target() -> None:
    assert grpc_target("grid.example.org:50051") == "grid.example.org:50051"
    assert grpc_target("dns:///grid.example.org:50051") == "dns:///grid.example.org:50051"


def test_a_list_of_ip_addresses_is_one_target_of_that_family() -> None:
    assert grpc_target("10.0.0.1:50051, 10.0.0.2:50051") == "ipv4:10.0.0.1:50051,10.0.0.2:50051"
    assert grpc_target("[::1]:1,[fd00::2]:2") == "ipv6:[::1]:1,[fd00::2]:2"


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("a.example.org:1,b.example.org:1", "is not an IP address"),
        ("10.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("10.0.0.1:1,10.0.0.2", "is not IP:PORT"),
        ("10.0.0.1:1,10.0.0.2:0", "is not IP:PORT"),
        ("10.0.0.1:1,", "is not IP:PORT"),
        ("10.0.0.1:1,::1:2", "write IPv6 hosts as [::1]:50051"),
    ],
)
def test_a_list_grpc_cannot_take_says_why(address: str, says: str) -> None:
    with pytest.raises(TargetError, match=re.escape(says)):
        grpc_target(address)


def test_the_worker_takes_a_list_and_refuses_a_bad_one(tmp_path: Path) -> None:
    WorkerConfig(coordinator="10.0.0.1:50051,10.0.0.2:50051", data_dir=tmp_path).validate()
    with pytest.raises(ConfigError, match="is not an IP address"):
        WorkerConfig(coordinator="a.example.org:1,b.example.org:1", data_dir=tmp_path).validate()


def test_the_sdk_refuses_a_bad_list_before_any_call() -> None:
    with pytest.raises(SparegridError, match="is not an IP address") as caught:
        Client("a.example.org:1,b.example.org:1", api_key="sg_x").info()
    assert caught.value.code == "BAD_ADDRESS"
