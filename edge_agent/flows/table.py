"""The flow table: packets to flows, flows to decoded protocol messages.

A flow is one conversation (TCP or UDP 5-tuple, or source MAC + destination MAC + ethertype for
protocols straight on Ethernet). The table picks the decoder by well-known port, or by probing
the first payloads on other ports, orients the flow (client = the side talking *to* the
well-known port; where ports cannot tell, the side that sent SYN), reassembles TCP per direction and feeds PDUs to the
decoder's per-flow session.

Bounds (``[limits]``): ``max_flows`` flows, least recently active evicted first; flows idle past
their timeout are swept once a second of packet time; each TCP direction holds at most
``max_stream_buffer`` bytes. Everything the table does is driven by the packet's own time.
"""
from __future__ import annotations

import hashlib
import socket
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from edge_agent.decode import Decoder, Limits, Message, Registry, Session
from edge_agent.decode.link import L4
from edge_agent.flows.stream import PROBE_BYTES, Stream

TCP_SYN, TCP_RST, TCP_FIN, TCP_ACK = 0x02, 0x04, 0x01, 0x10
PROBE_SEGMENTS = 4            # payloads probed on an unknown port before giving up on it
GIVE_UP_BYTES = 8192          # undecodable bytes after which a stream is no longer buffered
SWEEP_EVERY = 1.0             # seconds of packet time between idle sweeps


@dataclass(frozen=True)
class FlowLimits:
    max_flows: int = 10_000
    tcp_idle_timeout: float = 300.0
    udp_idle_timeout: float = 120.0
    max_stream_buffer: int = 131_072
    max_ooo_segments: int = 16
    max_history: int = 32
    proto: Limits = Limits()


class MessageEvent(NamedTuple):
    """A decoded message and where it was seen."""

    ts: float
    flow: "Flow"
    from_client: bool
    message: Message


def _addr(raw: bytes) -> str:
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ":".join(f"{b:02x}" for b in raw)


class Flow:
    """One conversation, oriented client -> server once that is known."""

    __slots__ = ("flow_id", "transport", "client", "cport", "server", "sport", "decoder",
                 "session", "proto", "streams", "first_ts", "last_ts", "pkts", "bytes",
                 "messages", "probes", "dead", "closed", "client_ip", "server_ip",
                 "w_pkts", "w_bytes", "w_msgs", "w_hist", "w_anomalies", "vlan",
                 "client_mac", "server_mac", "feature_slot", "w_fam", "requests")

    def __init__(self, transport: str, client: bytes, cport: int, server: bytes, sport: int,
                 ts: float) -> None:
        self.transport = transport
        self.client, self.cport, self.server, self.sport = client, cport, server, sport
        digest = hashlib.blake2b(b"%s|%s|%d|%s|%d|%f" % (transport.encode(), client, cport,
                                                        server, sport, ts), digest_size=8)
        self.flow_id = int.from_bytes(digest.digest(), "big") >> 1   # fits a signed int64
        self.client_ip, self.server_ip = _addr(client), _addr(server)
        self.decoder: Decoder | None = None
        self.session: Session | None = None
        self.proto = transport
        self.streams: tuple[Stream, Stream] | None = None
        self.first_ts = self.last_ts = ts
        self.pkts = [0, 0]
        self.bytes = [0, 0]
        self.messages = 0
        self.requests = [0, 0]          # requests sent by the client side, by the server side
        self.probes = 0
        self.dead = False           # stream not decodable: count packets, buffer nothing
        self.closed = False
        self.vlan: int | None = None
        self.client_mac = self.server_mac = b""
        self.feature_slot: tuple | None = None     # the feature tracker's per-window cache
        self.reset_window()

    def reset_window(self) -> None:
        self.w_pkts = 0
        self.w_bytes = 0
        self.w_msgs = 0
        self.w_hist: list[list] = []
        self.w_anomalies = 0
        self.w_fam: dict[str, int] = {}     # requests per function family (features fill it)

    def add_history(self, kind: str, bound: int) -> None:
        """Run-length history of message kinds in this window, oldest first, bounded."""
        hist = self.w_hist
        if hist and hist[-1][0] == kind:
            hist[-1][1] += 1
        elif len(hist) < bound:
            hist.append([kind, 1])
        else:
            hist[-1] = ["...", hist[-1][1] + 1] if hist[-1][0] == "..." else ["...", 1]


class FlowTable:
    def __init__(self, registry: Registry, limits: FlowLimits = FlowLimits()) -> None:
        self.registry = registry
        self.limits = limits
        self.flows: OrderedDict[tuple, Flow] = OrderedDict()
        self.touched: dict[int, Flow] = {}
        # Window counters of flows that ended while ``touched`` was full, per protocol:
        # [flows, packets, bytes, messages]. Keeps a connection storm from growing memory.
        self.folded: dict[str, list[int]] = {}
        self.new_flows: list[Flow] = []       # created since the caller last emptied it
        self.last_sweep = 0.0
        self.evicted_idle = 0
        self.evicted_full = 0
        self.created = 0

    # -- packets ---------------------------------------------------------------------------

    def process(self, p: L4, now: float) -> list[MessageEvent]:
        out: list[MessageEvent] = []
        if now - self.last_sweep >= SWEEP_EVERY:
            self.last_sweep = now
            self._sweep(now, out)
        a = (p.src, p.sport)
        b = (p.dst, p.dport)
        key = (p.transport, *a, *b) if a <= b else (p.transport, *b, *a)
        flow = self.flows.get(key)
        if flow is None or (p.flags & (TCP_SYN | TCP_ACK) == TCP_SYN and flow.closed):
            if flow is not None:
                self._finish(key, flow, now, out)
            flow = self._new_flow(key, p, now, out)
        else:
            self.flows.move_to_end(key)
        from_client = p.src == flow.client and p.sport == flow.cport
        d = 0 if from_client else 1
        size = len(p.payload)
        flow.last_ts = now
        flow.pkts[d] += 1
        flow.bytes[d] += size
        if not flow.w_pkts:
            self.touched[flow.flow_id] = flow
        flow.w_pkts += 1
        flow.w_bytes += size
        if p.transport == "tcp":
            if p.flags & (TCP_FIN | TCP_RST):
                flow.closed = True
            streams = flow.streams
            if streams is not None and p.flags & TCP_ACK and streams[1 - d].ooo:
                gap = streams[1 - d].acked(p.ack)
                if gap:
                    self._deliver(flow, streams[1 - d], not from_client, gap, now, out)
            if size and not flow.dead:
                self._tcp_payload(flow, p, from_client, now, out)
            elif p.flags & TCP_SYN:
                self._streams(flow)[d].syn(p.seq)
        elif size or p.transport == "ether":
            self._datagram(flow, p.payload, from_client, now, out)
        return out

    def _new_flow(self, key: tuple, p: L4, now: float, out: list[MessageEvent]) -> Flow:
        dec, src_is_server = self.registry.for_port(p.transport, p.sport, p.dport)
        if p.transport == "ether":
            dec, src_is_server = self.registry.ether.get(p.dport), False
        elif p.transport == "tcp" and p.flags & TCP_SYN and (
                dec is None or (p.sport in self.registry.tcp and p.dport in self.registry.tcp)):
            # Without a well-known port to go by (none, or both ends on one), SYN says who
            # the client is and SYN-ACK who the server is. A device that opens a connection
            # *from* port 502 still speaks as the server, as tshark and Zeek read it.
            src_is_server = bool(p.flags & TCP_ACK)
        if src_is_server:
            flow = Flow(p.transport, p.dst, p.dport, p.src, p.sport, now)
            flow.client_mac, flow.server_mac = p.dst_mac, p.src_mac
        else:
            flow = Flow(p.transport, p.src, p.sport, p.dst, p.dport, now)
            flow.client_mac, flow.server_mac = p.src_mac, p.dst_mac
        flow.vlan = p.vlan
        if dec is not None:
            self._attach(flow, dec)
        if len(self.flows) >= self.limits.max_flows:
            _, old = self.flows.popitem(last=False)
            self.evicted_full += 1
            self._close_flow(old, now, out)
        self.flows[key] = flow
        self.new_flows.append(flow)
        self.created += 1
        if p.transport == "tcp" and p.flags & TCP_SYN:
            self._streams(flow)[0 if not src_is_server else 1].syn(p.seq)
        return flow

    def _attach(self, flow: Flow, dec: Decoder) -> None:
        flow.decoder = dec
        flow.proto = dec.name
        flow.session = dec.session(self.limits.proto)

    def _streams(self, flow: Flow) -> tuple[Stream, Stream]:
        if flow.streams is None:
            lim = self.limits
            flow.streams = (Stream(lim.max_stream_buffer, lim.max_ooo_segments),
                            Stream(lim.max_stream_buffer, lim.max_ooo_segments))
        return flow.streams

    def _tcp_payload(self, flow: Flow, p: L4, from_client: bool, now: float,
                     out: list[MessageEvent]) -> None:
        if flow.decoder is None:
            if flow.probes >= PROBE_SEGMENTS:
                return
            flow.probes += 1
            dec = self.registry.probe("tcp", p.payload[:PROBE_BYTES])
            if dec is None:
                if flow.probes >= PROBE_SEGMENTS:
                    flow.dead = True
                    flow.streams = None
                return
            self._attach(flow, dec)
            flow.streams = None     # follow the stream from this segment on
        stream = self._streams(flow)[0 if from_client else 1]
        self._deliver(flow, stream, from_client, stream.add(p.seq, p.payload, now), now, out)

    def _deliver(self, flow: Flow, stream: Stream, from_client: bool, anomalies: list[str],
                 now: float, out: list[MessageEvent]) -> None:
        """Frame what the stream holds in order, decode it, and give up on junk streams."""
        dec = flow.decoder
        pdus, more = stream.take(dec.split, dec.probe)
        anomalies += more
        if anomalies:
            self._emit(flow, Message(flow.proto, {}, None, tuple(anomalies)), from_client,
                       now, out)
        for pdu in pdus:
            for msg in dec.safe_feed(flow.session, pdu, from_client, now):
                self._emit(flow, msg, from_client, now, out)
        if stream.skipped > GIVE_UP_BYTES and not flow.messages:
            flow.dead = True
            flow.streams = None
            self._emit(flow, Message(flow.proto, {}, None, ("tcp.undecodable_stream",)),
                       from_client, now, out)

    def _datagram(self, flow: Flow, payload: bytes, from_client: bool, now: float,
                  out: list[MessageEvent]) -> None:
        if flow.decoder is None:
            if flow.probes >= PROBE_SEGMENTS or flow.transport == "ether":
                return
            flow.probes += 1
            dec = self.registry.probe(flow.transport, payload[:PROBE_BYTES])
            if dec is None:
                return
            self._attach(flow, dec)
        for msg in flow.decoder.safe_feed(flow.session, payload, from_client, now):
            self._emit(flow, msg, from_client, now, out)

    def _emit(self, flow: Flow, msg: Message, from_client: bool, now: float,
              out: list[MessageEvent]) -> None:
        if msg.is_request:
            flow.requests[0 if from_client else 1] += 1
        if msg.kind:
            if flow.proto != msg.proto and (not flow.messages or flow.proto == flow.decoder.name):
                # A decoder may carry several protocols (ISO-on-TCP: S7comm or MMS); the
                # flow is named after what it actually carries, once that shows.
                flow.proto = msg.proto
            flow.messages += 1
            flow.w_msgs += 1
            flow.add_history(msg.kind, self.limits.max_history)
        if msg.anomalies:
            flow.w_anomalies += len(msg.anomalies)
        out.append(MessageEvent(now, flow, from_client, msg))

    # -- ending flows ----------------------------------------------------------------------

    def _sweep(self, now: float, out: list[MessageEvent]) -> None:
        lim = self.limits
        flows = self.flows
        while flows:
            key, flow = next(iter(flows.items()))
            idle = lim.tcp_idle_timeout if flow.transport == "tcp" else lim.udp_idle_timeout
            if now - flow.last_ts < idle:
                return
            del flows[key]
            self.evicted_idle += 1
            self._close_flow(flow, now, out)

    def _finish(self, key: tuple, flow: Flow, now: float, out: list[MessageEvent]) -> None:
        del self.flows[key]
        self._close_flow(flow, now, out)

    def _close_flow(self, flow: Flow, now: float, out: list[MessageEvent]) -> None:
        """Decode what waits behind holes, then let the session report what is pending."""
        if flow.streams is not None and flow.decoder is not None and not flow.dead:
            for d, stream in enumerate(flow.streams):
                if stream.buf and not stream.synced and not flow.messages:
                    # Bytes on the protocol's port that never framed as the protocol.
                    self._emit(flow, Message(flow.proto, {}, None, ("tcp.undecodable_stream",)),
                               d == 0, now, out)
                while stream.ooo and flow.streams is not None:
                    self._deliver(flow, stream, d == 0, stream.skip_hole(), now, out)
        if flow.session is not None:
            for msg in flow.session.close(now):
                self._emit(flow, msg, True, now, out)
        flow.streams = None
        if len(self.touched) > self.limits.max_flows and flow.flow_id in self.touched:
            del self.touched[flow.flow_id]
            agg = self.folded.setdefault(flow.proto, [0, 0, 0, 0])
            agg[0] += 1
            agg[1] += flow.w_pkts
            agg[2] += flow.w_bytes
            agg[3] += flow.w_msgs

    def close_all(self, now: float) -> list[MessageEvent]:
        out: list[MessageEvent] = []
        while self.flows:
            _, flow = self.flows.popitem(last=False)
            self._close_flow(flow, now, out)
        return out

    def drain_window(self) -> tuple[list[Flow], dict[str, list[int]]]:
        """Flows active since the last call, and the folded counters of those not kept.

        The caller resets the flows' window counters.
        """
        flows, folded = list(self.touched.values()), self.folded
        self.touched, self.folded = {}, {}
        return flows, folded
