"""Packet sources: capture files and live interfaces behind one iterator.

Both yield ``(ts, linktype, frame)``. A live source also yields ``(now, TICK, b"")`` when the
link has been idle for a while, so windows close and the watchdog is fed on a quiet network.
Files go through libpcap too (pcap and pcapng, any byte order, micro- or nanosecond stamps).
"""
from __future__ import annotations

import logging
import os
import select
import struct
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import pcapy

from edge_agent.decode.link import SUPPORTED_LINKTYPES

log = logging.getLogger(__name__)

TICK = -1                     # linktype of an idle tick from a live source
# pcap_activate() status codes (pcap/pcap.h); pcapy-ng returns them instead of raising.
PCAP_ACTIVATE_ERRORS = {
    -1: "generic error", -4: "monitor mode not supported", -5: "no such device",
    -6: "no permission for promiscuous mode",
    -7: "cannot set the timestamp type",
    -8: "permission denied (run as root or with CAP_NET_RAW)", -9: "interface is not up",
}
BATCH = 256                   # packets per call into libpcap (amortises the C boundary)
_META = struct.Struct("=IIII")  # pcapy-ng next_batch record: sec, usec, offset, caplen

Packet = tuple[float, int, bytes]


class CaptureError(Exception):
    """A source that cannot be opened: a missing file, a bad format, no such interface."""


@dataclass
class CaptureStats:
    """Counters of the capture itself (not of what was decoded)."""

    received: int = 0            # packets handed to the pipeline
    dropped: int = 0             # libpcap ps_drop: lost for lack of buffer space
    if_dropped: int = 0          # libpcap ps_ifdrop: dropped by the interface or driver
    skipped_linktype: int = 0    # packets on a link type the agent does not decode
    truncated_files: int = 0     # files that ended inside a record

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class FileSource:
    """Reads capture files one after the other."""

    def __init__(self, paths: list[str], bpf: str = "") -> None:
        self.paths = list(paths)
        self.bpf = bpf
        self.stats = CaptureStats()
        self.total_bytes = 0
        self.done_bytes = 0          # bytes of finished files plus the read position
        self.stopped = False
        for path in self.paths:      # fail before anything starts, naming the file
            self._open(path)
            self.total_bytes += os.path.getsize(path)

    def _open(self, path: str) -> pcapy.Reader:
        try:
            reader = pcapy.open_offline(path)
        except pcapy.PcapError as exc:
            raise CaptureError(f"{path}: {exc}") from None
        if self.bpf:
            try:
                reader.setfilter(self.bpf)
            except pcapy.PcapError as exc:
                raise CaptureError(f"capture.bpf_filter: {exc}") from None
        return reader

    def stop(self) -> None:
        self.stopped = True

    def __iter__(self) -> Iterator[Packet]:
        finished = 0
        for path in self.paths:
            if self.stopped:
                return
            reader = self._open(path)
            linktype = reader.datalink()
            fd = reader.getfd()
            if linktype not in SUPPORTED_LINKTYPES:
                log.warning("%s: link type %d is not decoded; its packets are skipped",
                            path, linktype)
            read = 0
            try:
                while not self.stopped:
                    blob, meta = reader.next_batch(BATCH)
                    if not meta:
                        break
                    for sec, usec, off, caplen in _META.iter_unpack(meta):
                        read += 1
                        if linktype not in SUPPORTED_LINKTYPES:
                            self.stats.skipped_linktype += 1
                            continue
                        self.stats.received += 1
                        yield sec + usec * 1e-6, linktype, blob[off:off + caplen]
                    self.done_bytes = finished + _position(fd)
            except pcapy.PcapError as exc:
                # A batch that hits the cut-off end is lost whole: read the tail again
                # packet by packet so only the torn record is missing.
                self.stats.truncated_files += 1
                log.warning("%s: %s; the packets before it were read", path, exc)
                yield from self._salvage(path, linktype, read)
            finished += os.path.getsize(path)
            self.done_bytes = finished

    def _salvage(self, path: str, linktype: int, skip: int) -> Iterator[Packet]:
        reader = self._open(path)
        try:
            for _ in range(skip):
                reader.next()
            while not self.stopped:
                hdr, data = reader.next()
                if hdr is None:
                    return
                sec, usec = hdr.getts()
                if linktype in SUPPORTED_LINKTYPES:
                    self.stats.received += 1
                    yield sec + usec * 1e-6, linktype, data
                else:
                    self.stats.skipped_linktype += 1
        except pcapy.PcapError:
            return


def _position(fd: int) -> int:
    try:
        return os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return 0


class LiveSource:
    """Captures from an interface with libpcap, never blocking for more than ``tick`` s.

    libpcap's blocking read can sleep forever on an idle link, so the descriptor is put in
    non-blocking mode and waited on with ``select``; a stop request is seen within ``tick``.
    """

    def __init__(self, interface: str, bpf: str = "", snaplen: int = 65_535,
                 promiscuous: bool = True, buffer_mib: int = 8, tick: float = 0.5,
                 clock: Callable[[], float] = time.time) -> None:
        self.interface = interface
        self.tick = tick
        self.clock = clock
        self.stats = CaptureStats()
        self.stopped = False
        self.restart_requested = False
        self.settings = (bpf, snaplen, promiscuous, buffer_mib)
        self._open()

    def _open(self) -> None:
        interface = self.interface
        bpf, snaplen, promiscuous, buffer_mib = self.settings
        try:
            cap = pcapy.create(interface)
            cap.set_snaplen(snaplen)
            cap.set_promisc(1 if promiscuous else 0)
            cap.set_timeout(int(self.tick * 1000))
            cap.set_buffer_size(buffer_mib * 1024 * 1024)
            status = cap.activate()
            if status and status < 0:
                raise CaptureError(f"{interface}: "
                                   f"{PCAP_ACTIVATE_ERRORS.get(status, f'pcap_activate error {status}')}")
            if status and status > 0:
                log.warning("%s: pcap_activate warning %d (e.g. promiscuous mode not supported)",
                            interface, status)
            if bpf:
                cap.setfilter(bpf)
            cap.setnonblock(1)
        except pcapy.PcapError as exc:
            raise CaptureError(f"{interface}: {exc}") from None
        self.cap = cap
        self.linktype = cap.datalink()
        self.fd = cap.getfd()

    def stop(self) -> None:
        self.stopped = True

    def restart(self) -> None:
        """Reopen the capture at the next turn of the loop (a fleet command)."""
        self.restart_requested = True

    def update_stats(self) -> CaptureStats:
        try:
            # ps_recv counts packets before drops; ``received`` counts what was delivered.
            _recv, self.stats.dropped, self.stats.if_dropped = self.cap.stats()
        except pcapy.PcapError:
            pass
        return self.stats

    def __iter__(self) -> Iterator[Packet]:
        supported = self.linktype in SUPPORTED_LINKTYPES
        if not supported:
            log.warning("%s: link type %d is not decoded", self.interface, self.linktype)
        last = self.clock()
        while not self.stopped:
            if self.restart_requested:
                self.restart_requested = False
                self.cap.close()
                self._open()
                log.info("%s: capture reopened", self.interface)
            try:
                ready, _, _ = select.select([self.fd], [], [], self.tick)
            except InterruptedError:
                continue
            got = 0
            if ready:
                for pkt in self._batch(supported):
                    got += 1
                    yield pkt
            now = self.clock()
            if not got or now - last >= self.tick:
                last = now
                yield now, TICK, b""
        # What the kernel already holds was seen before the stop: deliver it, do not lose it.
        while True:
            batch = list(self._batch(supported))
            if not batch:
                return
            yield from batch

    def _batch(self, supported: bool) -> Iterator[Packet]:
        try:
            blob, meta = self.cap.next_batch(BATCH)
        except pcapy.PcapError as exc:
            raise CaptureError(f"{self.interface}: {exc}") from None
        for sec, usec, off, caplen in _META.iter_unpack(meta):
            if not supported:
                self.stats.skipped_linktype += 1
                continue
            self.stats.received += 1
            yield sec + usec * 1e-6, self.linktype, blob[off:off + caplen]
