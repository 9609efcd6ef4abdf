"""Wires the stages together. Nothing here decodes, counts or stores by itself.

```
capture ─▶ link ─▶ flows/decode ─▶ window ─▶ summary ─▶ spool
(source)   (L4)    (FlowTable,     (Window,   (build)    (SummaryStore)
                    sessions)       Inventory)
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
from edge_agent.features.extract import ChannelVector, FeatureTracker
from edge_agent.flows.assets import Inventory
from edge_agent.flows.table import FlowLimits, FlowTable, MessageEvent
from edge_agent.summary import build
from edge_agent.summary.sign import DeviceKey, dumps, token_hash
from edge_agent.transport.assets import AssetStore
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
    assets: AssetStore | None = None

    def __call__(self, body: dict[str, Any]) -> int:
        if self.assets is not None:
            self.assets.save([a["asset"] for a in body.get("assets", ())])
        seq = self.spool.next_seq()
        # The body first, so it can never override the identity and chain fields.
        doc = {**body, "agent_id": self.agent_id, "site": self.site, "seq": seq,
               "prev": self.spool.meta("chain_head"), "agent_version": __version__,
               "dropped_seqs": self.spool.pending_dropped()}
        token = self.key.sign(dumps(doc))
        self.spool.append("summary", body["window"]["start"], token, seq=seq,
                          meta={"chain_head": token_hash(token)})
        return seq

    def document(self, kind: str, payload: dict[str, Any], ts: float) -> None:
        """Sign and store a document that is not a summary (alert, status, command result)."""
        doc = {"type": kind, "agent_id": self.agent_id, "site": self.site, **payload}
        self.spool.append(kind, ts, self.key.sign(dumps(doc)))


class Pipeline:
    """One packet at a time through link, flows, decoders and windows."""

    def __init__(self, cfg: Config, sink: Callable[[dict[str, Any]], Any] | None = None,
                 on_event: EventHook | None = None, registry: Registry | None = None,
                 capture_stats: Callable[[], CaptureStats] | None = None,
                 inventory: Inventory | None = None,
                 on_window: Callable[[list[ChannelVector]], None] | None = None) -> None:
        self.cfg = cfg
        self.registry = registry or registry_for(cfg)
        self.table = FlowTable(self.registry, flow_limits(cfg))
        self.inventory = inventory or Inventory(cfg["limits"]["max_assets"])
        self.features = FeatureTracker(max_channels=cfg["limits"]["max_flows"])
        self.on_window = on_window
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
        win.packets += 1
        win.bytes += len(frame)
        p = parse(linktype, frame)
        if type(p) is Dropped:
            win.drops[p.reason] += 1
            if p.reason not in BENIGN_DROPS:
                self.undecodable += 1
            return
        events = self.table.process(p, ts)
        if events:
            self._events(events)

    def _events(self, events: list[MessageEvent]) -> None:
        hook = self.on_event
        win = self.window
        observe = self.features.observe
        for ev in events:
            msg = ev.message
            observe(ev)
            if msg.anomalies:
                win.count_event(ev)
            if msg.identity:
                self.inventory.observe_identity(ev)
            if hook is not None:
                hook(ev)

    def tick(self, now: float) -> None:
        """Time passes without packets (live capture on a quiet link): silence is reported too."""
        if self.window.start is None:
            self.window.open_at(now)
        elif now >= self.window.end:
            self._roll(now)

    def _roll(self, now: float) -> None:
        if self.window.start is not None:
            self._close_window(complete=True)
        self.window.open_at(now)

    def _close_window(self, complete: bool) -> None:
        vectors = self.features.close_window(self.window.length)
        if self.on_window is not None:
            self.on_window(vectors)
        flows = self.table.drain_window()
        self.inventory.observe_flows(flows, self.last_ts)
        body = build.build(self.window, flows, self.health(), self.max_summary_flows, complete)
        body["assets"] = [{"change": c.change, "changes": list(c.changes), "asset": c.asset}
                          for c in self.inventory.drain_changes()]
        self.windows += 1
        if self.sink is not None:
            self.sink(body)

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
            self._close_window(complete=False)
            self.window.start = None
            self.window.end = float("inf")
