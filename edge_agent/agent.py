"""Wires the stages together. Nothing here decodes, counts or stores by itself.

```
capture ─▶ link ─▶ flows/decode ─▶ features ─▶ model ─▶ detect ─▶ summary ─▶ spool
(source)   (L4)    (FlowTable,     (Feature-    (Scorer) (Detector, (build)   (SummaryStore,
                    sessions,       Tracker)              baseline)  signed)   outbox)
                    Inventory)                     findings ─▶ on_finding (alerts)
```

The pipeline is driven by packet time only (``feed(ts, ...)``, ``tick(now)``), so replaying a
capture runs exactly the code that runs live, and a test can drive it with plain values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from edge_agent import __version__
from edge_agent.capture.source import TICK, CaptureStats
from edge_agent.config import Config
from edge_agent.decode import Limits, Registry, discover
from edge_agent.decode.link import BENIGN_DROPS, Dropped, parse
from edge_agent.detect.profiles import Baseline, BaselineBuilder
from edge_agent.detect.rules import Detector, Finding, load_rules
from edge_agent.features.extract import ChannelVector, FeatureTracker, base_kind, load_families
from edge_agent.flows.assets import Inventory
from edge_agent.flows.table import FlowLimits, FlowTable, MessageEvent
from edge_agent.summary import build
from edge_agent.summary.sign import DeviceKey, dumps, token_hash
from edge_agent.transport.spool import Spool

EventHook = Callable[[MessageEvent], None]
# A packet this far before its window is from another timeline (the next capture file, a
# clock stepped back): it opens a window of its own instead of joining the current one.
# Smaller steps back are the ordinary reordering of a mirror port or of merged interfaces.
BACKWARD_SLACK = 5.0


def flow_limits(cfg: Config) -> FlowLimits:
    lim = cfg["limits"]
    return FlowLimits(max_flows=lim["max_flows"], tcp_idle_timeout=lim["tcp_idle_timeout_s"],
                      udp_idle_timeout=lim["udp_idle_timeout_s"],
                      max_stream_buffer=lim["max_stream_buffer"],
                      max_ooo_segments=lim["max_ooo_segments"], max_history=lim["max_history"],
                      proto=Limits(max_pending=lim["max_pending"]))


def registry_for(cfg: Config) -> Registry:
    wanted = cfg["decode"]["protocols"]
    return discover(wanted or None)


@dataclass
class SummaryStore:
    """Signs each summary, chains it to the previous one and stores it in the spool.

    ``prev`` is the hash of the previous *generated* summary (kept as the spool's chain head,
    in the same transaction), so a summary later dropped from a full spool still leaves a
    chain a verifier can follow and explain with ``dropped_seqs``.
    """

    spool: Spool
    agent_id: str
    site: str
    key: DeviceKey
    on_stored: Callable[[], None] | None = None       # the transport's wake-up

    def __call__(self, body: dict[str, Any]) -> int:
        seq = self.spool.next_seq()
        # The body first, so it can never override the identity and chain fields.
        doc = {**body, "agent_id": self.agent_id, "site": self.site, "seq": seq,
               "prev": self.spool.meta("chain_head"), "agent_version": __version__,
               "dropped_seqs": self.spool.pending_dropped()}
        token = self.key.sign(dumps(doc))
        self.spool.append("summary", body["window"]["start"], token, seq=seq,
                          meta={"chain_head": token_hash(token)})
        if self.on_stored is not None:
            self.on_stored()
        return seq

    def document(self, kind: str, payload: dict[str, Any], ts: float) -> None:
        """Sign and store a document that is not a summary (alert, status, command result)."""
        doc = {"type": kind, "agent_id": self.agent_id, "site": self.site, "ts": ts, **payload}
        self.spool.append(kind, ts, self.key.sign(dumps(doc)))
        if self.on_stored is not None:
            self.on_stored()


class Pipeline:
    """One packet at a time through link, flows, decoders and windows."""

    def __init__(self, cfg: Config, sink: Callable[[dict[str, Any]], Any] | None = None,
                 on_event: EventHook | None = None, registry: Registry | None = None,
                 capture_stats: Callable[[], CaptureStats] | None = None,
                 inventory: Inventory | None = None,
                 on_window: Callable[[list[ChannelVector]], None] | None = None,
                 baseline: Baseline | None = None, scorer: Any = None,
                 on_finding: Callable[[Finding], None] | None = None,
                 learn_period: float = 0.0,
                 on_learned: Callable[[Baseline, list[ChannelVector]], None] | None = None,
                 profiles: Any = None) -> None:
        self.cfg = cfg
        self.registry = registry or registry_for(cfg)
        self.table = FlowTable(self.registry, flow_limits(cfg))
        self.inventory = inventory or Inventory(cfg["limits"]["max_assets"])
        families = load_families()
        self.features = FeatureTracker(families, max_channels=cfg["limits"]["max_flows"])
        self.on_window = on_window
        det = cfg["detect"]
        self.families = families
        self.detector = Detector(load_rules(det["disabled"], det["severity"], det["params"]),
                                 families, baseline, det["max_findings"],
                                 cfg["limits"]["max_assets"])
        self.detector.retuned = frozenset(det["severity"])
        self.profiles = profiles
        self.scorer = scorer
        self.on_finding = on_finding
        # Live learning: without a baseline, watch for ``learn_period`` seconds of packet
        # time, then detect against what was seen.
        self.learner = (BaselineBuilder(families, cfg["limits"]["max_flows"])
                        if learn_period > 0 and baseline is None else None)
        self.learn_period = learn_period
        self.learn_since: float | None = None
        self.on_learned = on_learned
        self.window = build.Window(cfg["summary"]["window_s"])
        self.sink = sink
        self.on_event = on_event
        self.capture_stats = capture_stats
        self.max_summary_flows = cfg["limits"]["max_summary_flows"]
        self.packets = 0
        self.windows = 0
        self.undecodable = 0
        self.last_ts = 0.0

    def run(self, packets: Iterable[tuple[float, int, bytes]]) -> None:
        for ts, linktype, frame in packets:
            if linktype == TICK:
                self.tick(ts)
            else:
                self.feed(ts, linktype, frame)
        self.finish()

    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        win = self.window
        if ts >= win.end or win.start is None or ts < win.start - BACKWARD_SLACK:
            self._roll(ts)
        self.packets += 1
        self.last_ts = ts
        if self.learner is not None and self.learn_since is None:
            self.learn_since = ts
        win.packets += 1
        win.bytes += len(frame)
        p = parse(linktype, frame)
        if type(p) is Dropped:
            win.drops[p.reason] += 1
            if p.reason not in BENIGN_DROPS:
                self.undecodable += 1
            return
        events = self.table.process(p, ts)
        if self.table.new_flows:
            for flow in self.table.new_flows:
                self._found(self.detector.on_flow(flow, ts))
            self.table.new_flows.clear()
        if events:
            self._events(events)

    def _events(self, events: list[MessageEvent]) -> None:
        hook = self.on_event
        win = self.window
        observe = self.features.observe
        detect = self.detector.on_message
        learner = self.learner
        for ev in events:
            msg = ev.message
            observe(ev)
            if learner is not None:
                learner.observe(ev)
            found = detect(ev)
            if found:
                self._found(found)
            if self.profiles is not None and msg.is_request and msg.kind and self.profiles.by_ip:
                self._profile_check(ev)
            if msg.anomalies:
                win.count_event(ev)
            if msg.identity:
                self.inventory.observe_identity(ev)
            if hook is not None:
                hook(ev)

    def _profile_check(self, ev: MessageEvent) -> None:
        """Traffic a device's firmware profile says it never sees (one lookup by server IP)."""
        msg = ev.message
        family = self.families.get((msg.proto, base_kind(msg.kind)), "other")
        d = self.profiles.on_message(ev.flow.server_ip, ev.flow.client_ip, msg.proto, family,
                                     msg.kind, ev.ts)
        if d is not None:
            f = self.detector.add_external(Finding(**d))
            if f is not None:
                self._found([f])

    def _found(self, findings: list[Finding]) -> None:
        """New findings, as they happen (the alert path); summaries get them folded."""
        if self.on_finding is not None:
            for f in findings:
                self.on_finding(f)

    def tick(self, now: float) -> None:
        """Time passes without packets (live capture on a quiet link): silence is reported too."""
        if self.window.start is None:
            self.window.open_at(now)
        elif now >= self.window.end:
            self._roll(now)

    def _roll(self, now: float) -> None:
        win = self.window
        if win.start is not None:
            # Time stepped back (the next capture file, a clock set back): this window was cut
            # short at its last packet, like the last one of a run.
            if now < win.start:
                self._close_window(complete=False, now=self.last_ts)
            else:
                self._close_window(complete=True, now=now)
        win.open_at(now)

    def _close_window(self, complete: bool, now: float) -> None:
        win = self.window
        # Rates are per second of traffic seen: the first window of a run, and the last,
        # hold less than their nominal length.
        span = min(win.end, now) - win.since
        vectors = self.features.close_window(max(1.0, span))
        if self.on_window is not None:
            self.on_window(vectors)
        if self.learner is not None:
            self._learn(vectors, now)
        # A window cut short (end of a capture, a stop, time stepping back) holds seconds of
        # traffic: a poll every 5 s is one or two requests in it, so its rates, gaps and shares
        # are noise the model was not built to judge. It is not scored at all rather than scored
        # and then silenced: no ONNX run, and no score anywhere that no finding could follow.
        # The rules, which count events, still see it.
        scores = (self.scorer.score(vectors)
                  if complete and self.scorer is not None and vectors else None)
        calibrated = self.scorer is not None and self.scorer.site_fitted
        self._found(self.detector.on_window(vectors, scores, self.last_ts, calibrated))
        flows, folded = self.table.drain_window()
        self.inventory.observe_flows(flows, self.last_ts)
        body = build.build(self.window, flows, self.health(), self.max_summary_flows, complete,
                           folded)
        changes = self.inventory.drain_changes()
        if self.profiles is not None:
            for c in changes:
                for d in self.profiles.on_identity(c.asset, c.changes, self.last_ts):
                    f = self.detector.add_external(Finding(**d))
                    if f is not None:
                        self._found([f])
                c.asset.update(self.profiles.attributes(c.asset))
        body["assets"] = [{"change": c.change, "changes": list(c.changes), "asset": c.asset}
                          for c in changes]
        body["findings"] = [f.as_dict() for f in self.detector.close_window()]
        body["detection"] = self.detection_state()
        self.windows += 1
        if self.sink is not None:
            self.sink(body)

    def _learn(self, vectors: list[ChannelVector], now: float) -> None:
        learner = self.learner
        learner.observe_window(vectors)
        if self.learn_since is not None and now - self.learn_since >= self.learn_period:
            baseline = learner.build(source="live learning period")
            self.learner = None
            self.detector.set_baseline(baseline)
            if self.on_learned is not None:
                self.on_learned(baseline, list(learner.vectors))

    def detection_state(self) -> dict[str, Any]:
        """What the findings of a summary were judged against."""
        base = self.detector.baseline
        return {
            "baseline": None if base is None else {k: base.meta.get(k) for k in
                                                   ("learned_from", "learned_to", "windows")},
            "baseline_rules": "on" if base is not None else
                              "learning" if self.learner is not None else
                              "off: no site baseline (edge-agent learn, or [learn] period_s)",
            "model": None if self.scorer is None else self.scorer.describe(),
            "suppressed_findings": self.detector.suppressed,
        }

    def health(self) -> dict[str, Any]:
        stats = self.capture_stats() if self.capture_stats else CaptureStats()
        t = self.table
        return {"packets_total": self.packets, "undecodable_total": self.undecodable,
                "capture": stats.as_dict(), "flows_active": len(t.flows),
                "flows_created": t.created, "flows_evicted_idle": t.evicted_idle,
                "flows_evicted_full": t.evicted_full, "assets": len(self.inventory.assets),
                "assets_evicted": self.inventory.evicted}

    def finish(self) -> None:
        """End of input: decode what waits in the flows, then close the last window."""
        events = self.table.close_all(self.last_ts)
        if events:
            self._events(events)
        if self.window.start is not None:
            self._close_window(complete=False, now=self.last_ts)
            self.window.start = None
            self.window.end = float("inf")
