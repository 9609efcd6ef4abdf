"""The running agent's command queue (service.Agent): the MQTT thread hands commands over, the
pipeline thread runs them. A full queue holds the MQTT thread back; nothing is dropped.

The agent here is the real one on a temporary state directory (spool, replay store, device
key, executor, RunningControl), without a broker: the test plays the MQTT thread, calling
``Agent._command`` as the transport does, with an ``ack`` that records the call.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.capture.source import CaptureStats
from edge_agent.config import validate
from edge_agent.service import MAX_QUEUED_COMMANDS, Agent
from edge_agent.summary.sign import claims
from tests.commands import AGENT, SITE, Operator


@pytest.fixture
def operator() -> Operator:
    return Operator()


@pytest.fixture
def agent(tmp_path: Path, operator: Operator) -> Iterator[Agent]:
    pub = operator.write(tmp_path / "operator.key")
    cfg = validate({"agent": {"id": AGENT, "site": SITE, "state_dir": str(tmp_path / "state")},
                    "detect": {"model": "off"}, "fleet": {"operator_keys": [str(pub)]}})
    a = Agent(cfg, CaptureStats)
    yield a
    if a.lock_fd is not None:
        a.close()


def delivery(acks: list[str], jti: str) -> Callable[[], None]:
    return lambda: acks.append(jti)


def deliver(agent: Agent, token: str, acks: list[str], live: Callable[[], bool] = lambda: True,
            ) -> threading.Thread:
    """``Agent._command`` from a thread of its own, as paho's network thread calls it."""
    thread = threading.Thread(target=agent._command, daemon=True,
                              args=(token.encode(), delivery(acks, claims(token)["jti"]), live))
    thread.start()
    return thread


def test_a_full_queue_holds_the_mqtt_thread_and_every_command_runs_once(
        agent: Agent, operator: Operator) -> None:
    tokens = [operator.sign("ping", now=time.time()) for _ in range(MAX_QUEUED_COMMANDS + 6)]
    acks: list[str] = []
    for token in tokens[:MAX_QUEUED_COMMANDS]:
        agent._command(token.encode(), delivery(acks, claims(token)["jti"]), lambda: True)
    waiting = deliver(agent, tokens[MAX_QUEUED_COMMANDS], acks)
    time.sleep(0.5)
    assert waiting.is_alive() and len(agent.commands) == MAX_QUEUED_COMMANDS   # held, not dropped

    agent.run_commands()            # at most MAX_QUEUED_COMMANDS; each taken makes room
    waiting.join(2)
    assert not waiting.is_alive()
    assert acks == [claims(t)["jti"] for t in tokens[:MAX_QUEUED_COMMANDS]]
    for token in tokens[MAX_QUEUED_COMMANDS + 1:]:
        deliver(agent, token, acks).join(2)
    agent.run_commands()
    assert acks == [claims(t)["jti"] for t in tokens]                     # each once, in order
    assert not agent.commands
    counters = agent.executor.counters()
    assert counters["executed"] == len(tokens) and counters["duplicate"] == 0
    results = [claims(doc) for _, doc in agent.spool.documents(kind="cmd_result")]
    assert [r["jti"] for r in results] == [claims(t)["jti"] for t in tokens]
    assert all(r["ok"] for r in results)


def test_the_wait_ends_when_the_connection_goes_or_the_agent_stops(
        agent: Agent, operator: Operator) -> None:
    acks: list[str] = []
    for _ in range(MAX_QUEUED_COMMANDS):
        agent._command(operator.sign("ping", now=time.time()).encode(), lambda: None, lambda: True)
    connected = threading.Event()
    connected.set()
    on_old_link = deliver(agent, operator.sign("ping", now=time.time()), acks, connected.is_set)
    until_close = deliver(agent, operator.sign("ping", now=time.time()), acks)
    time.sleep(0.3)
    assert on_old_link.is_alive() and until_close.is_alive()

    # The connection it came on is going (renew_will, a lost link): left unacknowledged for
    # the broker to deliver again on the next connection.
    connected.clear()
    on_old_link.join(2)
    assert not on_old_link.is_alive() and until_close.is_alive()

    agent.close()
    until_close.join(2)
    assert not until_close.is_alive()
    assert len(agent.commands) == MAX_QUEUED_COMMANDS and acks == []
