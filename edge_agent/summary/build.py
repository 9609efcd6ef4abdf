"""Window summaries: what one window of packet time held, as a plain JSON-able dict.

Windows are aligned to multiples of their length in epoch time (a 60 s window starts on the
minute), so summaries from different gateways line up. The window closes when a packet (or a
live tick) at or past its end arrives; a capture that jumps ahead skips the empty windows
between, while a live source closes every window, empty or not, so silence is visible too.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any

from edge_agent.flows.table import Flow, MessageEvent

SUMMARY_SCHEMA = 1


class Window:
    """Counters of the open window; the flow table keeps the per-flow ones."""

    def __init__(self, length: float) -> None:
        self.length = length
        self.start: float | None = None
        self.end = math.inf
        self.since = 0.0
        self.packets = 0
        self.bytes = 0
        self.anomalies: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()

    def open_at(self, now: float) -> None:
        start = math.floor(now / self.length) * self.length
        # Traffic was watched from the window's start only if it follows the previous window;
        # the first window of a run (or after a jump in time) starts being watched at ``now``.
        self.since = start if start == self.end else now
        self.start = start
        self.end = self.start + self.length
        self.packets = self.bytes = 0
        self.anomalies = Counter()
        self.drops = Counter()

    def count_event(self, ev: MessageEvent) -> None:
        for name in ev.message.anomalies:
            self.anomalies[name] += 1


def flow_entry(flow: Flow) -> dict[str, Any]:
    return {
        "flow_id": flow.flow_id,
        "transport": flow.transport,
        "proto": flow.proto,
        "src_ip": flow.client_ip,
        "src_port": flow.cport if flow.transport != "ether" else None,
        "dest_ip": flow.server_ip,
        "dest_port": flow.sport if flow.transport != "ether" else None,
        "packets": flow.w_pkts,
        "bytes": flow.w_bytes,
        "messages": flow.w_msgs,
        "anomalies": flow.w_anomalies,
        "history": [list(h) for h in flow.w_hist],
        "families": dict(sorted(flow.w_fam.items())),
    }


def build(window: Window, flows: list[Flow], health: dict[str, Any], max_flows: int,
          complete: bool, folded: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """The summary body; identity, ``seq`` and chaining are added by whoever stores it.

    ``folded`` holds per-protocol counters of flows the table could not keep listed.
    """
    protocols: dict[str, dict[str, int]] = {}
    rows = [(f.proto, 1, f.w_pkts, f.w_bytes, f.w_msgs) for f in flows]
    rows += [(proto, *agg) for proto, agg in (folded or {}).items()]
    for proto, n, pkts, size, msgs in rows:
        p = protocols.setdefault(proto, {"flows": 0, "packets": 0, "bytes": 0, "messages": 0})
        p["flows"] += n
        p["packets"] += pkts
        p["bytes"] += size
        p["messages"] += msgs
    # OT flows first, then the busiest, so a cap drops the least telling entries.
    ranked = sorted(flows, key=lambda f: (f.decoder is None, -f.w_msgs, -f.w_bytes))
    body = {
        "type": "summary",
        "schema": SUMMARY_SCHEMA,
        "window": {"start": window.start, "end": window.end, "complete": complete},
        "protocols": dict(sorted(protocols.items())),
        "flows": [flow_entry(f) for f in ranked[:max_flows]],
        "flows_omitted": max(0, len(ranked) - max_flows) + sum(a[0] for a in (folded or {}).values()),
        "anomalies": dict(sorted(window.anomalies.items())),
        "health": {"packets": window.packets, "bytes": window.bytes,
                   "link_drops": dict(sorted(window.drops.items())), **health},
    }
    for flow in flows:
        flow.reset_window()
    return body
