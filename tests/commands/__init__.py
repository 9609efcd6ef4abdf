"""Shared parts of the fleet command tests: an operator, and a gateway with a real control.

``Gateway`` is an agent's command side assembled as the running agent assembles it: a config
file, a state directory with spool (and replay store), device key, verifier and executor, and
:class:`LiveControl`, an in-process AgentControl that really writes config files, loads
models with onnxruntime and makes keys; only capture is absent.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent import config
from edge_agent.commands.executor import Executor, Outcome
from edge_agent.commands.handlers import (
    activate_model,
    model_info,
    probe_model,
    rollback_active_model,
)
from edge_agent.commands.verify import CommandVerifier, ReplayStore, sign_command
from edge_agent.config import Config
from edge_agent.model.scorer import Scorer
from edge_agent.model.store import prebuilt_manifest
from edge_agent.service import load_scorer
from edge_agent.summary.sign import KEY_FILE, DeviceKey, kid_of
from edge_agent.tools.apply import OfflineControl
from edge_agent.transport.spool import Spool

NOW = 1_750_000_000.0
AGENT = "gw-1"
SITE = "site-a"
SHIPPED_MODEL = prebuilt_manifest()


@dataclass
class Operator:
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def kid(self) -> str:
        return kid_of(self.key.public_key())

    def pem(self) -> str:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def write(self, path: Path) -> Path:
        """The private key as ``fleet keygen`` writes it, the public PEM next to it."""
        path.write_bytes(self.key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
        path.chmod(0o600)
        pub = path.with_suffix(".pub.pem")
        pub.write_text(self.pem())
        return pub

    def sign(self, cmd: str, args: dict[str, Any] | None = None, aud: Any = AGENT,
             now: float = NOW, ttl: float = 3600, jti: str | None = None) -> str:
        return sign_command(self.key, cmd, args or {}, aud, now, ttl, jti)


class LiveControl(OfflineControl):
    """A running agent's control, in process: everything OfflineControl does to the state
    directory, plus the live state (model in use, learning, log level, capture restarts)."""

    def __init__(self, cfg: Config, config_path: Path | None, spool: Spool, key: DeviceKey) -> None:
        super().__init__(cfg, config_path, spool, key)
        self.scorer: Scorer | None = None
        self.learning: float | None = None
        self.capture_restarts = 0
        self.log_level = cfg["agent"]["log_level"]

    def status(self) -> dict[str, Any]:
        return {**super().status(), "running": True, "learning": self.learning,
                "log_level": self.log_level, "capture_restarts": self.capture_restarts}

    def apply_config(self, cfg: Config) -> dict[str, Any] | None:
        restart = [f"{s}.{k}" for s in ("agent", "capture") for k in cfg[s]
                   if cfg[s][k] != self.cfg[s][k] and k not in ("log_level",)]
        self.cfg = cfg
        self.set_log_level(cfg["agent"]["log_level"])
        return {"restart_required": restart} if restart else None

    def learn(self, period_s: float | None) -> dict[str, Any] | None:
        self.learning = period_s
        return None

    def current_model(self) -> dict[str, Any] | None:
        if self.scorer is None or self.scorer.path is None:
            return super().current_model()
        return model_info(self.scorer.path)

    def swap_model(self, manifest_path: Path) -> dict[str, Any]:
        info, self.scorer = activate_model(self._state, manifest_path, probe_model)
        return info

    def rollback_model(self) -> dict[str, Any]:
        info, self.scorer = rollback_active_model(self._state, probe_model)
        return info

    def restart_capture(self) -> dict[str, Any] | None:
        self.capture_restarts += 1
        return None

    def set_log_level(self, level: str) -> dict[str, Any] | None:
        logging.getLogger("edge_agent").setLevel(level.upper())
        self.log_level = level
        return None


class Gateway:
    """One agent's command side on a temporary state directory; :meth:`restart` reopens it."""

    def __init__(self, root: Path, operators: list[Operator], agent_id: str = AGENT,
                 site: str = SITE, **fleet: Any) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.state = root / "state"
        self.config_path = root / "agent.toml"
        keys = [str(op.write(root / f"operator-{i}.key")) for i, op in enumerate(operators)]
        lines = ["[agent]", f'id = "{agent_id}"', f'site = "{site}"',
                 f'state_dir = "{self.state}"', "", "[fleet]",
                 "operator_keys = [" + ", ".join(f'"{k}"' for k in keys) + "]"]
        lines += [f"{k} = {v!r}" for k, v in fleet.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.open()

    def open(self) -> None:
        self.cfg = config.load(self.config_path)
        fleet = self.cfg["fleet"]
        from edge_agent.commands.verify import load_operator_keys
        self.spool = Spool(self.state / "spool.sqlite")
        self.replay = ReplayStore(self.spool.path, fleet["replay_entries"])
        key_file = self.state / KEY_FILE
        key = DeviceKey.load(key_file) if key_file.exists() else DeviceKey.create(key_file)
        self.control = LiveControl(self.cfg, self.config_path, self.spool, key)
        self.control.scorer = load_scorer(self.cfg, self.state)   # as the agent starts
        self.verifier = CommandVerifier(load_operator_keys(fleet["operator_keys"]),
                                        self.cfg.agent_id, self.cfg["agent"]["site"],
                                        fleet["clock_skew_s"], self.replay, fleet["max_ttl_s"])
        self.executor = Executor(self.verifier, self.control, self.spool,
                                 lambda: self.control.key, self.cfg.agent_id,
                                 self.cfg["agent"]["site"])

    @property
    def key(self) -> DeviceKey:
        return self.control.key

    def handle(self, token: str | bytes, now: float = NOW) -> Outcome:
        return self.executor.handle(token, now)

    def results(self) -> list[str]:
        """The cmd_result tokens in the spool, in order."""
        return [doc for _, doc in self.spool.documents(kind="cmd_result")]

    def close(self) -> None:
        self.replay.close()
        self.spool.close()

    def restart(self) -> None:
        self.close()
        self.open()
