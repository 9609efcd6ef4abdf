"""TCP stream reassembly for one direction of a flow (RFC 9293 sequence arithmetic).

Delivers in-order bytes to the decoder's ``split``. Copes with what mirror ports deliver:
retransmissions and overlaps (the first copy wins, as most stacks do), out-of-order segments
(held, bounded), and holes that never fill because the sensor lost a packet. A hole is given up
as soon as the peer acknowledges bytes past it (the receiver has them; we never will), or when
it has waited ``HOLE_TIMEOUT`` seconds, ``max_ooo_segments`` segments or ``max_buffer`` bytes;
the stream then reports ``tcp.gap`` and resynchronises on the next PDU the decoder's ``probe``
finds. Low-rate polling would otherwise hold every PDU behind one lost segment for minutes.
"""
from __future__ import annotations

from typing import Callable

SEQ_MOD = 1 << 32
SEQ_HALF = 1 << 31
RESYNC_SCAN = 2048          # bytes searched for a PDU start before the rest is dropped
PROBE_BYTES = 256           # what a probe sees: enough for any header, cheap to copy
HOLE_TIMEOUT = 2.0          # seconds a hole may wait for a late (reordered) segment


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in 32-bit sequence space."""
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_HALF else d


class Stream:
    """Bytes of one direction, in order, with at most ``max_buffer`` bytes held."""

    __slots__ = ("next_seq", "buf", "ooo", "ooo_bytes", "ooo_since", "synced", "max_buffer",
                 "max_ooo", "gaps", "retransmits", "skipped")

    def __init__(self, max_buffer: int, max_ooo: int) -> None:
        self.next_seq: int | None = None
        self.buf = b""
        self.ooo: dict[int, bytes] = {}
        self.ooo_bytes = 0
        self.ooo_since = 0.0
        self.synced = True
        self.max_buffer = max_buffer
        self.max_ooo = max_ooo
        self.gaps = 0
        self.retransmits = 0
        self.skipped = 0

    def syn(self, seq: int) -> None:
        self.next_seq = (seq + 1) % SEQ_MOD

    def add(self, seq: int, data: bytes, now: float = 0.0) -> list[str]:
        """Take a segment; return the names of anomalies it revealed."""
        if self.next_seq is None:
            if len(data) <= 1:
                return []    # a keep-alive probe (RFC 1122 4.2.3.6) is no place to start
            # Picked up mid-connection: the first bytes may be the middle of a PDU.
            self.next_seq = seq
            self.synced = False
        rel = seq_diff(seq, self.next_seq)
        if rel < 0:
            if rel + len(data) <= 0:
                self.retransmits += 1
                return []
            data = data[-rel:]
            rel = 0
        if rel > 0:
            if not self.ooo:
                self.ooo_since = now
            held = self.ooo.get(seq)
            if held is None or len(data) > len(held):
                # A longer retransmission of a held segment carries more: keep it.
                self.ooo[seq] = data
                self.ooo_bytes += len(data) - (len(held) if held is not None else 0)
            if (len(self.ooo) > self.max_ooo or self.ooo_bytes + len(self.buf) > self.max_buffer
                    or now - self.ooo_since > HOLE_TIMEOUT):
                return self.skip_hole()
            return []
        self._append(data)
        if self.ooo:
            self._drain()
        if len(self.buf) > self.max_buffer:
            # A PDU larger than any the decoder accepts, or junk: keep the tail only.
            self.skipped += len(self.buf)
            self.buf = b""
            self.synced = False
            return ["tcp.buffer_overflow"]
        return []

    def _append(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        self.next_seq = (self.next_seq + len(data)) % SEQ_MOD

    def _drain(self) -> None:
        while self.ooo:
            progressed = False
            for seq in list(self.ooo):
                rel = seq_diff(seq, self.next_seq)
                if rel > 0:
                    continue
                data = self.ooo.pop(seq)
                self.ooo_bytes -= len(data)
                if rel + len(data) > 0:
                    self._append(data[-rel:] if rel else data)
                progressed = True
            if not progressed:
                return

    def acked(self, ack: int) -> list[str]:
        """The peer acknowledged up to ``ack``: a hole below it will never be filled."""
        if self.ooo and self.next_seq is not None and seq_diff(ack, self.next_seq) > 0:
            return self.skip_hole()
        return []

    def skip_hole(self) -> list[str]:
        """Give up on the missing bytes: continue from the earliest held segment."""
        if not self.ooo:
            return []
        first = min(self.ooo, key=lambda s: seq_diff(s, self.next_seq))
        self.skipped += len(self.buf)
        self.buf = b""
        self.next_seq = first
        self.synced = False
        self.gaps += 1
        self._drain()
        return ["tcp.gap"]

    def take(self, split: Callable[[bytes], tuple[list[bytes], int]],
             probe: Callable[[bytes], bool]) -> tuple[list[bytes], list[str]]:
        """Complete PDUs from the head of the buffer, resynchronising when framing is lost.

        Reports ``tcp.resync`` once per call in which bytes had to be thrown away.
        """
        out: list[bytes] = []
        skipped = self.skipped
        while self.buf:
            if not self.synced and not self._resync(probe):
                break
            pdus, used = split(self.buf)
            if used < 0:
                self.synced = False
                self.buf = self.buf[1:]      # framing lost right here: look further on
                self.skipped += 1
                continue
            if used == 0:
                break
            out.extend(pdus)
            self.buf = self.buf[used:]
        return out, (["tcp.resync"] if self.skipped > skipped else [])

    def _resync(self, probe: Callable[[bytes], bool]) -> bool:
        buf = self.buf
        for i in range(min(len(buf), RESYNC_SCAN)):
            if probe(buf[i:i + PROBE_BYTES]):
                if i:
                    self.skipped += i
                    self.buf = buf[i:]
                self.synced = True
                return True
        if len(buf) > RESYNC_SCAN:
            self.skipped += len(buf) - 16
            self.buf = buf[-16:]         # a PDU header may start in the last bytes
        return False
