"""A command token in, a signed result in the outbox: verify, run once, record, store.

```
token ─▶ verifier.check ─┬─ Command ─▶ HANDLERS[cmd].run(control, args) ─┐
                         ├─ refused, answered (bad_args, unknown_command) ┴▶ sign ─▶ record ─▶ spool
                         ├─ replayed ─▶ the stored result, to the outbox again (rate-limited)
                         └─ refused, unanswered ─▶ counted and logged only
```

Exactly once. The result is signed with the device key as it was *before* the handler ran
(so ``rotate_device_key`` announces the new key under the old one), then recorded with its
``jti`` in the :class:`ReplayStore` (one fsynced transaction): from then on a second delivery
gets this result back and runs nothing. Only after :meth:`Executor.handle` returns may the
MQTT message be acknowledged. The result then goes to the spool (the outbox) in one
transaction with the spool meta ``cmd_results_enqueued`` (the record's ``n``); a crash between
the two leaves a record above that mark, which :meth:`Executor.flush` (run before every
command and at start-up) stores. So a recorded result reaches the outbox exactly once, and
the spool code does not need to know about commands.

A handler's side effects (a config file, a model) and the record cannot share one
transaction: a crash after the side effect and before the record runs the command again on
redelivery. Every handler leaves the same state when run twice, so that costs nothing. A
change that must not happen before its result is durable (the device key: the result is the
only announcement of the new key) is a handler's second step (``Handler.after``), run after
the record and, after a crash, by :meth:`Executor.flush`.

Not thread-safe: run every command on one thread (the one that owns the pipeline), in order.
"""
from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from edge_agent.commands import RESULT_KIND
from edge_agent.commands.handlers import HANDLERS, AgentControl, CommandError, Handler
from edge_agent.commands.verify import Command, CommandVerifier, Recorded, Refusal
from edge_agent.summary.sign import DeviceKey, claims, dumps
from edge_agent.transport.spool import Spool

log = logging.getLogger(__name__)

ENQUEUED_META = "cmd_results_enqueued"      # spool meta: highest record n in the outbox
# A duplicate delivery puts the stored result in the outbox again, but not more often than
# this per command: a copy is still in the outbox, or just left, and a flood of replays must
# not fill the spool.
REPUBLISH_AFTER_S = 60.0


@dataclass(frozen=True)
class Outcome:
    """What :meth:`Executor.handle` did with a token.

    ``status``: ``executed`` (ok), ``failed`` (ran, or tried to, and said why), ``refused``,
    ``duplicate`` (a replay of a decided command: ``token`` is the first result). ``token`` is
    the signed result document, None for a refusal nobody is answered for.
    """

    status: str
    refusal: Refusal | None = None
    command: Command | None = None
    token: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "executed"

    @property
    def result(self) -> dict[str, Any] | None:
        return claims(self.token) if self.token else None


class Executor:
    """Runs verified commands against ``control`` and stores their signed results in ``spool``.

    ``key`` gives the device key at the moment it is called (it changes on rotation);
    ``on_stored`` is the transport's wake-up, called after a result reached the outbox.
    """

    def __init__(self, verifier: CommandVerifier, control: AgentControl, spool: Spool,
                 key: Callable[[], DeviceKey], agent_id: str, site: str,
                 handlers: dict[str, Handler] | None = None,
                 on_stored: Callable[[], None] | None = None,
                 republish_after_s: float = REPUBLISH_AFTER_S) -> None:
        self.verifier = verifier
        self.replay = verifier.replay
        self.control = control
        self.spool = spool
        self.key = key
        self.agent_id = agent_id
        self.site = site
        self.handlers = HANDLERS if handlers is None else handlers
        self.on_stored = on_stored
        self.republish_after_s = republish_after_s
        self.counts: Counter[str] = Counter()

    def handle(self, token: str | bytes, now: float) -> Outcome:
        self.flush()
        key = self.key()
        verdict = self.verifier.check(token, now)
        if isinstance(verdict, Refusal):
            outcome = self._refused(verdict, key, now)
        else:
            outcome = self._run(verdict, key, now)
        self.counts[outcome.status] += 1
        return outcome

    def counters(self) -> dict[str, int]:
        """Refusals by reason (see ``verify.REFUSALS``) and outcomes, since start."""
        return {**self.verifier.counters(),
                **{s: self.counts[s] for s in ("executed", "failed", "refused", "duplicate")}}

    def flush(self) -> int:
        """Finish what a crash interrupted: store results recorded but not in the outbox yet,
        and run second steps not run yet. Returns how many results were stored."""
        done = int(self.spool.meta(ENQUEUED_META) or 0)
        pending = self.replay.after(done)
        for n, token in pending:
            self._enqueue(n, token)
        for jti, name in self.replay.pending():
            self._second_step(jti, name)
        return len(pending)

    def _run(self, cmd: Command, key: DeviceKey, now: float) -> Outcome:
        log.info("command %s (jti %s, operator key %s)", cmd.cmd, cmd.jti, cmd.kid)
        handler = self.handlers[cmd.cmd]
        try:
            result = handler.run(self.control, dict(cmd.args))
            body: dict[str, Any] = {"ok": True, "result": result}
        except CommandError as exc:
            log.warning("command %s (jti %s) failed: %s", cmd.cmd, cmd.jti, exc)
            body = {"ok": False, "error": exc.as_dict()}
        except Exception as exc:
            log.exception("command %s (jti %s) failed", cmd.cmd, cmd.jti)
            body = {"ok": False, "error": {"code": "internal_error",
                                           "reason": f"{type(exc).__name__}: {exc}"}}
        second = body["ok"] and handler.after is not None
        token = self._store(cmd, body, key, now, second)
        if second:
            self._second_step(cmd.jti, cmd.cmd)
        return Outcome("executed" if body["ok"] else "failed", command=cmd, token=token)

    def _refused(self, refusal: Refusal, key: DeviceKey, now: float) -> Outcome:
        cmd = refusal.command
        # Not at WARNING: a command for another agent on a shared topic is routine.
        level = logging.INFO if refusal.reason == "wrong_audience" else logging.WARNING
        log.log(level, "command refused: %s: %s%s", refusal.reason, refusal.detail,
                f" (cmd {cmd.cmd[:64]!r}, jti {cmd.jti}, operator key {cmd.kid})" if cmd else "")
        if refusal.previous is not None:
            self._republish(refusal.previous, now)
            return Outcome("duplicate", refusal, cmd, refusal.previous.token)
        if not refusal.answered:
            return Outcome("refused", refusal, cmd)
        assert cmd is not None
        body = {"ok": False, "error": {"code": refusal.reason, "reason": refusal.detail}}
        return Outcome("refused", refusal, cmd, self._store(cmd, body, key, now))

    def _second_step(self, jti: str, name: str) -> None:
        after = self.handlers[name].after if name in self.handlers else None
        try:
            if after is not None:
                after(self.control)
        except Exception:
            log.exception("command %s (jti %s): its second step failed; retried with the "
                          "next command", name, jti)
            return
        self.replay.done(jti)

    def _store(self, cmd: Command, body: dict[str, Any], key: DeviceKey, now: float,
               pending: bool = False) -> str:
        # Whatever a control returned (a Path, a tuple) becomes plain JSON before signing.
        body = json.loads(json.dumps(body, default=str))
        doc = {"type": RESULT_KIND, "agent_id": self.agent_id, "site": self.site, "ts": now,
               "jti": cmd.jti, "cmd": cmd.cmd, "signed_by": cmd.kid, **body}
        token = key.sign(dumps(doc))
        n = self.replay.record(cmd.jti, cmd.iat, cmd.exp, cmd.cmd, body["ok"], token, now,
                               pending)
        try:
            self._enqueue(n, token)
        except sqlite3.Error as exc:    # recorded: flush() stores it on the next command or start
            log.error("command result %s not in the outbox yet: %s", cmd.jti, exc)
        return token

    def _enqueue(self, n: int, token: str) -> None:
        self.spool.append(RESULT_KIND, float(claims(token).get("ts", 0.0)), token,
                          meta={ENQUEUED_META: n})
        if self.on_stored is not None:
            self.on_stored()

    def _republish(self, previous: Recorded, now: float) -> None:
        if abs(now - previous.stored_at) < self.republish_after_s:   # abs: the clock may step back
            return
        self.spool.append(RESULT_KIND, now, previous.token)
        self.replay.touch(previous.jti, now)
        if self.on_stored is not None:
            self.on_stored()
