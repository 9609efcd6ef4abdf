"""The running agent: the pipeline with its state directory and transport around it.

``Agent`` owns what touches the disk and the network for ``edge-agent run``: the spool (also
the outbox), the asset store, the device key, the site baseline, and the MQTT transport when a
broker is configured. The pipeline in ``agent.py`` stays free of all of it.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from edge_agent import __version__
from edge_agent.agent import Pipeline, SummaryStore
from edge_agent.capture.source import TICK, CaptureStats
from edge_agent.config import Config, ConfigError
from edge_agent.detect.profiles import Baseline
from edge_agent.detect.rules import RANK, Finding
from edge_agent.flows.assets import Inventory
from edge_agent.summary.sign import KEY_FILE, DeviceKey, dumps
from edge_agent.transport.assets import AssetStore
from edge_agent.transport.spool import Spool

log = logging.getLogger(__name__)
BASELINE_FILE = "baseline.json"


class Agent:
    def __init__(self, cfg: Config, capture_stats: Callable[[], CaptureStats],
                 replay: bool = False) -> None:
        self.cfg = cfg
        self.state = Path(cfg["agent"]["state_dir"])
        # Replaying files forces no write to disk per window (hundreds a second): the input
        # can be replayed, and WAL still keeps every summary whole through a crash.
        fsync = "off" if replay else cfg["spool"]["fsync"]
        self.spool = Spool(self.state / "spool.sqlite", cfg["spool"]["max_bytes"], fsync)
        self.assets = AssetStore(self.state / "assets.sqlite")
        inventory = Inventory(cfg["limits"]["max_assets"])
        inventory.load(self.assets.load())
        key_file = self.state / KEY_FILE
        # The first run creates the device key, so `run` works with no set-up at all.
        self.key = DeviceKey.load(key_file) if key_file.exists() else DeviceKey.create(key_file)
        log.debug("device key %s (kid %s)", key_file, self.key.kid)
        self.store = SummaryStore(self.spool, cfg.agent_id, cfg["agent"]["site"], self.key,
                                  self.assets)
        self.alert_rank = RANK[cfg["mqtt"]["alert_severity"]]
        self.baseline_path = Path(cfg["detect"]["baseline"] or self.state / BASELINE_FILE)
        baseline = self._load_baseline()
        self.pipeline = Pipeline(cfg, sink=self.store, capture_stats=capture_stats,
                                 inventory=inventory, baseline=baseline,
                                 on_finding=self._finding,
                                 learn_period=cfg["learn"]["period_s"],
                                 on_learned=self._learned)
        self.transport: Any = None
        if cfg["mqtt"]["url"]:
            from edge_agent.transport.mqtt import MqttTransport
            self.transport = MqttTransport(cfg, self.spool.path, cfg.agent_id,
                                           cfg["agent"]["site"], self._status_doc)
            self.store.on_stored = self.transport.notify

    def _load_baseline(self) -> Baseline | None:
        if not self.baseline_path.exists():
            if self.cfg["detect"]["baseline"]:
                raise ConfigError("detect.baseline", f"{self.baseline_path} does not exist")
            return None
        try:
            return Baseline.load(self.baseline_path)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError("detect.baseline", f"{self.baseline_path}: {exc}") from None

    def _status_doc(self, state: str) -> str:
        return self.key.sign(dumps({"type": "status", "agent_id": self.cfg.agent_id,
                                    "site": self.cfg["agent"]["site"], "state": state,
                                    "ts": time.time(), "agent_version": __version__}))

    def _finding(self, finding: Finding) -> None:
        """Severe findings leave at once, signed, on the alert topic (and stay in the spool)."""
        if RANK[finding.severity] >= self.alert_rank:
            self.store.document("alert", {"finding": finding.as_dict()}, finding.first_ts)

    def _learned(self, baseline: Baseline) -> None:
        baseline.save(self.baseline_path)
        log.info("learned the site baseline (%d channels, %d devices): %s",
                 len(baseline.channels), len(baseline.assets), self.baseline_path)

    def run(self, packets: Iterable[tuple[float, int, bytes]],
            progress: Callable[[], None] | None = None) -> None:
        if self.transport is not None:
            self.transport.start()
        pipe = self.pipeline
        feed, tick = pipe.feed, pipe.tick
        try:
            for n, (ts, linktype, frame) in enumerate(packets):
                if linktype == TICK:
                    tick(ts)
                else:
                    feed(ts, linktype, frame)
                if progress is not None and not n & 1023:
                    progress()
            pipe.finish()
        finally:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close(10.0)
            self.transport = None
        self.spool.close()
        self.assets.close()
