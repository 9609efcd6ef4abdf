"""Feature vectors: what each communication channel did in a window, as numbers for the model.

A channel is (client, server, protocol). Per message the tracker updates a few counters
(rates, sizes, request timing, function families, errors, addresses, units); at the window's
close it turns every active channel into one vector in ``FEATURE_NAMES`` order. Novelty
("a function this channel never used", "an address outside the learned range") is judged
against the site baseline when there is one, else against what the agent has seen so far.

``FEATURE_NAMES`` and ``FEATURE_VERSION`` are the contract with the model: a model whose
manifest lists other features is refused at load.
"""
from __future__ import annotations

import math
import sys
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable

from edge_agent.flows.table import MessageEvent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# 2: the decayed mean rate behind ``rate_dev`` (and ``ChannelVector.mean_rate``) follows a
# window's rate only within a factor RATE_CLAMP of itself, so version 1 models are refused.
# 3: ``session`` messages (connection set-up, keep-alive) count only as traffic (observe).
FEATURE_VERSION = 3
FEATURE_NAMES: tuple[str, ...] = (
    "msg_rate_log",       # log1p(messages per minute)
    "req_rate_log",       # log1p(requests per minute)
    "mean_size_log",      # log1p(mean payload bytes per message)
    "iat_mean_log",       # log1p(mean seconds between requests): the polling period
    "iat_cv",             # std/mean of those gaps: 0 for a clockwork poll (capped at 4)
    "read_frac",          # share of messages per function family ...
    "write_frac",
    "control_frac",       # stop, start, restart
    "program_frac",       # program download/upload, firmware
    "diag_frac",          # diagnostics, identification
    "other_frac",
    "error_rate",         # exception/error replies per reply
    "reply_ratio",        # replies per request (unanswered requests pull it down)
    "func_distinct_log",
    "func_new_log",       # functions new to this channel
    "addr_distinct_log",
    "addr_span_log",      # log1p(highest - lowest address touched)
    "addr_new_frac",      # addressed messages outside the known range
    "unit_distinct_log",  # unit ids / outstations / common addresses addressed
    "anomaly_rate",       # decoder anomalies per message
    "channel_new",        # 1 when the channel was never seen before
    "src_fanout_log",     # channels the client opened in this window
    "dst_fanin_log",      # clients of the server in this window
    "rate_dev",           # (rate - decayed mean rate) / (decayed mean + 1), clipped to [-4, 4];
                          # the mean follows bursts only within RATE_CLAMP (update_rate)
)
N_FEATURES = len(FEATURE_NAMES)
INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}

FAMILIES = ("read", "write", "stop", "start", "restart", "program_download", "program_upload",
            "firmware", "diagnostic", "identify", "session", "time", "io")
_CONTROL = frozenset({"stop", "start", "restart"})
_PROGRAM = frozenset({"program_download", "program_upload", "firmware"})
_DIAG = frozenset({"diagnostic", "identify"})
MAX_SET = 256                # distinct functions/addresses/units remembered per channel window
EWMA_ALPHA = 0.2             # weight of the newest window in the decayed rate
# A burst (or a lull) moves the decayed rate at most as a window at RATE_CLAMP times (or
# 1/RATE_CLAMP of) the mean would: otherwise one bursty window drags the mean with it and the
# ordinary windows after it look like deviations for many windows. The first EWMA_WARMUP
# windows follow the rate freely: a channel often starts mid-window, so its first rate is a
# fraction of its usual one, and a clamped mean would take many windows to climb out of it.
RATE_CLAMP = 2.0
RATE_FLOOR = 1.0             # messages/min: the least mean the upward clamp is taken from
EWMA_WARMUP = 3


def load_families() -> dict[tuple[str, str], str]:
    """``(proto, kind) -> family`` from ``detect/functions.toml``."""
    text = resources.files("edge_agent.detect").joinpath("functions.toml").read_text("utf-8")
    table: dict[tuple[str, str], str] = {}
    for proto, families in tomllib.loads(text).items():
        for family, kinds in families.items():
            if family not in FAMILIES:
                raise ValueError(f"functions.toml: [{proto}] unknown family {family!r}")
            for kind in kinds:
                table[(proto, kind)] = family
    return table


def base_kind(kind: str) -> str:
    return kind[:-10] if kind.endswith("_exception") else kind


def is_error(proto: str, kind: str, fields: dict[str, Any]) -> bool:
    """An exception, error or negative reply, in any protocol's way of saying it."""
    if kind.endswith("_exception") or "exception_code" in fields or fields.get("error_class"):
        return True
    status = fields.get("status_code")
    return bool(status) and proto != "enip" and status not in (0, 6)


def address_of(fields: dict[str, Any]) -> int | None:
    """The first data address a message touches, whatever the protocol calls it."""
    addr = fields.get("address")
    if isinstance(addr, int):
        return addr
    for key, sub in (("objects", "ioa"), ("objects", "range_start"), ("items", "address")):
        seq = fields.get(key)
        if seq and isinstance(seq, list) and isinstance(seq[0], dict):
            value = seq[0].get(sub)
            if isinstance(value, int):
                return value
    return None


def unit_of(fields: dict[str, Any]) -> int | None:
    for key in ("unit_id", "common_address", "dst"):
        value = fields.get(key)
        if isinstance(value, int):
            return value
    return None


class ChannelWindow:
    """Counters of one channel in the open window."""

    __slots__ = ("msgs", "reqs", "replies", "errors", "anomalies", "last_req", "iat_n",
                 "iat_mean", "iat_m2", "families", "funcs", "func_new", "addr_min",
                 "addr_max", "addrs", "addr_seen", "addr_new", "units", "bytes0", "flows")

    def __init__(self) -> None:
        self.msgs = self.reqs = self.replies = self.errors = self.anomalies = 0
        self.last_req = -1.0
        self.iat_n = 0
        self.iat_mean = self.iat_m2 = 0.0
        self.families: dict[str, int] = {}
        self.funcs: set[str] = set()
        self.func_new = 0
        self.addr_min = self.addr_max = -1
        self.addrs: set[int] = set()
        self.addr_seen = self.addr_new = 0
        self.units: set[int] = set()
        self.flows: dict[int, Any] = {}


@dataclass(frozen=True)
class ChannelVector:
    key: tuple[str, str, str]      # client ip, server ip, protocol
    values: tuple[float, ...]      # in FEATURE_NAMES order
    messages: int
    flow_ids: tuple[int, ...]
    # Raw figures the rules read (the values above are scaled for the model).
    rate: float = 0.0              # messages per minute
    mean_rate: float | None = None  # the channel's decayed rate before this window
    history: int = 0               # windows the decayed rate has seen
    iat_mean: float = 0.0          # mean seconds between requests
    errors: int = 0
    replies: int = 0


class Knowledge:
    """What counts as known: the site baseline's facts, or what has been seen so far."""

    def __init__(self, max_channels: int) -> None:
        self.max_channels = max_channels
        self.channels: OrderedDict[tuple, dict[str, Any]] = OrderedDict()

    def channel(self, key: tuple) -> dict[str, Any] | None:
        return self.channels.get(key)

    def remember(self, key: tuple) -> dict[str, Any]:
        info = self.channels.get(key)
        if info is None:
            if len(self.channels) >= self.max_channels:
                self.channels.popitem(last=False)
            info = {"funcs": set(), "ranges": {}, "ewma_rate": None}
            self.channels[key] = info
        else:
            self.channels.move_to_end(key)
        return info


class FeatureTracker:
    """Per-message counting and per-window vectors (a stage: values in, values out)."""

    def __init__(self, families: dict[tuple[str, str], str] | None = None,
                 max_channels: int = 10_000, frozen: Knowledge | None = None) -> None:
        self.families = families if families is not None else load_families()
        self.window: dict[tuple, ChannelWindow] = {}
        self.max_channels = max_channels
        # ``frozen`` is a site baseline: novelty is judged against it and it never grows.
        self.known = frozen or Knowledge(max_channels)
        self.learning_known = frozen is None
        self.dropped = 0
        self.generation = 0

    def observe(self, ev: MessageEvent) -> None:
        msg = ev.message
        kind = msg.kind
        if not kind:
            if msg.anomalies:
                ch = self._channel(ev)
                if ch is not None:
                    ch.anomalies += len(msg.anomalies)
            return
        ch = self._channel(ev)
        if ch is None:
            return
        ch.msgs += 1
        ch.anomalies += len(msg.anomalies)
        fields = msg.fields
        base = base_kind(kind)
        fam = self.families.get((msg.proto, base), "other")
        if msg.is_request is False:
            # Connection set-up and keep-alive (the session family) is the link's housekeeping:
            # its replies count only when they refuse (a failed log-in is an error reply).
            error = is_error(msg.proto, kind, fields)
            if error or fam != "session":
                ch.replies += 1
                ch.errors += error
            return
        wf = ev.flow.w_fam
        wf[fam] = wf.get(fam, 0) + 1
        if fam == "session":
            # It counts as traffic (rates, sizes, the flow's families) but not in request
            # timing, functions or family shares, so a routine reconnect does not look unlike
            # steady polling.
            return
        if msg.is_request:
            ch.reqs += 1
            if ch.last_req >= 0:
                gap = max(0.0, ev.ts - ch.last_req)     # merged captures may step back
                ch.iat_n += 1
                delta = gap - ch.iat_mean
                ch.iat_mean += delta / ch.iat_n
                ch.iat_m2 += delta * (gap - ch.iat_mean)
            ch.last_req = ev.ts
        ch.families[fam] = ch.families.get(fam, 0) + 1
        if base not in ch.funcs and len(ch.funcs) < MAX_SET:
            ch.funcs.add(base)
        addr = address_of(fields)
        if addr is not None and addr >= 0:
            ch.addr_seen += 1
            if ch.addr_min < 0 or addr < ch.addr_min:
                ch.addr_min = addr
            if addr > ch.addr_max:
                ch.addr_max = addr
            if len(ch.addrs) < MAX_SET:
                ch.addrs.add(addr)
        unit = unit_of(fields)
        if unit is not None and len(ch.units) < MAX_SET:
            ch.units.add(unit)

    def _channel(self, ev: MessageEvent) -> ChannelWindow | None:
        flow = ev.flow
        proto = ev.message.proto
        slot = flow.feature_slot
        # The flow remembers its channel for this window: no tuple and lookup per message.
        if slot is not None and slot[0] == self.generation and slot[1] == proto:
            return slot[2]
        key = (flow.client_ip, flow.server_ip, proto)
        ch = self.window.get(key)
        if ch is None:
            if len(self.window) >= self.max_channels:
                self.dropped += 1
                return None
            ch = self.window[key] = ChannelWindow()
        ch.flows[flow.flow_id] = flow
        flow.feature_slot = (self.generation, proto, ch)
        return ch

    def close_window(self, length: float) -> list[ChannelVector]:
        """One vector per channel active in the window; the window's counters restart."""
        fanout: dict[str, int] = {}
        fanin: dict[str, int] = {}
        for client, server, _ in self.window:
            fanout[client] = fanout.get(client, 0) + 1
            fanin[server] = fanin.get(server, 0) + 1
        minutes = max(length, 1e-3) / 60.0
        out = []
        for key, ch in self.window.items():
            known = self.known.channel(key)
            new_channel = known is None
            if known is None and self.learning_known:
                known = self.known.remember(key)
            elif known is not None and self.learning_known:
                self.known.channels.move_to_end(key)
            func_new = len(ch.funcs - known["funcs"]) if known is not None else len(ch.funcs)
            addr_new = self._addr_new(ch, known)
            rate = ch.msgs / minutes
            ewma = known.get("ewma_rate") if known is not None else None
            rate_dev = 0.0 if ewma is None else max(-4.0, min(4.0, (rate - ewma) / (ewma + 1.0)))
            v = [0.0] * N_FEATURES
            v[0] = math.log1p(rate)
            v[1] = math.log1p(ch.reqs / minutes)
            size = sum(f.w_bytes for f in ch.flows.values()) / max(1, sum(f.w_msgs for f in ch.flows.values()))
            v[2] = math.log1p(size)
            if ch.iat_n:
                v[3] = math.log1p(ch.iat_mean)
                std = math.sqrt(ch.iat_m2 / ch.iat_n) if ch.iat_n > 1 else 0.0
                v[4] = min(4.0, std / ch.iat_mean) if ch.iat_mean > 0 else 0.0
            total = sum(ch.families.values()) or 1
            fam = ch.families
            v[5] = fam.get("read", 0) / total
            v[6] = fam.get("write", 0) / total
            v[7] = sum(fam.get(f, 0) for f in _CONTROL) / total
            v[8] = sum(fam.get(f, 0) for f in _PROGRAM) / total
            v[9] = sum(fam.get(f, 0) for f in _DIAG) / total
            v[10] = max(0.0, 1.0 - sum(v[5:10]))
            v[11] = ch.errors / ch.replies if ch.replies else 0.0
            v[12] = min(2.0, ch.replies / ch.reqs) if ch.reqs else (1.0 if ch.replies else 0.0)
            v[13] = math.log1p(len(ch.funcs))
            v[14] = math.log1p(func_new)
            v[15] = math.log1p(len(ch.addrs))
            v[16] = math.log1p(max(0, ch.addr_max - ch.addr_min)) if ch.addr_min >= 0 else 0.0
            v[17] = addr_new / ch.addr_seen if ch.addr_seen else 0.0
            v[18] = math.log1p(len(ch.units))
            v[19] = min(4.0, ch.anomalies / ch.msgs) if ch.msgs else min(4.0, float(ch.anomalies))
            v[20] = 1.0 if new_channel else 0.0
            v[21] = math.log1p(fanout[key[0]])
            v[22] = math.log1p(fanin[key[1]])
            v[23] = rate_dev
            out.append(ChannelVector(key, tuple(v), ch.msgs, tuple(ch.flows), rate, ewma,
                                     known.get("windows", 0) if known is not None else 0,
                                     ch.iat_mean, ch.errors, ch.replies))
            if self.learning_known and known is not None:
                known["funcs"] |= ch.funcs
                if ch.addr_min >= 0:
                    lo, hi = known["ranges"].get("*", (ch.addr_min, ch.addr_max))
                    known["ranges"]["*"] = (min(lo, ch.addr_min), max(hi, ch.addr_max))
                windows = known.get("windows", 0)
                known["ewma_rate"] = rate if ewma is None else update_rate(ewma, rate, windows)
                known["windows"] = windows + 1
        self.window = {}
        self.generation += 1
        return out

    @staticmethod
    def _addr_new(ch: ChannelWindow, known: dict[str, Any] | None) -> int:
        if known is None or "*" not in known["ranges"] or ch.addr_min < 0:
            return ch.addr_seen if known is None or "*" not in known.get("ranges", {}) else 0
        lo, hi = known["ranges"]["*"]
        return sum(1 for a in ch.addrs if a < lo or a > hi)


def update_rate(ewma: float, rate: float, windows: int) -> float:
    """The channel's decayed rate after a window at ``rate``; ``rate_dev`` keeps the raw rate."""
    if windows >= EWMA_WARMUP:
        rate = min(max(rate, ewma / RATE_CLAMP), max(ewma, RATE_FLOOR) * RATE_CLAMP)
    return (1 - EWMA_ALPHA) * ewma + EWMA_ALPHA * rate


def vector_table(vectors: Iterable[ChannelVector]) -> list[list[float]]:
    return [list(v.values) for v in vectors]
