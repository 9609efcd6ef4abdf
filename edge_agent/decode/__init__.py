"""Application-protocol decoders and their registry.

A protocol is one module in this package that defines ``DECODER``, an instance of a
:class:`Decoder` subclass. :func:`discover` imports every module here and collects them, so
adding a protocol never edits a central table.

Decoders are sans-I/O: the flow table hands them bytes and the packet time, and they return
:class:`Message` values. Per-flow protocol state (transaction pairing, sequence numbers) lives in
the :class:`Session` a decoder creates for each flow.

Malformed input is data: a decoder may raise ``dpkt.NeedData``/``dpkt.UnpackError`` (or
``struct.error``/``IndexError``/``ValueError``) inside; :meth:`Decoder.safe_feed` turns any of them
into a ``<proto>.malformed`` anomaly so nothing escapes to the pipeline.
"""
from __future__ import annotations

import importlib
import pkgutil
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

import dpkt

# Exceptions a decoder may raise on hostile bytes; anything else is a programming error.
DECODE_ERRORS = (dpkt.NeedData, dpkt.UnpackError, struct.error, IndexError, ValueError,
                 KeyError, UnicodeDecodeError, OverflowError)


class Message(NamedTuple):
    """One decoded protocol message (a PDU), ready to become a per-message record.

    A NamedTuple rather than a frozen dataclass: as immutable, and three times cheaper to
    build, which counts at one or more messages per packet.
    """

    proto: str
    fields: dict[str, Any]
    is_request: bool | None = None
    anomalies: tuple[str, ...] = ()
    # Short name of what the message does ("read_holding_registers"), used for flow
    # histories and function mixes; empty for messages that carry no function.
    kind: str = ""
    # What the message reveals about its *sender's* identity, for the asset inventory, in
    # the vocabulary of IDENTITY_KEYS; None when it reveals nothing.
    identity: dict[str, Any] | None = None


# Identity attributes the inventory understands (ICSNPP's identity logs use the same ideas).
IDENTITY_KEYS = frozenset({
    "vendor", "vendor_id", "product", "product_code", "model", "order_number", "serial",
    "firmware", "hardware", "device_type", "name", "location", "description",
})


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-flow protocol limits, from ``[limits]`` in the configuration."""

    max_pending: int = 64          # unanswered requests remembered per flow
    max_pdu: int = 65_535          # largest PDU a TCP decoder will wait for


class Session:
    """Per-flow protocol state. ``from_client`` says which side sent the bytes."""

    def feed(self, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        raise NotImplementedError

    def close(self, now: float) -> list[Message]:
        """Called when the flow ends or is evicted; reports what is left pending."""
        return []


@dataclass
class Decoder:
    """A protocol: where to find it, how to frame it and how to decode it."""

    name: str
    tcp_ports: frozenset[int] = frozenset()
    udp_ports: frozenset[int] = frozenset()
    ethertypes: frozenset[int] = frozenset()
    # Lower runs first when several decoders claim a port or probe true on the same bytes.
    priority: int = 100
    extra: dict[str, Any] = field(default_factory=dict)

    def probe(self, data: bytes) -> bool:
        """Cheap structural check: could ``data`` start a PDU of this protocol?

        ``data`` holds at most the first 256 bytes of the candidate PDU (or datagram).
        """
        return False

    def split(self, data: bytes) -> tuple[list[bytes], int]:
        """Frame a TCP byte stream: complete PDUs and the number of bytes they used.

        Bytes after the last complete PDU are left for the next call. A decoder that finds
        bytes it cannot frame returns no PDUs and ``-1`` so the stream resynchronises.
        """
        return [bytes(data)], len(data)

    def session(self, limits: Limits) -> Session:
        raise NotImplementedError

    def safe_feed(self, sess: Session, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        try:
            return sess.feed(pdu, from_client, now)
        except DECODE_ERRORS:
            return [Message(self.name, {}, None, (f"{self.name}.malformed",))]


class Registry:
    """Decoders by port, ethertype and name, with probe order for unknown ports."""

    def __init__(self, decoders: Iterable[Decoder]) -> None:
        self.by_name: dict[str, Decoder] = {}
        self.tcp: dict[int, Decoder] = {}
        self.udp: dict[int, Decoder] = {}
        self.ether: dict[int, Decoder] = {}
        for dec in sorted(decoders, key=lambda d: (d.priority, d.name)):
            if dec.name in self.by_name:
                raise ValueError(f"two decoders named {dec.name!r}")
            self.by_name[dec.name] = dec
            for port in dec.tcp_ports:
                self.tcp.setdefault(port, dec)
            for port in dec.udp_ports:
                self.udp.setdefault(port, dec)
            for etype in dec.ethertypes:
                self.ether.setdefault(etype, dec)
        self.probe_order: tuple[Decoder, ...] = tuple(self.by_name.values())

    def for_port(self, transport: str, sport: int, dport: int) -> tuple[Decoder | None, bool]:
        """The decoder for a port pair and whether the *source* is the server side."""
        table = self.tcp if transport == "tcp" else self.udp
        dec = table.get(dport)
        if dec is not None:
            return dec, False
        dec = table.get(sport)
        if dec is not None:
            return dec, True
        return None, False

    def probe(self, transport: str, data: bytes) -> Decoder | None:
        for dec in self.probe_order:
            ports = dec.tcp_ports if transport == "tcp" else dec.udp_ports
            if ports and dec.probe(data):
                return dec
        return None

    def names(self) -> list[str]:
        return list(self.by_name)


def discover(enabled: Iterable[str] | None = None) -> Registry:
    """Import every decoder module in this package and register its ``DECODER``."""
    wanted = set(enabled) if enabled is not None else None
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "link":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        dec = getattr(module, "DECODER", None)
        if isinstance(dec, Decoder) and (wanted is None or dec.name in wanted):
            found.append(dec)
    return Registry(found)
