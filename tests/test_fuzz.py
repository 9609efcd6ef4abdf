"""Mutation fuzzing of link parsing, flows and decoders, and a reassembly property.

Inputs are real frames from the fixture captures plus synthetic Modbus/TCP conversations on every
supported link type, mutated with a seeded ``random.Random``: bit flips, byte replacements,
truncations, insertions, deletions, splices, corrupted length fields (IP, TCP data offset, UDP,
MBAP), random TCP sequence numbers and flags, and a random link type. Packet time mostly moves
forward, sometimes jumps (idle sweeps, window rolls) and sometimes steps back (merged captures).

What must hold: no exception escapes ``link.parse``, ``Pipeline.feed`` (with the per-message
record built and JSON-encoded for every event, as ``edge-agent decode`` does) or a decoder's
``probe``/``split``/``safe_feed``; the flow table never holds more than ``limits.max_flows``
flows; and traced memory stops growing once the bounded tables are full.

``EDGE_AGENT_FUZZ_N`` (default 100 000, about 25 s for the module on two cores) sets the inputs
per test, ``EDGE_AGENT_FUZZ_SEED`` the seed. A failure names each distinct crash once, with a
shrunk reproducer: the fewest ``(ts, linktype, frame)`` inputs that still crash on fresh state.
What the fuzz found is kept at the end as regressions.
"""
from __future__ import annotations

import gc
import itertools
import json
import os
import random
import struct
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from functools import lru_cache, partial
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.agent import Pipeline
from edge_agent.capture.source import CaptureError, FileSource
from edge_agent.cli import _json_default
from edge_agent.config import SCHEMA, Config, load
from edge_agent.decode import Limits, discover
from edge_agent.decode.link import (L4, LINKTYPE_EN10MB, LINKTYPE_IPV4, LINKTYPE_IPV6,
                                    LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_LOOP,
                                    LINKTYPE_NULL, LINKTYPE_RAW, SUPPORTED_LINKTYPES, Dropped,
                                    parse)
from edge_agent.events import to_record
from edge_agent.flows.stream import SEQ_MOD, Stream
from tests.conftest import fixture_pcaps

FUZZ_N = int(os.environ.get("EDGE_AGENT_FUZZ_N", "100000"))
SEED = int(os.environ.get("EDGE_AGENT_FUZZ_SEED", "20240502"))
FRAMES_PER_CAPTURE = 400        # keeps a big capture from crowding out the small ones
MIB = 1 << 20
# Traced memory may move this much over the last 55 % of the inputs. The bounded state itself
# (64 flows, two 4 KiB stream buffers and 8 pending requests each, 64 assets) stays under it even
# when it turns over completely, while a leak of one small object (40 bytes) per input crosses it.
MEMORY_GROWTH_BOUND = 2 * MIB
# Small bounds, so that a 100 000-input run fills every table many times over: the ones named
# here, and any other ``limits.max_*`` key (a table added later) at 64 or its minimum.
SMALL_LIMITS = {"max_flows": 64, "max_stream_buffer": 4096, "max_ooo_segments": 16,
                "max_pending": 8, "max_history": 8, "max_assets": 64}
LIMITS: dict[str, Any] = {
    **{f"limits.{name}": max(int(key.lo or 0), SMALL_LIMITS.get(name, 64))
       for name, key in SCHEMA["limits"].items() if name.startswith("max_")},
    "limits.tcp_idle_timeout_s": 120.0, "limits.udp_idle_timeout_s": 60.0}
UNSUPPORTED_LINKTYPES = (105, 127, 147, 0xFFFF)   # 802.11, radiotap, user0: must be dropped
ALL_LINKTYPES = tuple(sorted(SUPPORTED_LINKTYPES)) + UNSUPPORTED_LINKTYPES
START_TS = 1_700_000_000.0

Frame = tuple[int, bytes]          # (linktype, frame)
Packet = tuple[float, int, bytes]  # (ts, linktype, frame)
S = TypeVar("S", bytes, list)
REPLAY = 200                       # recent inputs kept to reproduce a crash that needs state


# -- building frames ---------------------------------------------------------------------------

def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, frag: int = 0x4000) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 7, frag, 64, proto, 0,
                       src, dst) + payload


def ipv6(src: bytes, dst: bytes, nxt: int, payload: bytes, ext: bool = False) -> bytes:
    if ext:      # a hop-by-hop options header in front, as MLD and jumbograms carry
        payload = bytes([nxt, 0]) + b"\x01\x04\x00\x00\x00\x00" + payload
        nxt = 0
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nxt, 64, src, dst) + payload


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes,
        options: bytes = b"") -> bytes:
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 8192, 0,
                       0) + options + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def encap(linktype: int, packet: bytes, vlans: int = 0) -> bytes:
    """Put an IP packet in a frame of ``linktype`` (Ethernet may carry VLAN tags)."""
    v6 = packet[0] >> 4 == 6
    etype = b"\x86\xdd" if v6 else b"\x08\x00"
    if linktype == LINKTYPE_EN10MB:
        tags = b"".join(struct.pack("!HH", 0x88A8 if i == 0 and vlans > 1 else 0x8100, 10 + i)
                        for i in range(vlans))
        return bytes.fromhex("0011223344550e8c00000001") + tags + etype + packet
    if linktype == LINKTYPE_LINUX_SLL:
        return struct.pack("!HHH8s", 0, 1, 6, b"\x00\x0e\x8c\x00\x00\x01\x00\x00") + etype + packet
    if linktype == LINKTYPE_LINUX_SLL2:
        return etype + struct.pack("!HIHBB8s", 0, 2, 1, 0, 6,
                                   b"\x00\x0e\x8c\x00\x00\x01\x00\x00") + packet
    if linktype == LINKTYPE_NULL:
        return struct.pack("<I", 24 if v6 else 2) + packet
    if linktype == LINKTYPE_LOOP:
        return struct.pack("!I", 30 if v6 else 2) + packet
    return packet     # RAW and its BSD numbers, IPV4, IPV6


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack("!HHHB", tid, 0, len(pdu) + 1, unit) + pdu


# Requests and responses of every public function code (App Spec 6.x), plus exceptions.
MODBUS_PDUS: tuple[tuple[bytes, bytes], ...] = (
    (bytes.fromhex("0100130025"), bytes.fromhex("0105cd6bb20e1b")),
    (bytes.fromhex("0200c40016"), bytes.fromhex("0203acdb35")),
    (bytes.fromhex("03006b0003"), bytes.fromhex("0306022b00000064")),
    (bytes.fromhex("0400080001"), bytes.fromhex("0402000a")),
    (bytes.fromhex("0500acff00"), bytes.fromhex("0500acff00")),
    (bytes.fromhex("0600010003"), bytes.fromhex("0600010003")),
    (bytes.fromhex("07"), bytes.fromhex("076d")),
    (bytes.fromhex("080000a537"), bytes.fromhex("080000a537")),
    (bytes.fromhex("0b"), bytes.fromhex("0b0000010e")),
    (bytes.fromhex("0c"), bytes.fromhex("0c080000010801210020")),
    (bytes.fromhex("0f0013000a02cd01"), bytes.fromhex("0f0013000a")),
    (bytes.fromhex("100001000204000a0102"), bytes.fromhex("1000010002")),
    (bytes.fromhex("11"), bytes.fromhex("1105ff0102ff00")),
    (bytes.fromhex("140e0600040001000206000300090002"),
     bytes.fromhex("140c05060dfe0020050633cd0040")),
    (bytes.fromhex("150d0600040007000306af04be100d"),
     bytes.fromhex("150d0600040007000306af04be100d")),
    (bytes.fromhex("160004f20025"), bytes.fromhex("160004f20025")),
    (bytes.fromhex("170003000600030006060000ff00ff"),
     bytes.fromhex("170c00fe0acd00010003000d00ff")),
    (bytes.fromhex("1804de"), bytes.fromhex("180006000201b81284")),
    (bytes.fromhex("2b0e0100"), bytes.fromhex("2b0e01010000030006436f6d7061")
     + bytes.fromhex("6e01045072646f0203312e30")),
    (bytes.fromhex("0300000001"), bytes.fromhex("8302")),
    (bytes.fromhex("100001000102ffff"), bytes.fromhex("9003")),
    (bytes.fromhex("41"), bytes.fromhex("c101")),
)


class Conversation:
    """A TCP (or UDP) Modbus conversation whose sequence numbers advance like a real one."""

    def __init__(self, rng: random.Random, n: int) -> None:
        self.rng = rng
        self.linktype = rng.choice(sorted(SUPPORTED_LINKTYPES))
        self.v6 = self.linktype == LINKTYPE_IPV6 or (self.linktype != LINKTYPE_IPV4
                                                     and rng.random() < 0.25)
        size = 16 if self.v6 else 4
        self.client = bytes([0xFD if self.v6 else 10] + [0] * (size - 2) + [1 + n])
        self.server = bytes([0xFD if self.v6 else 10] + [1] * (size - 2) + [(100 + n) & 0xFF])
        self.cport, self.sport = rng.randrange(1024, 65536), 502
        if rng.random() < 0.1:
            self.sport = rng.choice((5020, 1502))    # found by probing, not by port
        self.udp = rng.random() < 0.1
        self.seq = [rng.randrange(SEQ_MOD), rng.randrange(SEQ_MOD)]
        self.vlans = rng.choice((0, 0, 0, 1, 2)) if self.linktype == LINKTYPE_EN10MB else 0
        self.tid = 0

    def frame(self, from_client: bool, flags: int, payload: bytes) -> Frame:
        d = 0 if from_client else 1
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        sp, dp = (self.cport, self.sport) if from_client else (self.sport, self.cport)
        if self.udp:
            l4, proto = udp(sp, dp, payload), 17
        else:
            l4 = tcp(sp, dp, self.seq[d], self.seq[1 - d], flags, payload)
            proto = 6
            self.seq[d] = (self.seq[d] + len(payload) + (1 if flags & 0x03 else 0)) % SEQ_MOD
        if self.v6:
            ip = ipv6(src, dst, proto, l4, self.rng.random() < 0.1)
        else:
            ip = ipv4(src, dst, proto, l4)
        return self.linktype, encap(self.linktype, ip, self.vlans)

    def handshake(self) -> list[Frame]:
        return [self.frame(True, 0x02, b""), self.frame(False, 0x12, b""),
                self.frame(True, 0x10, b"")]

    def exchange(self) -> tuple[bytes, bytes]:
        self.tid = (self.tid + 1) & 0xFFFF
        req, resp = self.rng.choice(MODBUS_PDUS)
        unit = self.rng.choice((1, 255, 0))
        return mbap(self.tid, unit, req), mbap(self.tid, unit, resp)


# -- the corpus --------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def fixture_frames() -> tuple[Frame, ...]:
    frames: list[Frame] = []
    for path in fixture_pcaps():
        try:
            source = FileSource([str(path)])
            for i, (_ts, linktype, frame) in enumerate(source):
                if i >= FRAMES_PER_CAPTURE:
                    break
                frames.append((linktype, bytes(frame)))
        except CaptureError:
            continue
    return tuple(frames)


@lru_cache(maxsize=1)
def synthetic_frames() -> tuple[Frame, ...]:
    rng = random.Random(SEED)
    frames: list[Frame] = []
    for n in range(48):
        conv = Conversation(rng, n)
        frames += conv.handshake()
        for _ in range(6):
            q, a = conv.exchange()
            frames += [conv.frame(True, 0x18, q), conv.frame(False, 0x18, a)]
        frames.append(conv.frame(True, 0x18, conv.exchange()[0] + conv.exchange()[0]))
        frames.append(conv.frame(True, 0x11, b""))
    # Odd but legal shapes: IPv4 fragments, non-IP ethertypes, LLC, TCP options, SLL with VLAN.
    src, dst = bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2])
    seg = tcp(40000, 502, 1, 1, 0x18, mbap(1, 1, b"\x03\x00\x00\x00\x01"),
              b"\x01\x01\x08\x0a" + b"\x00" * 8)       # NOP, NOP, timestamps
    frames += [
        (LINKTYPE_EN10MB, encap(LINKTYPE_EN10MB, ipv4(src, dst, 6, seg))),
        (LINKTYPE_EN10MB, encap(LINKTYPE_EN10MB, ipv4(src, dst, 6, seg, frag=0x2000))),
        (LINKTYPE_EN10MB, encap(LINKTYPE_EN10MB, ipv4(src, dst, 6, seg, frag=0x0010))),
        (LINKTYPE_EN10MB, encap(LINKTYPE_EN10MB, ipv4(src, dst, 47, seg))),
        (LINKTYPE_EN10MB, bytes(12) + b"\x88\xb8" + bytes(40)),          # GOOSE ethertype
        (LINKTYPE_EN10MB, bytes(12) + b"\x88\x92" + bytes(40)),          # PROFINET RT
        (LINKTYPE_EN10MB, bytes(12) + b"\x00\x26\x42\x42\x03" + bytes(38)),  # 802.3 + LLC (STP)
        (LINKTYPE_RAW, ipv6(bytes(16), bytes(16), 44, bytes(8) + seg)),   # IPv6 fragment
        (LINKTYPE_RAW, ipv6(bytes(16), bytes(16), 17, udp(5000, 502, mbap(9, 1, b"\x07")))),
    ]
    return tuple(frames)


def layout(linktype: int, frame: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the header fields worth corrupting: lengths, flags, seq, MBAP."""
    try:
        if linktype == LINKTYPE_EN10MB:
            l3 = 14
            while frame[l3 - 2:l3] in (b"\x81\x00", b"\x88\xa8", b"\x91\x00"):
                l3 += 4
        elif linktype == LINKTYPE_LINUX_SLL:
            l3 = 16
        elif linktype == LINKTYPE_LINUX_SLL2:
            l3 = 20
        elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            l3 = 4
        else:
            l3 = 0
        fields = [(l3, 1)]
        if frame[l3] >> 4 == 6:
            fields += [(l3 + 4, 2), (l3 + 6, 1)]
            l4, proto = l3 + 40, frame[l3 + 6]
        else:
            fields += [(l3 + 2, 2), (l3 + 6, 2), (l3 + 9, 1)]
            l4, proto = l3 + (frame[l3] & 0x0F) * 4, frame[l3 + 9]
        if proto == 6:
            fields += [(l4 + 4, 4), (l4 + 8, 4), (l4 + 12, 1), (l4 + 13, 1), (l4, 2), (l4 + 2, 2)]
            app = l4 + (frame[l4 + 12] >> 4) * 4
        elif proto == 17:
            fields += [(l4 + 4, 2), (l4, 2), (l4 + 2, 2)]
            app = l4 + 8
        else:
            return fields
        if len(frame) >= app + 8:          # an MBAP header, if that is what follows
            fields += [(app + 2, 2), (app + 4, 2), (app + 7, 1), (app, 2)]
        return [(o, s) for o, s in fields if o + s <= len(frame)]
    except IndexError:
        return []


INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF)
INTERESTING16 = (0, 1, 2, 5, 6, 7, 8, 0xFE, 0xFF, 0x100, 0x104, 0x7FFF, 0x8000, 0xFFFF)


class Mutator:
    def __init__(self, rng: random.Random, corpus: tuple[Frame, ...]) -> None:
        self.rng = rng
        self.corpus = corpus
        self.ops: tuple[Callable[[int, bytearray], None], ...] = (
            self.flip, self.flip, self.replace, self.truncate, self.insert, self.delete,
            self.field, self.field, self.field, self.splice, self.duplicate)

    def mutate(self, linktype: int, frame: bytes, rounds: int) -> bytes:
        buf = bytearray(frame)
        for _ in range(rounds):
            self.rng.choice(self.ops)(linktype, buf)
        return bytes(buf)

    def flip(self, lt: int, buf: bytearray) -> None:
        if buf:
            for _ in range(self.rng.randrange(1, 4)):
                buf[self.rng.randrange(len(buf))] ^= 1 << self.rng.randrange(8)

    def replace(self, lt: int, buf: bytearray) -> None:
        if buf:
            i = self.rng.randrange(len(buf))
            rng = self.rng
            buf[i] = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randrange(256)

    def truncate(self, lt: int, buf: bytearray) -> None:
        del buf[self.rng.randrange(len(buf) + 1):]

    def insert(self, lt: int, buf: bytearray) -> None:
        i = self.rng.randrange(len(buf) + 1)
        buf[i:i] = self.rng.randbytes(self.rng.choice((1, 2, 4, 7, 64, 300)))

    def delete(self, lt: int, buf: bytearray) -> None:
        if buf:
            i = self.rng.randrange(len(buf))
            del buf[i:i + self.rng.randrange(1, 16)]

    def duplicate(self, lt: int, buf: bytearray) -> None:
        if buf:
            i = self.rng.randrange(len(buf))
            j = min(len(buf), i + self.rng.randrange(1, 300))
            buf[j:j] = buf[i:j]

    def splice(self, lt: int, buf: bytearray) -> None:
        _, other = self.rng.choice(self.corpus)
        i = self.rng.randrange(len(buf) + 1)
        j = self.rng.randrange(len(other) + 1)
        buf[i:] = other[j:]

    def field(self, lt: int, buf: bytearray) -> None:
        fields = layout(lt, bytes(buf))
        if not fields:
            return self.flip(lt, buf)
        off, size = self.rng.choice(fields)
        rng = self.rng
        if size == 1:
            buf[off] = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randrange(256)
        elif size == 2:
            old = int.from_bytes(buf[off:off + 2], "big")
            new = rng.choice((rng.choice(INTERESTING16), old + rng.randrange(-8, 9),
                              rng.randrange(1 << 16)))
            buf[off:off + 2] = (new & 0xFFFF).to_bytes(2, "big")
        else:
            old = int.from_bytes(buf[off:off + 4], "big")
            new = rng.choice((rng.randrange(1 << 32), old + rng.randrange(-3000, 3000),
                              old ^ 0x80000000, 0xFFFFFFFF))
            buf[off:off + 4] = (new % SEQ_MOD).to_bytes(4, "big")


def fuzz_inputs(seed: int, n: int) -> Iterator[tuple[float, int, bytes]]:
    """``n`` (ts, linktype, frame) inputs, deterministic for a seed."""
    rng = random.Random(seed)
    fixtures, synthetic = fixture_frames(), synthetic_frames()
    corpus = fixtures + synthetic
    mut = Mutator(rng, corpus)
    convs = [Conversation(rng, i) for i in range(6)]
    queue: list[Frame] = []
    ts = START_TS
    for _ in range(n):
        r = rng.random()
        ts += rng.expovariate(1 / 0.03)
        if r < 0.003:
            ts += rng.choice((61.0, 150.0, 400.0, 4000.0))     # quiet link: windows, sweeps
        elif r < 0.005:
            ts -= rng.uniform(0.0, 2.0)                     # merged or NTP-stepped captures
        r = rng.random()
        if queue:
            linktype, frame = queue.pop(0)
        elif r < 0.35:
            # A live conversation: headers stay consistent so reassembly and the decoder see
            # the damage in the byte stream (corrupt, split, glued, resent, reordered ADUs).
            conv = rng.choice(convs)
            if rng.random() < 0.01:
                convs[convs.index(conv)] = conv = Conversation(rng, rng.randrange(200))
                queue += conv.handshake()
                linktype, frame = queue.pop(0)
            else:
                q, a = conv.exchange()
                if rng.random() < 0.5:
                    q = mut.mutate(LINKTYPE_RAW, q, rng.randrange(1, 3))
                if rng.random() < 0.3:
                    a = mut.mutate(LINKTYPE_RAW, a, 1)
                if rng.random() < 0.01:
                    # A jumbo segment of junk or of zeros: past the stream buffer and the
                    # resynchronisation scan.
                    q = rng.choice((rng.randbytes, bytes))(rng.randrange(1500, 9000))
                if rng.random() < 0.1 and len(a) > 1:
                    cut = rng.randrange(1, len(a))
                    parts = [conv.frame(False, 0x18, a[:cut]), conv.frame(False, 0x18, a[cut:])]
                    if rng.random() < 0.3:
                        parts.reverse()
                    queue += [conv.frame(True, 0x18, q), *parts]
                elif rng.random() < 0.05:
                    queue += [conv.frame(True, 0x18, q + conv.exchange()[0]),
                              conv.frame(False, 0x18, a)]
                else:
                    queue += [conv.frame(True, 0x18, q), conv.frame(False, 0x18, a)]
                if rng.random() < 0.03:
                    queue.insert(rng.randrange(len(queue) + 1), rng.choice(queue))   # retransmit
                if rng.random() < 0.02:
                    queue.pop(rng.randrange(len(queue)))                             # lost
                if rng.random() < 0.005:
                    queue.append(conv.frame(True, rng.choice((0x11, 0x04)), b""))  # FIN, RST
                linktype, frame = queue.pop(0)
        elif r < 0.92:
            linktype, frame = rng.choice(fixtures if r < 0.65 and fixtures else synthetic)
            frame = mut.mutate(linktype, frame, rng.choice((1, 1, 1, 2, 3, 6)))
        elif r < 0.97:
            linktype, frame = rng.choice(corpus)
        else:
            linktype, frame = rng.choice(ALL_LINKTYPES), rng.randbytes(rng.randrange(0, 120))
        if rng.random() < 0.06:
            linktype = rng.choice(ALL_LINKTYPES)
        yield ts, linktype, frame


# -- failures ----------------------------------------------------------------------------------

def shrink(items: S, fails: Callable[[S], bool]) -> S:
    """Greedy delta debugging over bytes or a list: drop chunks while the failure persists."""
    chunk = max(1, len(items) // 2)
    while chunk:
        i, changed = 0, False
        while i < len(items):
            cand = items[:i] + items[i + chunk:]
            if fails(cand):
                items, changed = cand, True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    return items


def _where(exc: BaseException) -> tuple[str, str]:
    tb = traceback.extract_tb(exc.__traceback__)
    return type(exc).__name__, f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"


class Failures:
    """Distinct crashes (by exception type and raising line), each with a shrunk reproducer.

    ``run`` replays a list of inputs on fresh state and raises what the code raises. The
    reproducer is the crashing input alone if that is enough, else the fewest of the recent
    inputs that still crash; then the last input's bytes are shrunk.
    """

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], str] = {}

    def add(self, exc: BaseException, index: int, recent: list[Packet],
            run: Callable[[list[Packet]], object]) -> None:
        key = _where(exc)
        if key in self.seen or len(self.seen) >= 10:
            return

        def fails(seq: list[Packet]) -> bool:
            try:
                run(seq)
            except Exception as again:       # noqa: BLE001 - the same crash, or another
                return _where(again) == key
            return False

        seq = recent[-1:]
        if not fails(seq):
            seq = shrink(list(recent), fails) if fails(list(recent)) else []
        if seq:
            ts, lt, frame = seq[-1]
            seq[-1] = (ts, lt, shrink(frame, lambda b: fails(seq[:-1] + [(ts, lt, b)])))
            repro = "inputs (ts, linktype, frame):\n" + "\n".join(
                f"    ({t!r}, {l}, bytes.fromhex('{f.hex()}'))," for t, l, f in seq)
        else:
            repro = (f"needs more than the {len(recent)} inputs before it "
                     f"(input {index}, seed {SEED})")
        self.seen[key] = (f"{key[0]}: {exc} at {key[1]}\n  {repro}\n"
                          + "".join(traceback.format_exception(exc)[-8:]))

    def check(self) -> None:
        assert not self.seen, "exceptions escaped:\n" + "\n".join(self.seen.values())


def fuzz_config() -> Config:
    return load().with_overrides(LIMITS)


# -- the tests ---------------------------------------------------------------------------------

def test_corpus_is_real() -> None:
    """The fuzz starts from real traffic when the shared fixtures are there."""
    assert len(synthetic_frames()) > 500
    if fixture_pcaps():
        assert len(fixture_frames()) > 1000
    kinds = {type(parse(lt, f)) for lt, f in synthetic_frames()}
    assert kinds == {L4, Dropped}


def check_parse(linktype: int, frame: bytes) -> None:
    p = parse(linktype, frame)
    assert type(p) in (L4, Dropped), p
    if type(p) is L4:
        assert isinstance(p.payload, bytes) and len(p.payload) <= len(frame)
        assert 0 <= p.sport <= 0xFFFF and 0 <= p.dport <= 0xFFFF


def replay_parse(seq: list[Packet]) -> None:
    for _ts, linktype, frame in seq:
        check_parse(linktype, frame)


def test_link_parse_never_raises() -> None:
    failures = Failures()
    n = 0
    for i, (ts, linktype, frame) in enumerate(fuzz_inputs(SEED + 1, FUZZ_N)):
        n += 1
        try:
            check_parse(linktype, frame)
        except Exception as exc:  # noqa: BLE001
            failures.add(exc, i, [(ts, linktype, frame)], replay_parse)
    failures.check()
    assert n == FUZZ_N


def test_pipeline_survives_mutations_and_memory_stays_flat() -> None:
    cfg = fuzz_config()
    max_flows = cfg["limits"]["max_flows"]
    dumps = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode
    events = 0

    def on_event(ev: Any) -> None:
        nonlocal events
        events += 1
        dumps(to_record(ev))      # the record, encoded as `edge-agent decode` does

    def replay(seq: list[Packet]) -> None:
        p = Pipeline(cfg, on_event=on_event)
        for ts, linktype, frame in seq:
            p.feed(ts, linktype, frame)
        p.finish()

    failures = Failures()
    pipe = Pipeline(cfg, on_event=on_event)
    # Tracing starts after a warm-up that fills every bounded table; by the base checkpoint
    # the state held from before tracing has turned over, so what grows after it is growth.
    start, base = int(FUZZ_N * 0.3), int(FUZZ_N * 0.45)
    checkpoints = {base, int(FUZZ_N * 0.6), int(FUZZ_N * 0.8), FUZZ_N}
    sizes: dict[int, int] = {}
    stream_peak = 0
    max_ooo = cfg["limits"]["max_ooo_segments"]
    inputs = list(fuzz_inputs(SEED, FUZZ_N))      # generated before tracing: 5x faster
    gc.collect()
    t0 = time.perf_counter()
    try:
        for i, (ts, linktype, frame) in enumerate(inputs, 1):
            try:
                pipe.feed(ts, linktype, frame)
            except Exception as exc:  # noqa: BLE001
                failures.add(exc, i - 1, inputs[max(0, i - REPLAY):i], replay)
                pipe = Pipeline(cfg, on_event=on_event)      # carry on from a clean state
            assert len(pipe.table.flows) <= max_flows
            if not i % 500:
                for flow in pipe.table.flows.values():
                    for s in flow.streams or ():
                        stream_peak = max(stream_peak, len(s.buf) + s.ooo_bytes)
                        assert len(s.ooo) <= max_ooo
            if i == start or i in checkpoints:
                # Close the window (a live tick would) so what is measured is the bounded
                # state, not the window's list of the flows it saw.
                pipe.tick(pipe.window.end)
                gc.collect()
                if i == start:
                    tracemalloc.start()
                else:
                    sizes[i] = tracemalloc.get_traced_memory()[0]
        pipe.finish()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - t0
    failures.check()
    assert len(inputs) == FUZZ_N == pipe.packets
    assert events > FUZZ_N // 4, "the mutations stopped reaching the decoders"
    growth = max(sizes.values()) - sizes[base]
    trace = ", ".join(f"{k}: {v / MIB:.2f} MiB" for k, v in sorted(sizes.items()))
    assert growth < MEMORY_GROWTH_BOUND, f"traced memory grew {growth / MIB:.2f} MiB ({trace})"
    # A stream holds at most max_stream_buffer bytes, plus the one segment that tips it over.
    assert stream_peak <= cfg["limits"]["max_stream_buffer"] + 9000, stream_peak
    print(f"\n{FUZZ_N} inputs, {events} events in {elapsed:.1f} s; stream peak {stream_peak} B; "
          f"traced memory {trace}")


def test_decoders_direct() -> None:
    """Every registered decoder's probe, split and session on mutated payloads."""
    rng = random.Random(SEED + 2)
    payloads: list[bytes] = []
    for lt, frame in fixture_frames() + synthetic_frames():
        p = parse(lt, frame)
        if type(p) is L4 and p.payload:
            payloads.append(p.payload)
    payloads += [mbap(7, 1, q) for q, _ in MODBUS_PDUS] + [mbap(7, 1, a) for _, a in MODBUS_PDUS]
    mut = Mutator(rng, tuple((LINKTYPE_RAW, p) for p in payloads))
    decoders = list(discover().by_name.values())
    assert decoders
    limits = Limits(max_pending=8)
    sessions = {d.name: d.session(limits) for d in decoders}
    dumps = json.JSONEncoder(default=_json_default).encode
    failures = Failures()
    for i in range(FUZZ_N):
        data = mut.mutate(LINKTYPE_RAW, rng.choice(payloads), rng.choice((0, 1, 1, 2, 4)))
        from_client = rng.random() < 0.5
        for dec in decoders:
            def once(d: bytes, dec: Any = dec, fc: bool = from_client) -> None:
                dec.probe(d[:256])
                pdus, used = dec.split(d)
                assert used == -1 and not pdus or 0 <= used <= len(d), (pdus, used)
                sess = dec.session(limits)
                for pdu in [*pdus, d]:
                    assert isinstance(pdu, (bytes, bytearray))
                    for msg in dec.safe_feed(sess, pdu, fc, START_TS):
                        dumps(msg.fields)
            try:
                once(data)
                # A long-lived session too: pending requests from many earlier inputs.
                for msg in dec.safe_feed(sessions[dec.name], data, from_client, START_TS + i):
                    dumps(msg.fields)
            except Exception as exc:  # noqa: BLE001
                failures.add(exc, i, [(START_TS, 0, data)], partial(replay_once, once))
                sessions[dec.name] = dec.session(limits)
        for sess in sessions.values():
            pending = getattr(sess, "pending", None)
            if pending is not None:
                assert len(pending) <= limits.max_pending
    failures.check()


def replay_once(once: Callable[[bytes], None], seq: list[Packet]) -> None:
    for _ts, _lt, data in seq:
        once(data)


# -- reassembly property -----------------------------------------------------------------------

def _everything(data: bytes) -> tuple[list[bytes], int]:
    return [bytes(data)], len(data)


def _anything(data: bytes) -> bool:
    return True


@st.composite
def segmented(draw: st.DrawFn) -> tuple[int, bytes, list[tuple[int, bytes]]]:
    """A byte stream, its initial sequence number and its segments in arrival order.

    Arrival order is any permutation of a segmentation plus duplicates of its segments
    (retransmissions); nothing is lost, and the sequence space may wrap inside the stream.
    """
    data = draw(st.binary(min_size=1, max_size=600))
    isn = draw(st.one_of(st.integers(0, SEQ_MOD - 1), st.integers(SEQ_MOD - 700, SEQ_MOD - 1)))
    cuts: list[int] = []
    if len(data) > 1:
        cuts = sorted(draw(st.sets(st.integers(1, len(data) - 1), max_size=12)))
    bounds = [0, *cuts, len(data)]
    segs = list(itertools.pairwise(bounds))
    segs += draw(st.lists(st.sampled_from(segs), max_size=len(segs)))
    order = draw(st.permutations(segs))
    return isn, data, [((isn + a) % SEQ_MOD, data[a:b]) for a, b in order]


def deliver(isn: int, segments: list[tuple[int, bytes]]) -> tuple[bytes, Stream]:
    """Feed segments (after a SYN) and collect what a split that takes everything gets."""
    # Bounds a lossless reordering of this size never reaches: the property is about
    # ordering and duplicates, not about giving up on holes.
    stream = Stream(max_buffer=1 << 20, max_ooo=len(segments) + 1)
    stream.syn((isn - 1) % SEQ_MOD)
    out: list[bytes] = []
    for seq, chunk in segments:
        assert stream.add(seq, chunk) == []
        pdus, anomalies = stream.take(_everything, _anything)
        assert anomalies == []
        out += pdus
    return b"".join(out), stream


@settings(max_examples=500, deadline=None, database=None)   # no .hypothesis/ in the tree
@given(segmented())
def test_stream_delivers_exactly_the_original_bytes(
        case: tuple[int, bytes, list[tuple[int, bytes]]]) -> None:
    isn, data, segments = case
    got, stream = deliver(isn, segments)
    assert got == data
    assert not stream.ooo and stream.buf == b"" and stream.gaps == 0
    assert stream.next_seq == (isn + len(data)) % SEQ_MOD


# -- regressions found by this fuzz --------------------------------------------------------------

def _syn(sport: int, src: bytes) -> bytes:
    return encap(LINKTYPE_EN10MB, ipv4(src, bytes([10, 0, 1, 1]), 6,
                                       tcp(sport, 502, 1, 0, 0x02, b"")))


def test_evicted_flows_do_not_pile_up_within_a_window() -> None:
    cfg = fuzz_config()
    pipe = Pipeline(cfg)
    frames = [_syn(1024 + i % 60000, bytes([10, 0, i >> 16 & 0xFF, i >> 8 & 0xFF]))
              for i in range(25_000)]
    gc.collect()
    tracemalloc.start()
    try:
        for i, frame in enumerate(frames[:5_000]):         # fills the table: 64 flows
            pipe.feed(START_TS + i * 1e-4, LINKTYPE_EN10MB, frame)
        base = tracemalloc.get_traced_memory()[0]
        for i, frame in enumerate(frames[5_000:], 5_000):     # a scan, all in one 60 s window
            pipe.feed(START_TS + i * 1e-4, LINKTYPE_EN10MB, frame)
        growth = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(pipe.table.flows) <= cfg["limits"]["max_flows"]
    assert growth < MIB, f"{growth / MIB:.1f} MiB for 20 000 evicted flows"


def test_stream_keeps_the_longer_of_two_held_segments_at_one_seq() -> None:
    # Bytes 1..1 arrive early; the sender then retransmits from 1 with bytes 1..2 in one
    # segment (still ahead of the stream); finally byte 0 fills the hole.
    got, _stream = deliver(0, [(1, b"b"), (1, b"bc"), (0, b"a")])
    assert got == b"abc"


def test_mac_addresses_seen_are_bounded_by_max_assets() -> None:
    cfg = fuzz_config()
    pipe = Pipeline(cfg)

    def frame(i: int) -> bytes:
        src = bytes([10, 20, i >> 8 & 0xFF, i & 0xFF])
        eth = bytes.fromhex("0e8c00000001") + b"\x02" + i.to_bytes(5, "big") + b"\x08\x00"
        return eth + ipv4(src, bytes([10, 0, 1, 1]), 17, udp(40000, 502, mbap(1, 1, b"\x07")))

    frames = [frame(i) for i in range(12_000)]
    ts = START_TS
    gc.collect()
    base = 0
    try:
        for i, f in enumerate(frames):
            if i == 2_000:                  # the inventory and the flow table are full by now
                gc.collect()
                tracemalloc.start()
            if not i % 50:                  # a window every 50 hosts: nothing piles up in one
                ts += 60.0
                if i == 2_000:
                    base = tracemalloc.get_traced_memory()[0]
            pipe.feed(ts, LINKTYPE_EN10MB, f)
        pipe.tick(ts + 60.0)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(pipe.inventory.assets) <= cfg["limits"]["max_assets"]
    assert growth < MIB, f"{growth / MIB:.1f} MiB for 10 000 hosts past limits.max_assets"
