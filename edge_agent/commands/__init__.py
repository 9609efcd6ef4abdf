"""Fleet commands: operator-signed JWS that change a running (or stopped) agent.

```
MQTT cmd topic ─┐                                                 ┌─▶ ReplayStore (jti ─▶ result)
                ├─▶ CommandVerifier ─▶ HANDLERS[cmd] ─▶ AgentControl ┤
edge-agent apply┘   (verify.py:        (handlers.py:    (the agent,   └─▶ spool/outbox ─▶ cmd/result
                    signature, aud,     argument         or tools/       (signed by the device key)
                    time, replay)       schemas)         apply.py)
                 Executor (executor.py) glues the three and stores the result
```

A command is a JWS compact token, header ``{"alg": "EdDSA", "kid", "typ": "edge-agent-cmd+jwt"}``
signed by an operator key listed in ``fleet.operator_keys``, payload
``{"aud", "jti", "iat", "exp", "cmd", "args"}``. ``aud`` is the agent id, ``"site:<site>"`` or
``"*"`` (or a list of those). Its result is a document like any other the agent signs:
``{"type": "cmd_result", "agent_id", "site", "ts", "jti", "cmd", "signed_by", "ok",
"result" | "error"}``.

Topics (``mqtt.topic_prefix`` = P). An agent subscribes to all three; the topic only routes,
``aud`` decides::

    P/<site>/<agent_id>/cmd     one agent          (fleet send --site S --agent A)
    P/<site>/cmd                every agent of a site (fleet send --site S)
    P/cmd                       the whole fleet    (fleet send)
    P/<site>/<agent_id>/cmd/result   results, QoS 1, not retained

The site-wide and fleet-wide topics have fewer levels than any per-agent topic, so no agent or
site name can make them collide with one.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

CMD_TYP = "edge-agent-cmd+jwt"      # the JWS ``typ`` of a command (RFC 8725 section 3.11)
RESULT_KIND = "cmd_result"          # spool kind and document ``type`` of a result
LOCK_FILE = "agent.lock"            # under agent.state_dir, held by a running agent


def command_topic(prefix: str, site: str | None = None, agent_id: str | None = None) -> str:
    """Where an operator publishes: one agent, every agent of ``site``, or the fleet."""
    if agent_id and not site:
        raise ValueError("an agent's command topic needs its site")
    return "/".join(p for p in (prefix, site, agent_id, "cmd") if p)


def command_topics(prefix: str, site: str, agent_id: str) -> list[str]:
    """The three topics an agent subscribes to (QoS 1)."""
    return [command_topic(prefix, site, agent_id), command_topic(prefix, site),
            command_topic(prefix)]


def result_filter(prefix: str, site: str | None = None, agent_id: str | None = None) -> str:
    """The subscription that sees the results of a command sent with the same arguments."""
    return f"{prefix}/{site or '+'}/{agent_id or '+'}/cmd/result"


def status_filter(prefix: str, site: str | None = None) -> str:
    return f"{prefix}/{site or '+'}/+/status"


class StateLocked(Exception):
    """Another process (a running agent) holds the state directory."""


def lock_state_dir(state_dir: str | Path) -> int:
    """An exclusive ``flock`` on ``<state_dir>/agent.lock``, held until the returned fd is
    closed (or the process ends: the kernel drops it, so a crash never leaves it stale)."""
    path = Path(state_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StateLocked(f"{path} is held by another process (is the agent running?)"
                              ) from None
        raise
    return fd
