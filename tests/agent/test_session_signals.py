"""Session processes start with default signal dispositions and an empty mask whatever the node inherited (a
daemon under nohup ignores SIGHUP), so the SIGHUP a lock sends ends them."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.harness import Cluster

pytestmark = pytest.mark.integration

#: what a daemon started by nohup, or in the background of a script, inherits
INHERITED_IGNORED = (signal.SIGHUP, signal.SIGQUIT, signal.SIGINT)
INHERITED_BLOCKED = {signal.SIGUSR1, signal.SIGTERM}


@pytest.fixture
def node_under_nohup() -> Iterator[None]:
    """This process (where the test runs its node) ignores and blocks signals, as such a daemon would."""
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in INHERITED_IGNORED}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, INHERITED_BLOCKED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for number, handler in previous.items():
            signal.signal(number, handler)


#: The signals a process can set a disposition for: the C library reserves two real-time signals (32, 33) for
#: itself and refuses them, for sshd as for us, so whatever the test runner left on those is not the node's doing.
SETTABLE = sum(1 << (int(number) - 1) for number in signal.valid_signals())


def _signal_masks(pid: int) -> dict[str, int]:
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].strip(), 16) & SETTABLE for name in ("SigIgn", "SigBlk")}


@pytest.mark.parametrize("pty", [False, True], ids=["exec", "pty"])
@pytest.mark.usefixtures("node_under_nohup")
def test_a_lock_hangs_up_a_session_of_a_node_that_ignores_sighup(cluster: Cluster, tmp_path: Path, pty: bool) -> None:
    user = f"nohup-{'pty' if pty else 'exec'}"

    async def scenario() -> dict[str, int]:
        async with (
            cluster.node(tmp_path / "node") as node,
            cluster.connect(node.port, cluster.client_key(user)) as conn,
        ):
            assert node.state is not None
            options = {"term_type": "xterm"} if pty else {}
            process = await conn.create_process("echo $$; exec sleep 60", **options)
            pid = int((await process.stdout.readline()).strip())
            masks = _signal_masks(pid)
            cluster.lock(f"lock-{user}", "user", user, "laptop reported stolen")
            await node.state.refresh()
            result = await asyncio.wait_for(process.wait(), 30)
            assert result.exit_status == 255
            return masks

    masks = asyncio.run(scenario())
    assert masks == {"SigIgn": 0, "SigBlk": 0}
    ended = [e for e in cluster.events("session.end") if e["user"] == user]
    assert len(ended) == 1
    assert ended[0]["exit_status"] == -signal.SIGHUP  # the hang-up ended it, not the SIGKILL after the grace period
