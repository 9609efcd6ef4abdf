"""What fleet commands can do to the running agent (the AgentControl of ``edge-agent run``).

Everything the state directory and configuration file hold is handled as for an agent that is
not running (``tools/apply.OfflineControl``); on top, the running agent changes live what can
change live: the log level, the detection rules, learning, the model in use, the device key,
the capture. Commands run on the pipeline's own thread, between packets, so nothing here
races with the pipeline.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.commands.handlers import (CommandError, activate_model, commit_device_key,
                                          model_info, probe_model, rollback_active_model)
from edge_agent.config import Config
from edge_agent.detect.profiles import BaselineBuilder
from edge_agent.detect.rules import RANK, load_rules
from edge_agent.tools.apply import OfflineControl

if TYPE_CHECKING:
    from edge_agent.service import Agent

# Sections a running agent takes at once; a change anywhere else waits for a restart.
LIVE_SECTIONS = frozenset({"detect", "learn"})
LIVE_KEYS = frozenset({"agent.log_level", "mqtt.alert_severity"})


class RunningControl(OfflineControl):
    def __init__(self, agent: Agent, config_path: Path | None) -> None:
        super().__init__(agent.cfg, config_path, agent.spool, agent.key)
        self.agent = agent

    def status(self) -> dict[str, Any]:
        return {**self.agent.status(), "running": True}

    def apply_config(self, cfg: Config) -> dict[str, Any] | None:
        old = self.cfg
        changed = [f"{s}.{k}" for s in cfg.data for k in cfg[s] if cfg[s][k] != old[s][k]]
        pipe = self.agent.pipeline
        det = cfg["detect"]
        if any(k.startswith("detect.") for k in changed):
            pipe.detector.set_rules(load_rules(det["disabled"], det["severity"], det["params"]))
            pipe.detector.max_findings = det["max_findings"]
            pipe.detector.retuned = frozenset(det["severity"])
        logging.getLogger().setLevel(cfg["agent"]["log_level"].upper())
        self.agent.alert_rank = RANK[cfg["mqtt"]["alert_severity"]]
        self.cfg = self.agent.cfg = cfg
        restart = [k for k in changed if k not in LIVE_KEYS and k.split(".")[0] not in LIVE_SECTIONS
                   or k == "detect.model"]
        return {"restart_required": restart} if restart else None

    def learn(self, period_s: float | None) -> dict[str, Any] | None:
        pipe = self.agent.pipeline
        if period_s is not None:                       # learn_start
            pipe.learner = BaselineBuilder(pipe.families, self.cfg["limits"]["max_flows"])
            pipe.learn_period = period_s
            pipe.learn_since = None
            return {"learning_s": period_s}
        if pipe.learner is None:                       # learn_stop with nothing to stop
            raise CommandError("not_learning", "the agent is not learning")
        pipe.learn_period = 0.0                        # learn_stop: what was seen is the baseline
        pipe.learn_since = pipe.last_ts
        pipe._learn([], pipe.last_ts)
        base = pipe.detector.baseline
        return {"channels": len(base.channels), "devices": len(base.assets)} if base else None

    def current_model(self) -> dict[str, Any] | None:
        scorer = self.agent.pipeline.scorer
        return model_info(scorer.path) if scorer is not None and scorer.path else None

    def swap_model(self, manifest_path: Path) -> dict[str, Any]:
        info, scorer = activate_model(self._state, manifest_path, probe_model)
        self.agent.pipeline.scorer = scorer
        return info

    def rollback_model(self) -> dict[str, Any]:
        info, scorer = rollback_active_model(self._state, probe_model)
        self.agent.pipeline.scorer = scorer
        return info

    def commit_key(self) -> None:
        new = commit_device_key(self._state)
        if new is not None:
            self.key = self.agent.key = self.agent.store.key = new
            transport = self.agent.transport
            if transport is not None and transport.started:
                # The broker holds a last will signed by the old key. It is renewed (a new
                # connection) once this command is acknowledged: Agent.run_commands.
                self.agent.will_stale = True

    def restart_capture(self) -> dict[str, Any] | None:
        return self.agent.restart_capture()

    def set_log_level(self, level: str) -> dict[str, Any] | None:
        logging.getLogger().setLevel(level.upper())
        return None
