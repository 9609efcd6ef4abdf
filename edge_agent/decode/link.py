"""Link, network and transport layers: from a captured frame to a transport payload.

Link types (tcpdump.org LINKTYPE_* registry): EN10MB (1), LINUX_SLL (113), LINUX_SLL2 (276),
NULL (0, host byte order family) and LOOP (108, network byte order family), RAW (101; 12 and 14
on some BSDs), IPV4 (228) and IPV6 (229). Ethernet may carry 802.1Q / 802.1ad (QinQ) tags.
IPv4 (RFC 791), IPv6 (RFC 8200, skipping hop-by-hop, routing and destination-options headers),
TCP (RFC 9293) and UDP (RFC 768). All multi-byte fields are big-endian.

Why not ``dpkt.ethernet.Ethernet`` on the hot path: dpkt builds the whole object tree eagerly
(Ethernet, IP, TCP, options), about 7 us a packet on a 2 GHz core, eight times the cost of the
few ``struct`` reads below. The decoded values are the same; ``tests/decode/test_link.py`` checks
every fixture capture against dpkt, and dpkt's constants name the numbers here. Fragmented IPv4
is counted, not reassembled.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from dpkt.ethernet import ETH_TYPE_8021AD, ETH_TYPE_8021Q, ETH_TYPE_IP, ETH_TYPE_IP6
from dpkt.ip import IP_PROTO_TCP, IP_PROTO_UDP

LINKTYPE_NULL = 0
LINKTYPE_EN10MB = 1
LINKTYPE_RAW = 101
LINKTYPE_RAW_BSD = (12, 14)
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
SUPPORTED_LINKTYPES = frozenset({LINKTYPE_NULL, LINKTYPE_EN10MB, LINKTYPE_RAW, *LINKTYPE_RAW_BSD,
                                 LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6,
                                 LINKTYPE_LINUX_SLL2})

ETH_TYPE_QINQ_OLD = 0x9100     # pre-802.1ad QinQ outer tag still sent by some switches
VLAN_TPIDS = frozenset({ETH_TYPE_8021Q, ETH_TYPE_8021AD, ETH_TYPE_QINQ_OLD})
IP6_EXT_HEADERS = frozenset({0, 43, 60})   # hop-by-hop, routing, destination options
IP6_FRAGMENT = 44
BSD_AF_INET6 = frozenset({10, 24, 28, 30})   # AF_INET6 differs per OS (Linux, BSDs, macOS)

_H = struct.Struct("!H")
_IP4 = struct.Struct("!BxHxxHxB2x4s4s")      # ver/ihl, total length, flags/frag, proto, src, dst
_IP6 = struct.Struct("!4xHBx16s16s")          # payload length, next header, src, dst
_TCP = struct.Struct("!HHIIBB")               # ports, seq, ack, data offset, flags
_UDP = struct.Struct("!HHH")


class L4(NamedTuple):
    """A frame reduced to what flows and decoders need (immutable, cheap to build)."""

    transport: str          # "tcp", "udp" or "ether" (an L2 protocol such as GOOSE)
    src: bytes              # IPv4/IPv6 address bytes, or the source MAC for "ether"
    dst: bytes
    sport: int              # for "ether": the ethertype in both port fields
    dport: int
    payload: bytes
    flags: int = 0          # TCP flags
    seq: int = 0
    ack: int = 0
    src_mac: bytes = b""
    dst_mac: bytes = b""
    vlan: int | None = None


class Dropped(NamedTuple):
    """Why a frame yields nothing for the flows (counted in the summary's health)."""

    reason: str


# Reasons that describe ordinary traffic we do not follow, not damage.
BENIGN_DROPS = frozenset({"ip.other_protocol", "link.llc", "ip.fragment"})


def parse(linktype: int, frame: bytes) -> L4 | Dropped:
    """Decode one captured frame down to its transport payload."""
    try:
        if linktype == LINKTYPE_EN10MB:
            return _ethernet(frame)
        if linktype == LINKTYPE_LINUX_SLL:
            return _by_ethertype(_H.unpack_from(frame, 14)[0], frame, 16, b"", b"", None)
        if linktype == LINKTYPE_LINUX_SLL2:
            return _by_ethertype(_H.unpack_from(frame, 0)[0], frame, 20, b"", b"", None)
        if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            family = int.from_bytes(frame[:4], "big" if linktype == LINKTYPE_LOOP else "little")
            if family > 0xFFFF:          # captured on a host of the other byte order
                family = int.from_bytes(frame[:4], "little" if linktype == LINKTYPE_LOOP else "big")
            if family == 2:
                return _ipv4(frame, 4, b"", b"", None)
            if family in BSD_AF_INET6:
                return _ipv6(frame, 4, b"", b"", None)
            return Dropped("link.unknown_family")
        if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6) or linktype in LINKTYPE_RAW_BSD:
            version = frame[0] >> 4
            if version == 4:
                return _ipv4(frame, 0, b"", b"", None)
            if version == 6:
                return _ipv6(frame, 0, b"", b"", None)
            return Dropped("ip.bad_version")
    except (struct.error, IndexError):
        return Dropped("link.truncated")
    return Dropped("link.unsupported_linktype")


def _ethernet(frame: bytes) -> L4 | Dropped:
    etype = _H.unpack_from(frame, 12)[0]
    off = 14
    vlan = None
    while etype in VLAN_TPIDS:
        tci, etype = struct.unpack_from("!HH", frame, off)
        if vlan is None:
            vlan = tci & 0x0FFF      # the outer tag identifies the network segment
        off += 4
    return _by_ethertype(etype, frame, off, frame[6:12], frame[0:6], vlan)


def _by_ethertype(etype: int, frame: bytes, off: int, smac: bytes, dmac: bytes,
                  vlan: int | None) -> L4 | Dropped:
    if etype == ETH_TYPE_IP:
        return _ipv4(frame, off, smac, dmac, vlan)
    if etype == ETH_TYPE_IP6:
        return _ipv6(frame, off, smac, dmac, vlan)
    if etype < 0x0600:               # 802.3 length field: LLC frames (STP, ISO CLNP, ...)
        return Dropped("link.llc")
    return L4("ether", smac, dmac, etype, etype, frame[off:], 0, 0, 0, smac, dmac, vlan)


def _ipv4(frame: bytes, off: int, smac: bytes, dmac: bytes, vlan: int | None) -> L4 | Dropped:
    vhl, total, frag, proto, src, dst = _IP4.unpack_from(frame, off)
    if vhl >> 4 != 4:
        return Dropped("ip.bad_version")
    ihl = (vhl & 0x0F) * 4
    if ihl < 20:
        return Dropped("ip.bad_header_length")
    if frag & 0x3FFF:                # more-fragments flag or a non-zero offset
        return Dropped("ip.fragment")
    # A zero total length is TCP segmentation offload on the capturing host: trust the frame.
    end = off + total if total >= ihl else len(frame)
    if end > len(frame):
        end = len(frame)             # snaplen cut: decode what was captured
    return _transport(proto, frame, off + ihl, end, src, dst, smac, dmac, vlan)


def _ipv6(frame: bytes, off: int, smac: bytes, dmac: bytes, vlan: int | None) -> L4 | Dropped:
    plen, nxt, src, dst = _IP6.unpack_from(frame, off)
    if frame[off] >> 4 != 6:
        return Dropped("ip.bad_version")
    pos = off + 40
    end = min(pos + plen, len(frame)) if plen else len(frame)
    hops = 0
    while nxt in IP6_EXT_HEADERS and hops < 8:
        nxt, hlen = frame[pos], frame[pos + 1]
        pos += (hlen + 1) * 8
        hops += 1
    if nxt == IP6_FRAGMENT:
        return Dropped("ip.fragment")
    return _transport(nxt, frame, pos, end, src, dst, smac, dmac, vlan)


def _transport(proto: int, frame: bytes, off: int, end: int, src: bytes, dst: bytes,
               smac: bytes, dmac: bytes, vlan: int | None) -> L4 | Dropped:
    if proto == IP_PROTO_TCP:
        sport, dport, seq, ack, doff, flags = _TCP.unpack_from(frame, off)
        hlen = (doff >> 4) * 4
        if hlen < 20:
            return Dropped("tcp.bad_header_length")
        return L4("tcp", src, dst, sport, dport, frame[off + hlen:end], flags, seq, ack,
                  smac, dmac, vlan)
    if proto == IP_PROTO_UDP:
        sport, dport, ulen = _UDP.unpack_from(frame, off)
        stop = off + ulen if 8 <= ulen and off + ulen <= end else end
        return L4("udp", src, dst, sport, dport, frame[off + 8:stop], 0, 0, 0, smac, dmac, vlan)
    return Dropped("ip.other_protocol")
