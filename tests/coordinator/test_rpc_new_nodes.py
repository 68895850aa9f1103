"""Node keys never seen before, brought by workers without an owner account's key from one
address, over real gRPC: a node key costs nothing, so one address opening and closing
sessions under fresh keys, one after another, added a node row each time (100 a second at
its share of admission, millions a day, each kept a day). One address brings at most
`--new-anonymous-nodes-per-address` new keys at once (and as many more an hour); past
that a new key is refused before its row is written. A key the coordinator knows (a worker
that restarts) is never counted, nor is an owner's node. (Loopback is exempt in a running
coordinator; these tests count it.)"""

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from sparegrid.coordinator.services.admission import AdmissionConfig
from sparegrid.coordinator.settings import Settings
from sparegrid.wire import Signer, node_id_for
from sparegrid.wire.metadata import retry_after_seconds
from tests.coordinator.conftest import Served, code_of, served_with, store_kinds
from tests.coordinator.sessions import session

LIMIT = 3


@pytest.fixture(params=store_kinds())
async def counted(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    """A coordinator that counts loopback callers as it counts any other address."""
    admission = AdmissionConfig(exempt_loopback=False, new_anonymous_nodes=LIMIT)
    settings = Settings(data_dir=tmp_path, admission=admission)
    async with served_with(request.param, tmp_path, settings) as served:
        yield served


async def _one_after_another(served: Served, signers: list[Signer], owner_key: str = "") -> None:
    """Each signer's session through its Welcome, then closed before the next opens."""
    for signer in signers:
        call, _ = await session(served, signer, owner_key)
        call.cancel()


async def _refused(served: Served, signer: Signer) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as err:
        await session(served, signer)
    return err.value


def _nodes(served: Served) -> set[str]:
    return {node.id for node in served.app.store.list_nodes()}


async def test_fresh_keys_from_one_address_past_the_bound_are_refused_and_add_no_row(
    counted: Served,
) -> None:
    await _one_after_another(counted, [Signer.generate() for _ in range(LIMIT)])
    before = _nodes(counted)
    assert len(before) == LIMIT

    fresh = Signer.generate()
    error = await _refused(counted, fresh)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(error) == "TOO_MANY_NEW_NODES"
    details = error.details() or ""
    assert f"({LIMIT} at once, then {LIMIT} an hour)" in details
    assert "SPAREGRID_OWNER_KEY" in details and "--new-anonymous-nodes-per-address" in details
    # the next new key comes in 3600 / LIMIT seconds
    assert retry_after_seconds(error.trailing_metadata()) == pytest.approx(3600 / LIMIT, rel=0.01)
    assert counted.app.store.get_node(node_id_for(fresh.public_key)) is None
    assert _nodes(counted) == before
    assert node_id_for(fresh.public_key) not in counted.app.scheduler.sessions


async def test_a_known_key_reconnecting_is_not_counted(counted: Served) -> None:
    """A worker that restarts keeps its key (its --data-dir) and comes back at any time."""
    signers = [Signer.generate() for _ in range(LIMIT)]
    await _one_after_another(counted, signers)
    assert code_of(await _refused(counted, Signer.generate())) == "TOO_MANY_NEW_NODES"

    await _one_after_another(counted, signers * 3)  # each restarts, three times
    assert _nodes(counted) == {node_id_for(s.public_key) for s in signers}


async def test_owned_nodes_are_not_counted(counted: Served) -> None:
    """An owner's nodes, fresh keys or not, neither take from the address's new keys nor
    are refused once they are spent."""
    await _one_after_another(counted, [Signer.generate() for _ in range(LIMIT)], counted.alice_key)
    await _one_after_another(counted, [Signer.generate() for _ in range(LIMIT)])  # all still in
    assert code_of(await _refused(counted, Signer.generate())) == "TOO_MANY_NEW_NODES"

    owned = Signer.generate()
    await _one_after_another(counted, [owned], counted.alice_key)
    stored = counted.app.store.get_node(node_id_for(owned.public_key))
    assert stored is not None and stored.owner == "alice"
    assert len(_nodes(counted)) == 2 * LIMIT + 1
