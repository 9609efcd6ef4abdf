"""``edge-agent apply FILE``: run a signed fleet command brought on removable media.

For air-gapped gateways, and for an agent that is stopped. The token is checked by the same
verifier as over MQTT (operator keys from ``fleet.operator_keys``, audience, time, replay:
the replay store is the one in the spool, shared with the agent), run by the same executor
against :class:`OfflineControl`, and its signed result is stored in the spool, so the next
``edge-agent export`` carries it back. Exit 0 when the command ran and succeeded, 1 when it
was refused or failed.

The state directory is locked (``<state_dir>/agent.lock``) for the duration, and a running
agent holds that lock: a command for a running agent goes over MQTT.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from edge_agent.cli import _config
from edge_agent.commands import StateLocked, lock_state_dir
from edge_agent.commands.executor import Executor, Outcome
from edge_agent.commands.handlers import (
    CommandError,
    activate_model,
    commit_device_key,
    export_to_state,
    model_info,
    prepare_device_key,
    probe_model,
    rollback_active_model,
)
from edge_agent.commands.verify import (
    MAX_TOKEN_BYTES,
    CommandVerifier,
    ReplayStore,
    load_operator_keys,
)
from edge_agent.config import Config
from edge_agent.model.scorer import ModelError
from edge_agent.model.store import ModelStore
from edge_agent.summary.sign import KEY_FILE, DeviceKey, DeviceKeyError
from edge_agent.tools import ToolError
from edge_agent.tools.keys import add_state_options
from edge_agent.transport.spool import Spool

NOT_RUNNING = "agent not running: applies at next start"


class OfflineControl:
    """The :class:`~edge_agent.commands.handlers.AgentControl` of an agent that is not running:
    what lives in the state directory and the configuration file changes now; what only a
    running agent has (capture, log level, live learning) is refused, naming what to do."""

    def __init__(self, cfg: Config, config_path: Path | None, spool: Spool, key: DeviceKey) -> None:
        self.cfg = cfg
        self._config_path = config_path
        self.spool = spool
        self.key = key
        self._state = Path(cfg["agent"]["state_dir"])

    def state_dir(self) -> Path:
        return self._state

    def status(self) -> dict[str, Any]:
        return {"running": False, "agent_id": self.cfg.agent_id, "site": self.cfg["agent"]["site"],
                "state_dir": str(self._state), "kid": self.key.kid, "model": self.current_model(),
                "spool": {"documents": self.spool.count(),
                          "unpublished": self.spool.count(unpublished=True),
                          "bytes": self.spool.size_bytes(), "dropped": self.spool.dropped_total()}}

    def get_config(self) -> dict[str, Any]:
        return self.cfg.data

    def config_path(self) -> Path | None:
        return self._config_path

    def apply_config(self, cfg: Config) -> dict[str, Any]:
        self.cfg = cfg
        return {"note": NOT_RUNNING}

    def learn(self, period_s: float | None) -> dict[str, Any]:
        raise CommandError("not_running", "the agent is not running: set learn.period_s with "
                                          "set_config to learn when it starts")

    def current_model(self) -> dict[str, Any] | None:
        """The model the agent will load at start (see ``service.load_scorer``)."""
        choice = self.cfg["detect"]["model"]
        if choice == "off":
            return None
        try:
            return model_info(Path(choice) if choice else ModelStore(self._state).current())
        except ModelError:
            return None

    def swap_model(self, manifest_path: Path) -> dict[str, Any]:
        info, _ = activate_model(self._state, manifest_path, probe_model)
        return {**info, "note": NOT_RUNNING}

    def rollback_model(self) -> dict[str, Any]:
        info, _ = rollback_active_model(self._state, probe_model)
        return {**info, "note": NOT_RUNNING}

    def rotate_key(self) -> dict[str, Any]:
        return prepare_device_key(self._state, self.key)

    def commit_key(self) -> None:
        self.key = commit_device_key(self._state) or self.key

    def export(self, since: int | None) -> dict[str, Any]:
        return export_to_state(self.spool, self.key, self._state, since, self.cfg.agent_id,
                               self.cfg["agent"]["site"], time.time())

    def restart_capture(self) -> dict[str, Any]:
        return {"restarted": False, "note": "agent not running: capture starts with the agent"}

    def set_log_level(self, level: str) -> dict[str, Any]:
        raise CommandError("not_running", "the agent is not running: change agent.log_level "
                                          "with set_config instead")


def read_token(name: str) -> str:
    try:
        if name == "-":
            data = sys.stdin.buffer.read(MAX_TOKEN_BYTES + 1)
        else:
            with open(name, "rb") as f:
                data = f.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise ToolError(f"cannot read {name}: {exc}") from None
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ToolError(f"{name} does not hold a command token (not ASCII)") from None


def run_command(cfg: Config, config_path: Path | None, token: str, now: float) -> Outcome:
    """Verify and run ``token`` on the stopped agent of ``cfg``; the result goes to its spool."""
    fleet = cfg["fleet"]
    if not fleet["enabled"]:
        raise ToolError("fleet.enabled is false: this agent takes no fleet commands")
    keys = load_operator_keys(fleet["operator_keys"])
    if not keys:
        raise ToolError("no operator key is trusted: list the operators' public keys in "
                        "fleet.operator_keys")
    state = Path(cfg["agent"]["state_dir"])
    try:
        lock = lock_state_dir(state)
    except StateLocked as exc:
        raise ToolError(f"{exc}: send the command over MQTT, or stop the agent first") from None
    try:
        key_file = state / KEY_FILE
        try:
            # As `edge-agent run` does: the first use of a state directory makes the key.
            key = DeviceKey.load(key_file) if key_file.exists() else DeviceKey.create(key_file)
        except DeviceKeyError as exc:
            raise ToolError(str(exc)) from None
        with closing(Spool(state / "spool.sqlite", cfg["spool"]["max_bytes"],
                           cfg["spool"]["fsync"])) as spool, \
                closing(ReplayStore(spool.path, fleet["replay_entries"])) as replay:
            control = OfflineControl(cfg, config_path, spool, key)
            site = cfg["agent"]["site"]
            verifier = CommandVerifier(keys, cfg.agent_id, site, fleet["clock_skew_s"], replay,
                                       fleet["max_ttl_s"])
            executor = Executor(verifier, control, spool, lambda: control.key, cfg.agent_id, site)
            return executor.handle(token, now)
    finally:
        os.close(lock)


def cmd_apply(args: argparse.Namespace) -> int:
    cfg = _config(args)
    outcome = run_command(cfg, Path(args.config) if args.config else None,
                          read_token(args.file), time.time())
    result = outcome.result
    if result is not None:
        print(json.dumps(result, indent=2))
    cmd = outcome.command
    what = f"{cmd.cmd} (jti {cmd.jti})" if cmd else "the command"
    refusal = outcome.refusal
    if outcome.status == "duplicate":
        note = f"{what} was applied before; its stored result is above"
    elif refusal is not None:
        note = f"refused {what}: {refusal.reason}: {refusal.detail}"
    elif outcome.ok:
        note = f"applied {what}"
    else:
        err = (result or {}).get("error", {})
        key = f"{err['key']}: " if err.get("key") else ""
        note = f"{what} failed: {err.get('code')}: {key}{err.get('reason')}"
    if result is not None:
        note += "; the signed result is in the spool for the next export"
    print(f"edge-agent: {note}", file=sys.stderr)
    return 0 if outcome.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apply", help="run a signed fleet command from a file (air-gapped)")
    p.add_argument("file", metavar="FILE", help="the command token (from `edge-agent fleet "
                                                "sign`), or - for standard input")
    add_state_options(p)
    p.set_defaults(func=cmd_apply)
