"""Link/network/transport parsing, checked byte by byte and against dpkt on real captures."""
from __future__ import annotations

import struct

import dpkt
import pcapy
import pytest

from edge_agent.decode import link
from tests.conftest import fixture_pcaps

MAC_A = bytes.fromhex("001122334455")
MAC_B = bytes.fromhex("66778899aabb")


def ipv4(payload: bytes, proto: int = 6, frag: int = 0) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, 64, proto, 0,
                      bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return hdr + payload


def tcp(sport: int, dport: int, payload: bytes, seq: int = 1000, flags: int = 0x18) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 8192, 0, 0) + payload


MODBUS = bytes.fromhex("000100000006" "01" "03" "0000" "000a")   # read holding registers


def test_ethernet_ipv4_tcp() -> None:
    frame = MAC_B + MAC_A + b"\x08\x00" + ipv4(tcp(40000, 502, MODBUS))
    p = link.parse(link.LINKTYPE_EN10MB, frame)
    assert p.transport == "tcp" and (p.sport, p.dport) == (40000, 502)
    assert p.src == bytes([10, 0, 0, 1]) and p.payload == MODBUS
    assert p.src_mac == MAC_A and p.dst_mac == MAC_B and p.vlan is None


def test_qinq_outer_vlan_kept() -> None:
    # 802.1ad outer tag (VLAN 100) then 802.1Q inner tag (VLAN 7), then IPv4.
    tags = b"\x88\xa8" + struct.pack("!H", 100) + b"\x81\x00" + struct.pack("!H", 7) + b"\x08\x00"
    p = link.parse(link.LINKTYPE_EN10MB, MAC_B + MAC_A + tags + ipv4(tcp(1, 502, MODBUS)))
    assert p.vlan == 100 and p.payload == MODBUS


def test_ipv6_with_extension_header_and_udp() -> None:
    udp = struct.pack("!HHHH", 20000, 20000, 8 + 4, 0) + b"\x05\x64\x05\xc0"
    hop = bytes([17, 0]) + bytes(6)                       # hop-by-hop, next = UDP
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(hop) + len(udp), 0, 64,
                      bytes(15) + b"\x01", bytes(15) + b"\x02") + hop + udp
    p = link.parse(link.LINKTYPE_EN10MB, MAC_B + MAC_A + b"\x86\xdd" + ip6)
    assert p.transport == "udp" and p.dport == 20000 and p.payload == b"\x05\x64\x05\xc0"
    assert len(p.src) == 16


def test_sll_sll2_null_loop_raw() -> None:
    ip = ipv4(tcp(5, 102, b"\x03\x00\x00\x07\x02\xf0\x80"))
    sll = struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", 0x0800) + ip
    sll2 = struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, MAC_A + b"\0\0") + ip
    for linktype, frame in [(link.LINKTYPE_LINUX_SLL, sll), (link.LINKTYPE_LINUX_SLL2, sll2),
                            (link.LINKTYPE_NULL, struct.pack("<I", 2) + ip),
                            (link.LINKTYPE_NULL, struct.pack(">I", 2) + ip),
                            (link.LINKTYPE_LOOP, struct.pack(">I", 2) + ip),
                            (link.LINKTYPE_RAW, ip), (link.LINKTYPE_IPV4, ip)]:
        p = link.parse(linktype, frame)
        assert isinstance(p, link.L4), (linktype, p)
        assert p.dport == 102 and p.payload.startswith(b"\x03\x00"), linktype


def test_l2_protocol_is_kept_for_ethertype_decoders() -> None:
    goose = b"\x00\x01\x00\x10" + bytes(12)
    p = link.parse(link.LINKTYPE_EN10MB, MAC_B + MAC_A + b"\x88\xb8" + goose)
    assert p.transport == "ether" and p.dport == 0x88B8 and p.payload == goose


@pytest.mark.parametrize("frame,reason", [
    (MAC_B + MAC_A + b"\x08\x00" + ipv4(tcp(1, 2, b"x"), frag=0x2000), "ip.fragment"),   # MF set
    (MAC_B + MAC_A + b"\x08\x00" + ipv4(tcp(1, 2, b"x"), frag=0x0010), "ip.fragment"),   # offset
    (MAC_B + MAC_A + b"\x08\x00" + ipv4(bytes(8), proto=1), "ip.other_protocol"),        # ICMP
    (MAC_B + MAC_A + b"\x08\x00" + b"\x45\x00", "link.truncated"),
    (MAC_B + MAC_A + b"\x08\x00" + b"\x65" + bytes(30), "ip.bad_version"),
    (MAC_B + MAC_A + b"\x00\x26" + bytes(38), "link.llc"),                               # 802.3
    (MAC_B[:3], "link.truncated"),
])
def test_drops_are_named(frame: bytes, reason: str) -> None:
    assert link.parse(link.LINKTYPE_EN10MB, frame) == link.Dropped(reason)


def test_unknown_linktype_is_named_not_raised() -> None:
    assert link.parse(147, b"\x00" * 40) == link.Dropped("link.unsupported_linktype")


def _dpkt_view(linktype: int, frame: bytes) -> tuple | None:
    """The same fields through dpkt's own classes, or None where dpkt stops short."""
    try:
        if linktype == link.LINKTYPE_EN10MB:
            pkt = dpkt.ethernet.Ethernet(frame).data
        elif linktype == link.LINKTYPE_LINUX_SLL:
            pkt = dpkt.sll.SLL(frame).data
        elif linktype == link.LINKTYPE_NULL:
            pkt = dpkt.loopback.Loopback(frame).data
        elif linktype == link.LINKTYPE_IPV4:
            pkt = dpkt.ip.IP(frame)
        else:
            return None
    except (dpkt.UnpackError, struct.error):
        return None
    if not isinstance(pkt, (dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(pkt.data, (dpkt.tcp.TCP, dpkt.udp.UDP)):
        return None
    if isinstance(pkt, dpkt.ip.IP) and (pkt.mf or pkt.offset):
        return None
    seg = pkt.data
    return (pkt.src, pkt.dst, seg.sport, seg.dport, bytes(seg.data))


@pytest.mark.parametrize("path", fixture_pcaps(), ids=lambda p: p.name)
def test_agrees_with_dpkt_on_fixture(path) -> None:
    reader = pcapy.open_offline(str(path))
    linktype = reader.datalink()
    compared = 0
    while True:
        hdr, frame = reader.next()
        if hdr is None:
            break
        want = _dpkt_view(linktype, frame)
        got = link.parse(linktype, frame)
        if want is None:
            continue
        assert isinstance(got, link.L4), (path.name, got)
        assert (got.src, got.dst, got.sport, got.dport, got.payload) == want
        compared += 1
    if linktype in (link.LINKTYPE_EN10MB, link.LINKTYPE_LINUX_SLL, link.LINKTYPE_NULL,
                    link.LINKTYPE_IPV4) and "goose" not in str(path) and "profinet" not in str(path):
        assert compared, f"{path.name}: nothing compared"
