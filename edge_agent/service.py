"""The running agent: the pipeline with its state directory and transport around it.

``Agent`` owns what touches the disk and the network for ``edge-agent run``: the spool (also
the outbox), the asset store, the device key, the site baseline, and the MQTT transport when a
broker is configured. The pipeline in ``agent.py`` stays free of all of it.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from edge_agent import __version__
from edge_agent.agent import Pipeline, SummaryStore
from edge_agent.capture.source import TICK, CaptureStats
from edge_agent.commands import lock_state_dir
from edge_agent.config import Config, ConfigError
from edge_agent.detect.profiles import Baseline
from edge_agent.detect.rules import RANK, Finding
from edge_agent.features.extract import ChannelVector
from edge_agent.flows.assets import Inventory
from edge_agent.summary.sign import KEY_FILE, DeviceKey, dumps
from edge_agent.transport.assets import AssetStore
from edge_agent.transport.spool import Spool

log = logging.getLogger(__name__)
BASELINE_FILE = "baseline.json"
MIN_CALIBRATION_WINDOWS = 20  # window vectors needed to calibrate the model for a site
STATUS_FILE = "status.json"
STATUS_EVERY = 5.0            # seconds between refreshes of the status file (and watchdog)
MAX_QUEUED_COMMANDS = 64      # fleet commands waiting for the pipeline thread (then the
                              # MQTT thread waits too), and the most run per turn of the loop


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify, WatchdogSec) how the agent is; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]          # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), addr)
        return True
    except OSError:
        return False


def load_scorer(cfg: Config, state_dir: Path) -> Any:
    """The model the configuration asks for: a manifest path, "off", or (empty) the active
    version in the state directory, else the prebuilt one. A stored version that no longer
    loads is rolled back, loudly; a configured one that does not load is a config error."""
    choice = cfg["detect"]["model"]
    if choice == "off":
        return None
    from edge_agent.model.scorer import ModelError, Scorer
    from edge_agent.model.store import ModelStore
    if choice:
        try:
            return Scorer.load(choice)
        except ModelError as exc:
            raise ConfigError("detect.model", str(exc)) from None
    store = ModelStore(state_dir)
    while True:
        path = store.current()
        try:
            return Scorer.load(path)
        except ModelError as exc:
            if path == store.current() and store.previous() is None and \
                    store._read("current") is None:
                raise ConfigError("detect.model", f"the prebuilt model does not load: {exc}") from None
            log.error("model %s does not load (%s): rolling back", path, exc)
            store.rollback()


def profile_assessor(cfg: Config, state_dir: Path | None) -> Any:
    """Firmware-profile matching: the state dir's installed set, else the shipped one."""
    from edge_agent.profiles.assess import ProfileAssessor
    from edge_agent.profiles.match import ProfileError, ProfileSet
    try:
        return ProfileAssessor(ProfileSet.default(state_dir), cfg["limits"]["max_assets"])
    except ProfileError as exc:
        log.error("firmware profiles unusable, matching is off: %s", exc)
        return None


class Calibration:
    def __init__(self, scorer: Any, manifest_path: Path) -> None:
        self.scorer = scorer
        self.threshold = scorer.threshold
        self.manifest_path = manifest_path


def calibrate(scorer: Any, vectors: list[ChannelVector], state_dir: Path) -> Calibration | None:
    """Fit the model's scaler and threshold to a site's normal windows; store and activate the
    result as a new version in the state directory."""
    if len(vectors) < MIN_CALIBRATION_WINDOWS:
        log.warning("only %d window(s) of learned traffic: the model keeps its prebuilt "
                    "calibration (needs %d)", len(vectors), MIN_CALIBRATION_WINDOWS)
        return None
    from edge_agent.model.store import ModelStore
    scaler, threshold = scorer.fit_site(vectors)
    store = ModelStore(state_dir)
    manifest = scorer.manifest.with_site(scaler, threshold, {"windows": len(vectors)})
    onnx = (Path(scorer.path).parent / scorer.manifest.onnx_file).read_bytes()
    path = store.install(manifest, onnx, store.fit_tag(scorer.manifest))
    store.activate(path)
    return Calibration(scorer.with_site(scaler, threshold), path)


class Agent:
    def __init__(self, cfg: Config, capture_stats: Callable[[], CaptureStats],
                 replay: bool = False, source: Any = None) -> None:
        self.cfg = cfg
        self.state = Path(cfg["agent"]["state_dir"])
        self.source = source
        # One agent per state directory, and no `edge-agent apply` under a running agent.
        self.lock_fd = lock_state_dir(self.state)
        self.capture_stats = capture_stats
        self.started = time.time()
        self.status_path = Path(cfg["agent"]["status_file"] or self.state / STATUS_FILE)
        self.last_finding: dict[str, Any] | None = None
        self.next_status = 0.0
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
        self.store = SummaryStore(self.spool, cfg.agent_id, cfg["agent"]["site"], self.key)
        self.alert_rank = RANK[cfg["mqtt"]["alert_severity"]]
        self.baseline_path = Path(cfg["detect"]["baseline"] or self.state / BASELINE_FILE)
        baseline = self._load_baseline()
        scorer = load_scorer(cfg, self.state)
        profiles = profile_assessor(cfg, self.state)
        self.pipeline = Pipeline(cfg, sink=self._window, capture_stats=capture_stats,
                                 inventory=inventory, baseline=baseline, scorer=scorer,
                                 on_finding=self._finding,
                                 learn_period=cfg["learn"]["period_s"],
                                 on_learned=self._learned, profiles=profiles)
        self.executor = self._fleet(cfg)
        # Commands arrive on the MQTT thread; they run on the pipeline's, between packets.
        self.commands: collections.deque[tuple[bytes, Callable[[], None]]] = collections.deque()
        self.room = threading.Condition()    # signalled when a queued command is taken
        self.closing = False
        self.will_stale = False     # the device key changed: the broker holds an old last will
        self.transport: Any = None
        if cfg["mqtt"]["url"]:
            from edge_agent.transport.mqtt import MqttTransport
            self.transport = MqttTransport(
                cfg, self.spool.path, cfg.agent_id, cfg["agent"]["site"], self._status_doc,
                fsync, on_command=self._command if self.executor is not None else None,
                receive_max=MAX_QUEUED_COMMANDS)
            self.store.on_stored = self.transport.notify
            if self.executor is not None:
                self.executor.on_stored = self.transport.notify
        if self.executor is not None:
            self.executor.flush()       # results recorded but not yet in the outbox (a crash)

    def _fleet(self, cfg: Config) -> Any:
        """The command executor, when fleet commands are on and an operator key is trusted."""
        fleet = cfg["fleet"]
        if not fleet["enabled"] or not fleet["operator_keys"]:
            return None
        from edge_agent.commands.executor import Executor
        from edge_agent.commands.verify import CommandVerifier, ReplayStore, load_operator_keys
        from edge_agent.control import RunningControl
        self.replay = ReplayStore(self.spool.path, fleet["replay_entries"])
        verifier = CommandVerifier(load_operator_keys(fleet["operator_keys"]), cfg.agent_id,
                                   cfg["agent"]["site"], fleet["clock_skew_s"], self.replay,
                                   fleet["max_ttl_s"])
        self.control = RunningControl(self, Path(cfg.path) if cfg.path else None)
        return Executor(verifier, self.control, self.spool, lambda: self.key, cfg.agent_id,
                        cfg["agent"]["site"])

    def _command(self, payload: bytes, ack: Callable[[], None], live: Callable[[], bool]) -> None:
        """From the MQTT thread. While the queue is full it waits (and so reads nothing more:
        the broker holds the rest of a burst). It gives up only when the agent stops or the
        connection is going (``live()`` False): then the command stays unacknowledged, and
        the broker, which keeps the session, delivers it again on the next connection."""
        with self.room:
            while len(self.commands) >= MAX_QUEUED_COMMANDS:
                if self.closing or not live():
                    log.info("fleet command left to the broker to deliver again: %s",
                             "the agent stops" if self.closing else "reconnecting")
                    return
                self.room.wait(0.2)
            self.commands.append((payload, ack))

    def run_commands(self) -> None:
        """On the pipeline's thread: execute what arrived, acknowledge once stored. At most
        ``MAX_QUEUED_COMMANDS`` a call, so a flood of commands does not stall the capture."""
        for _ in range(MAX_QUEUED_COMMANDS):
            with self.room:
                if not self.commands:
                    return
                payload, ack = self.commands.popleft()
                self.room.notify()
            outcome = self.executor.handle(payload, time.time())
            cmd = outcome.command.cmd if outcome.command is not None else "?"
            log.info("fleet command %s: %s", cmd, outcome.status)
            ack()
            if self.will_stale:
                # After the ack, so the rotation command is not delivered again.
                self.will_stale = False
                self.transport.renew_will()

    def restart_capture(self) -> dict[str, Any]:
        restart = getattr(self.source, "restart", None)
        if restart is None:
            return {"restarted": False, "note": "reading files: there is no capture to restart"}
        restart()
        return {"restarted": True}

    def _load_baseline(self) -> Baseline | None:
        if not self.baseline_path.exists():
            if self.cfg["detect"]["baseline"]:
                raise ConfigError("detect.baseline", f"{self.baseline_path} does not exist")
            return None
        try:
            return Baseline.load(self.baseline_path)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError("detect.baseline", f"{self.baseline_path}: {exc}") from None

    def _window(self, body: dict[str, Any]) -> int:
        """A closed window: the devices seen (last_seen moved, attributes learned), then the
        signed summary."""
        touched = {a["key"]: a for a in self.pipeline.inventory.drain_touched()}
        for change in body.get("assets", ()):
            touched[change["asset"]["key"]] = change["asset"]      # with profile attributes
        self.assets.save(list(touched.values()))
        return self.store(body)

    def _status_doc(self, state: str) -> str:
        return self.key.sign(dumps({"type": "status", "agent_id": self.cfg.agent_id,
                                    "site": self.cfg["agent"]["site"], "state": state,
                                    "ts": time.time(), "agent_version": __version__}))

    def _finding(self, finding: Finding) -> None:
        """Severe findings leave at once, signed, on the alert topic (and stay in the spool)."""
        self.last_finding = {"rule": finding.rule, "severity": finding.severity,
                             "ts": finding.first_ts, "src_ip": finding.src_ip,
                             "dest_ip": finding.dest_ip, "detail": finding.detail}
        if RANK[finding.severity] >= self.alert_rank:
            self.store.document("alert", {"finding": finding.as_dict()}, finding.first_ts)

    def _learned(self, baseline: Baseline, vectors: list[ChannelVector]) -> None:
        baseline.save(self.baseline_path)
        log.info("learned the site baseline (%d channels, %d devices): %s",
                 len(baseline.channels), len(baseline.assets), self.baseline_path)
        if self.pipeline.scorer is not None:
            site = calibrate(self.pipeline.scorer, vectors, self.state)
            if site is not None:
                self.pipeline.scorer = site.scorer
                log.info("calibrated the model for the site: %s", site.manifest_path)

    def run(self, packets: Iterable[tuple[float, int, bytes]],
            progress: Callable[[], None] | None = None) -> None:
        if self.transport is not None:
            self.transport.start()
        pipe = self.pipeline
        feed, tick = pipe.feed, pipe.tick
        sd_notify("READY=1")
        self.heartbeat(force=True)
        try:
            commands = self.commands
            for n, (ts, linktype, frame) in enumerate(packets):
                if linktype == TICK:
                    tick(ts)
                    self.heartbeat()
                else:
                    feed(ts, linktype, frame)
                    if not n & 1023:
                        self.heartbeat()
                        if progress is not None:
                            progress()
                if commands and (linktype == TICK or not n & 63):
                    self.run_commands()
            pipe.finish()
        finally:
            sd_notify("STOPPING=1")
            self.close()

    def heartbeat(self, force: bool = False) -> None:
        """From the pipeline loop: feed the watchdog and refresh the status file.

        Both come from the loop itself, so a capture that hangs stops them and systemd
        restarts the agent.
        """
        now = time.monotonic()
        if now < self.next_status and not force:
            return
        self.next_status = now + STATUS_EVERY
        sd_notify("WATCHDOG=1")
        try:
            write_status(self.status_path, self.status())
        except OSError as exc:
            log.warning("cannot write the status file %s: %s", self.status_path, exc)

    def status(self) -> dict[str, Any]:
        pipe = self.pipeline
        model = pipe.scorer.describe() if pipe.scorer is not None else None
        return {
            "pid": os.getpid(), "agent_id": self.cfg.agent_id, "site": self.cfg["agent"]["site"],
            "version": __version__, "updated": time.time(), "started": self.started,
            "uptime_s": round(time.time() - self.started, 1), "packets": pipe.packets,
            "capture": self.capture_stats().as_dict(), "windows": pipe.windows,
            "last_packet_ts": pipe.last_ts or None,
            "outbox_depth": self.spool.count(unpublished=True) if self.transport else None,
            "broker": self.transport.stats() if self.transport is not None else None,
            "model": model, "detection": pipe.detection_state(),
            "last_finding": self.last_finding, "refresh_s": STATUS_EVERY,
            "commands": self.executor.counters() if self.executor is not None else None,
        }

    def close(self) -> None:
        try:
            write_status(self.status_path, {**self.status(), "stopped": True})
        except OSError:
            pass
        with self.room:
            self.closing = True     # the MQTT thread stops waiting for room in the queue
            self.room.notify_all()
        if self.transport is not None:
            self.transport.close(10.0)
            self.transport = None
        self.spool.close()
        self.assets.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Atomically, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(status, default=str), encoding="utf-8")
    os.replace(tmp, path)
