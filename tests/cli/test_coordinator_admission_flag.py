"""`coordinator serve --registration-rate`: how fast worker registrations are admitted, and
`--registration-share` how much of that one address may take; `--anonymous-sessions-per-address`:
the sessions without an owner key one address may hold; `--new-anonymous-nodes-per-address`:
the node keys never seen before, without an owner key, one address may bring; `--signup-rate`:
how many signup attempts one address may make a minute; `--client-call-rate` how many client
calls one account may make a second."""

import pytest

from sparegrid.cli import main as cli_main
from sparegrid.coordinator.services.admission import AdmissionConfig
from sparegrid.coordinator.services.calls import CallConfig
from sparegrid.coordinator.services.invites import SignupConfig


def settings(*flags: str):  # type: ignore[no-untyped-def]
    from sparegrid.coordinator.cli import _settings

    return _settings(cli_main.build_parser().parse_args(["coordinator", "serve", *flags]))


def test_default_and_chosen_rate() -> None:
    assert settings().admission == AdmissionConfig(rate=500.0, burst=500, hold=10.0)
    assert settings("--registration-rate", "50").admission == AdmissionConfig(rate=50.0, burst=50)
    assert settings("--registration-rate", "0").admission.rate == 0  # no limit


def test_a_negative_rate_is_refused_by_name() -> None:
    with pytest.raises(SystemExit, match="--registration-rate must be 0 or more, got -5"):
        settings("--registration-rate", "-5")


def test_the_share_one_address_may_take_default_chosen_and_refused() -> None:
    assert settings().admission.share == 0.2
    assert settings("--registration-share", "1").admission.share == 1.0  # no per-address limit
    for bad in ("0", "1.5"):
        with pytest.raises(SystemExit, match=f"--registration-share is a share .* got {bad}"):
            settings("--registration-share", bad)


def test_the_signup_rate_default_chosen_and_refused() -> None:
    assert settings().signups == SignupConfig(burst=5, per_minute=1.0)
    assert settings("--signup-rate", "30").signups.per_minute == 30.0
    with pytest.raises(SystemExit, match="--signup-rate must be positive, got 0"):
        settings("--signup-rate", "0")


def test_anonymous_sessions_per_address_default_chosen_and_refused() -> None:
    assert settings().admission.anonymous_sessions == 1000
    assert settings("--anonymous-sessions-per-address", "0").admission.anonymous_sessions == 0
    chosen = settings("--anonymous-sessions-per-address", "5000", "--registration-rate", "50")
    assert chosen.admission == AdmissionConfig(rate=50.0, burst=50, anonymous_sessions=5000)
    with pytest.raises(SystemExit, match=r"--anonymous-sessions-per-address is 0 \(no limit\)"):
        settings("--anonymous-sessions-per-address", "-1")


def test_the_client_call_rate_default_chosen_and_refused() -> None:
    """`--client-call-rate`: the client calls one account may make a second, after ten
    seconds' worth at once."""
    assert settings().calls == CallConfig(rate=50.0, burst=500)
    assert settings("--client-call-rate", "200").calls == CallConfig(rate=200.0, burst=2000)
    assert settings("--client-call-rate", "0").calls.rate == 0  # no limit
    with pytest.raises(SystemExit, match=r"--client-call-rate is 0 \(no limit\) or more, got -1"):
        settings("--client-call-rate", "-1")


def test_new_anonymous_nodes_per_address_default_chosen_and_refused() -> None:
    assert settings().admission.new_anonymous_nodes == 1000
    assert settings("--new-anonymous-nodes-per-address", "0").admission.new_anonymous_nodes == 0
    chosen = settings("--new-anonymous-nodes-per-address", "50", "--registration-rate", "50")
    assert chosen.admission == AdmissionConfig(rate=50.0, burst=50, new_anonymous_nodes=50)
    with pytest.raises(
        SystemExit, match=r"--new-anonymous-nodes-per-address is 0 \(no limit\) or more, got -1"
    ):
        settings("--new-anonymous-nodes-per-address", "-1")
