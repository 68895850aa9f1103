"""The status socket is private to the volunteer's user, and making it leaves the process's
umask alone: six workers started together in one process once left it at 0o177, so every
directory the process (and each program it started) made afterwards was 0600 and unusable,
which is how headless chromium came to crash in the browser tests."""

import asyncio
import os
import stat
from pathlib import Path

from sparegrid.worker.node.status import StatusServer, read_status


async def test_sockets_started_together_are_private_and_leave_the_umask_alone(
    tmp_path: Path,
) -> None:
    before = os.umask(0o022)
    try:
        servers = [
            StatusServer(tmp_path / f"node{i}" / "status.sock", lambda i=i: {"node": i})
            for i in range(6)
        ]
        assert await asyncio.gather(*(s.start() for s in servers)) == [""] * 6
        try:
            assert os.umask(0o022) == 0o022  # what it was before the sockets were made
            made = tmp_path / "made-after"
            made.mkdir(mode=0o700)
            assert stat.S_IMODE(made.stat().st_mode) == 0o700
            for i, server in enumerate(servers):
                assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
                assert sorted(p.name for p in server.path.parent.iterdir()) == ["status.sock"]
                answer = await asyncio.to_thread(read_status, server.path)
                assert answer == {"node": i}
        finally:
            for server in servers:
                await server.close()
    finally:
        os.umask(before)


async def test_a_socket_path_it_cannot_bind_is_reported_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    server = StatusServer(folder / ("x" * 100), lambda: {})  # past sun_path once staged
    why = await server.start()
    assert why.startswith(("cannot listen on", "status socket path")), why
    assert list(folder.iterdir()) == []
