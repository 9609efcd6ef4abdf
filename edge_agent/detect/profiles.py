"""The site baseline: the behaviour a plant showed while the agent learned it.

Who talks to whom over which protocol, which functions each channel uses, which addresses it
touches per function family, how often it polls, and which devices exist. Built by
:class:`BaselineBuilder` from decoded messages and window vectors (``edge-agent learn`` or the
live learning period), stored as JSON in the state directory, and read back by the rules.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.features.extract import ChannelVector, address_of, base_kind
from edge_agent.flows.table import MessageEvent

BASELINE_SCHEMA = 1
MAX_VECTORS = 20_000      # window vectors kept while learning, to calibrate the model
ChannelKey = tuple[str, str, str]       # client ip, server ip, protocol


@dataclass
class ChannelProfile:
    funcs: set[str] = field(default_factory=set)
    families: set[str] = field(default_factory=set)
    ranges: dict[str, list[int]] = field(default_factory=dict)   # family -> [low, high]
    messages: int = 0
    periods: list[float] = field(default_factory=list)           # mean request gap per window
    rates: list[float] = field(default_factory=list)             # messages per minute per window

    def as_dict(self) -> dict[str, Any]:
        return {"funcs": sorted(self.funcs), "families": sorted(self.families),
                "ranges": dict(sorted(self.ranges.items())), "messages": self.messages,
                "period_s": statistics.median(self.periods) if self.periods else None,
                "rate_per_min": statistics.median(self.rates) if self.rates else None}


@dataclass(frozen=True)
class Baseline:
    channels: dict[ChannelKey, dict[str, Any]]
    assets: frozenset[str]
    meta: dict[str, Any]

    def writers(self, server: str, proto: str) -> frozenset[str]:
        return frozenset(c for (c, s, p), info in self.channels.items()
                         if s == server and p == proto and "write" in info["families"])

    def as_dict(self) -> dict[str, Any]:
        def plain(info: dict[str, Any]) -> dict[str, Any]:
            return {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in info.items()}
        return {"schema": BASELINE_SCHEMA, **self.meta, "assets": sorted(self.assets),
                "channels": [{"client": c, "server": s, "proto": p, **plain(info)}
                             for (c, s, p), info in sorted(self.channels.items())]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Baseline":
        if d.get("schema") != BASELINE_SCHEMA:
            raise ValueError(f"baseline schema {d.get('schema')!r}, expected {BASELINE_SCHEMA}")
        channels = {}
        for ch in d["channels"]:
            info = {k: v for k, v in ch.items() if k not in ("client", "server", "proto")}
            info["funcs"] = frozenset(info.get("funcs", ()))
            info["families"] = frozenset(info.get("families", ()))
            channels[(ch["client"], ch["server"], ch["proto"])] = info
        meta = {k: v for k, v in d.items() if k not in ("schema", "assets", "channels")}
        return cls(channels, frozenset(d.get("assets", ())), meta)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".baseline-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.as_dict(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Baseline":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


class BaselineBuilder:
    """Learns the baseline from requests, flows and window vectors."""

    def __init__(self, families: dict[tuple[str, str], str], max_channels: int = 10_000) -> None:
        self.families = families
        self.max_channels = max_channels
        self.channels: dict[ChannelKey, ChannelProfile] = {}
        self.assets: set[str] = set()
        self.first_ts: float | None = None
        self.last_ts = 0.0
        self.windows = 0
        self.vectors: deque[ChannelVector] = deque(maxlen=MAX_VECTORS)

    def observe(self, ev: MessageEvent) -> None:
        msg = ev.message
        if not msg.kind or msg.is_request is False:
            return
        flow = ev.flow
        if self.first_ts is None:
            self.first_ts = ev.ts
        self.last_ts = ev.ts
        key = (flow.client_ip, flow.server_ip, msg.proto)
        prof = self.channels.get(key)
        if prof is None:
            if len(self.channels) >= self.max_channels:
                return
            prof = self.channels[key] = ChannelProfile()
            self.assets.update((flow.client_ip, flow.server_ip))
        base = base_kind(msg.kind)
        family = self.families.get((msg.proto, base), "other")
        prof.messages += 1
        prof.funcs.add(base)
        prof.families.add(family)
        addr = address_of(msg.fields)
        if addr is not None and addr >= 0:
            rng = prof.ranges.get(family)
            if rng is None:
                prof.ranges[family] = [addr, addr]
            elif addr < rng[0]:
                rng[0] = addr
            elif addr > rng[1]:
                rng[1] = addr

    def observe_hosts(self, *ips: str) -> None:
        self.assets.update(ips)

    def observe_window(self, vectors: list[ChannelVector]) -> None:
        self.windows += 1
        self.vectors.extend(vectors)
        for v in vectors:
            self.assets.update(v.key[:2])
            prof = self.channels.get(v.key)
            if prof is None:
                continue
            if v.iat_mean > 0:
                prof.periods.append(v.iat_mean)
            prof.rates.append(v.rate)

    def build(self, **meta: Any) -> Baseline:
        channels = {}
        for key, prof in self.channels.items():
            info = prof.as_dict()
            info["funcs"] = frozenset(info["funcs"])
            info["families"] = frozenset(info["families"])
            channels[key] = info
        return Baseline(channels, frozenset(self.assets),
                        {"learned_from": self.first_ts, "learned_to": self.last_ts,
                         "windows": self.windows, **meta})
