"""PROFINET on Ethernet: DCP (discovery and basic configuration) decoded, RT frames counted.

Spec: IEC 61158-6-10 (PROFINET IO application layer protocol): 4.2.2 / Table "FrameID" (the
FrameID ranges of RT_CLASS_3, RT_CLASS_2, RT_CLASS_1, alarms, DCP and PTCP), 4.3 DCP (4.3.1
DCP-PDUs: FrameID 0xFEFC Hello, 0xFEFD Get/Set, 0xFEFE Identify multicast request, 0xFEFF
Identify response; ServiceID, ServiceType, Xid, ResponseDelay, DCPDataLength; blocks of
Option, Suboption, DCPBlockLength, then BlockQualifier (Set requests) or BlockInfo (responses
and Hello) and the value, padded to an even length). Ethertype 0x8892, behind optional 802.1Q
tags. Every multi-byte field is big-endian. PNIO-CM (DCE/RPC over UDP) is
:mod:`edge_agent.decode.profinet_cm`.

DCP records (proto ``profinet_dcp``): ``frame_id, frame, service_id, service, service_type_id,
service_type, xid, response_delay`` (Identify requests) ``data_length, blocks`` [{``option,
suboption, block``} + ``qualifier``/``info``/``error``], and the values the blocks carry:
``mac, ip, subnet_mask, gateway, dns, type_of_station, station_name, vendor_id, vendor,
device_id, device_role, device_roles, device_options, alias_name, device_instance,
oem_vendor_id, oem_device_id, dhcp, signal, reset_mode, device_initiative``. A device's
Identify/Get response or Hello names it in ``Message.identity``. A Set request or its response
that renames a station, changes its IP or resets it to factory settings is kind
``dcp_set_name``, ``dcp_set_ip`` or ``dcp_factory_reset`` (these reconfigure a running plant);
other kinds are ``dcp_identify``, ``dcp_get``, ``dcp_set``, ``dcp_hello``.

RT records (proto ``profinet_rt``): one per frame, only ``frame_id`` and ``rt_class``, kind
``rt_cyclic`` (RT_CLASS_1/2/3 cyclic data), ``rt_alarm_high``/``rt_alarm_low``, ``ptcp`` or
``rt_other``: a mirror port sees thousands a second, so they are counted, not parsed.

Anomalies (prefixed ``profinet_dcp.``): ``invalid_length`` (DCPDataLength or a block length
disagreeing with the frame), ``unknown_service`` (ServiceID or ServiceType outside 4.3),
``truncated`` (a frame shorter than the DCP header).
"""
from __future__ import annotations

import socket
import struct
from typing import Any

import dpkt

from edge_agent.decode import Decoder, Limits, Message, Session


class DCPHeader(dpkt.Packet):
    """FrameID and DCP header (4.3.1); ``data`` holds the blocks.

    Documents the wire layout and builds test vectors; the hot path reads the same fields with
    ``struct``.
    """

    __hdr__ = (
        ("frame_id", "H", 0xFEFE),
        ("service_id", "B", 5),
        ("service_type", "B", 0),
        ("xid", "I", 0),
        ("response_delay", "H", 0),   # Identify request; reserved (0) elsewhere
        ("data_length", "H", 0),
    )


class DCPBlock(dpkt.Packet):
    """DCP block header (4.3.1.3); ``data`` is BlockQualifier/BlockInfo + value + padding."""

    __hdr__ = (
        ("option", "B", 2),
        ("suboption", "B", 2),
        ("length", "H", 0),
    )


ETH_TYPE_PROFINET = 0x8892        # IEC 61158-6-10 / IEEE registration
DCP_HEADER_LEN = 12               # FrameID + 10 octets of DCP header
# 61158-6-10 Table "FrameID": DCP frames
PN_FRAMES: dict[int, str] = {0xFEFC: "dcp_hello", 0xFEFD: "dcp_get_set",
                             0xFEFE: "dcp_identify_multicast_request",
                             0xFEFF: "dcp_identify_response",
                             0xFC01: "alarm_high", 0xFE01: "alarm_low"}
PN_ALARM_KINDS = {0xFC01: "rt_alarm_high", 0xFE01: "rt_alarm_low"}
# 4.3.1.3.1 ServiceID and 4.3.1.3.2 ServiceType
DCP_SERVICES: dict[int, str] = {3: "get", 4: "set", 5: "identify", 6: "hello"}
DCP_SERVICE_TYPES: dict[int, str] = {0: "request", 1: "response_success",
                                     5: "response_unsupported"}
DCP_RESPONSE_BIT = 0x01
# 4.3.1.3.4 Option / Suboption
DCP_BLOCKS: dict[tuple[int, int], str] = {
    (1, 1): "ip_mac_address", (1, 2): "ip_parameter", (1, 3): "ip_full_suite",
    (2, 1): "device_manufacturer_specific", (2, 2): "device_name_of_station",
    (2, 3): "device_id", (2, 4): "device_role", (2, 5): "device_options",
    (2, 6): "device_alias_name", (2, 7): "device_instance", (2, 8): "device_oem_device_id",
    (3, 12): "dhcp_host_name", (3, 43): "dhcp_vendor_specific",
    (3, 54): "dhcp_server_identifier", (3, 55): "dhcp_parameter_request_list",
    (3, 60): "dhcp_class_identifier", (3, 61): "dhcp_client_identifier",
    (3, 81): "dhcp_fqdn", (3, 97): "dhcp_uuid_client_identifier", (3, 255): "dhcp_control",
    (5, 1): "control_start_transaction", (5, 2): "control_end_transaction",
    (5, 3): "control_signal", (5, 4): "control_response",
    (5, 5): "control_reset_factory_settings", (5, 6): "control_reset_to_factory",
    (6, 1): "device_initiative", (255, 255): "all_selector",
}
DCP_CONTROL_RESPONSE = (5, 4)
# 4.3.1.3.4 BlockError of a Control/Response block
DCP_BLOCK_ERRORS: dict[int, str] = {0: "ok", 1: "option_unsupported",
                                    2: "suboption_unsupported", 3: "suboption_not_set",
                                    4: "resource_error", 5: "set_not_possible_local_reasons",
                                    6: "in_operation_set_not_possible"}
# DeviceRoleDetails bits
DCP_ROLES: tuple[tuple[int, str], ...] = ((0x01, "io_device"), (0x02, "io_controller"),
                                          (0x04, "io_multidevice"), (0x08, "pn_supervisor"))
# Set requests that reconfigure a running device, most drastic first.
DCP_SECURITY_KINDS: tuple[tuple[frozenset[tuple[int, int]], str], ...] = (
    (frozenset({(5, 5), (5, 6)}), "dcp_factory_reset"),
    (frozenset({(1, 2), (1, 3)}), "dcp_set_ip"),
    (frozenset({(2, 2)}), "dcp_set_name"),
)
# PROFINET vendor ids (PI manufacturer ids, as in GSDML DeviceIdentity/VendorID), only the
# ones checked against a vendor's own GSDML or device stack.
PN_VENDORS: dict[int, str] = {0x002A: "Siemens", 0x0493: "rt-labs"}
DCP_MAX_BLOCKS = 16               # blocks listed per record
DCP_MAX_OPTIONS = 32              # DeviceOptions pairs kept

A_LENGTH = "profinet_dcp.invalid_length"
A_UNKNOWN_SERVICE = "profinet_dcp.unknown_service"
A_TRUNCATED = "profinet_dcp.truncated"

_H = struct.Struct(">H")
_HH = struct.Struct(">HH")
_DCP = struct.Struct(">HBBIHH")
_BLOCK = struct.Struct(">BBH")

Fields = dict[str, Any]


def _rt_class(frame_id: int) -> str:
    """61158-6-10 Table "FrameID" ranges."""
    if 0x0100 <= frame_id <= 0x7FFF:
        return "rt_class_3"
    if 0x8000 <= frame_id <= 0xBFFF:
        return "rt_class_2"
    if 0xC000 <= frame_id <= 0xFBFF:
        return "rt_class_1"
    if frame_id in PN_ALARM_KINDS:
        return "alarm"
    if frame_id <= 0x00FF or 0xFF00 <= frame_id <= 0xFF7F:
        return "ptcp"
    return "other"


def _ip(b: bytes, off: int) -> str:
    return socket.inet_ntop(socket.AF_INET, b[off:off + 4])


def _text(b: bytes, start: int, stop: int) -> str:
    return b[start:stop].decode("latin-1")


def _value(b: bytes, opt: int, sub: int, start: int, stop: int, f: Fields,
           block: Fields) -> None:
    """The value of one block into the record (what a plant engineer looks for)."""
    n = stop - start
    key = (opt, sub)
    if key == (1, 1) and n >= 6:
        f["mac"] = ":".join(f"{x:02x}" for x in b[start:start + 6])
    elif key in ((1, 2), (1, 3)) and n >= 12:
        f["ip"], f["subnet_mask"], f["gateway"] = (_ip(b, start), _ip(b, start + 4),
                                                   _ip(b, start + 8))
        if key == (1, 3) and n >= 28:
            f["dns"] = [_ip(b, start + 12 + 4 * i) for i in range(4)]
    elif key == (2, 1):
        f["type_of_station"] = _text(b, start, stop)
    elif key == (2, 2):
        f["station_name"] = _text(b, start, stop)
    elif key == (2, 6):
        f["alias_name"] = _text(b, start, stop)
    elif key in ((2, 3), (2, 8)) and n >= 4:
        vendor, device = _HH.unpack_from(b, start)
        prefix = "oem_" if sub == 8 else ""
        f[prefix + "vendor_id"], f[prefix + "device_id"] = vendor, device
        if not prefix and vendor in PN_VENDORS:
            f["vendor"] = PN_VENDORS[vendor]
    elif key == (2, 4) and n >= 1:
        role = f["device_role"] = b[start]
        f["device_roles"] = [name for bit, name in DCP_ROLES if role & bit]
    elif key == (2, 5):
        f["device_options"] = [DCP_BLOCKS.get((b[i], b[i + 1]), "unknown")
                               for i in range(start, min(stop - 1, start + 2 * DCP_MAX_OPTIONS),
                                              2)]
    elif key == (2, 7) and n >= 2:
        f["device_instance"] = _H.unpack_from(b, start)[0]
    elif opt == 3:
        dhcp = f.setdefault("dhcp", {})
        if len(dhcp) < DCP_MAX_BLOCKS:
            dhcp[DCP_BLOCKS.get(key, f"dhcp_{sub}")] = b[start:min(stop, start + 64)].hex()
    elif key == DCP_CONTROL_RESPONSE and n >= 3:
        block["response_to"] = DCP_BLOCKS.get((b[start], b[start + 1]), "unknown")
        err = block["error_code"] = b[start + 2]
        block["error"] = DCP_BLOCK_ERRORS.get(err, "unknown")
    elif key == (5, 3) and n >= 2:
        f["signal"] = _H.unpack_from(b, start)[0]
    elif key == (6, 1) and n >= 2:
        f["device_initiative"] = _H.unpack_from(b, start)[0]


def _blocks(b: bytes, off: int, end: int, f: Fields, an: list[str], service: int,
            response: bool) -> list[tuple[int, int]]:
    """Walk the blocks; returns the (option, suboption) pairs seen (and answered)."""
    blocks: list[Fields] = []
    f["blocks"] = blocks
    seen: list[tuple[int, int]] = []
    get_request = service == 3 and not response
    # Responses and Hello carry BlockInfo; Set requests a BlockQualifier (4.3.1.3.4).
    prefix = "info" if response or service == 6 else "qualifier" if service == 4 else None
    while off < end:
        if get_request:
            if off + 2 > end:
                an.append(A_LENGTH)
                break
            opt, sub = b[off], b[off + 1]
            off += 2
            start = stop = off
        else:
            if off + 4 > end:
                an.append(A_LENGTH)
                break
            opt, sub, length = _BLOCK.unpack_from(b, off)
            start, stop = off + 4, off + 4 + length
            off = stop + (length & 1)             # padded to an even length
            if stop > end:
                an.append(A_LENGTH)
                stop = end
        key = (opt, sub)
        block: Fields = {"option": opt, "suboption": sub, "block": DCP_BLOCKS.get(key, "unknown")}
        if prefix and key != DCP_CONTROL_RESPONSE and not get_request and stop - start >= 2:
            block[prefix] = _H.unpack_from(b, start)[0]
            start += 2
        _value(b, opt, sub, start, stop, f, block)
        if key == (5, 5) or key == (5, 6):
            f["reset_mode"] = block.get("qualifier", 0)
        seen.append(key if key != DCP_CONTROL_RESPONSE or "response_to" not in block else
                    (b[start], b[start + 1]))
        if len(blocks) < DCP_MAX_BLOCKS:
            blocks.append(block)
    return seen


def _identity(f: Fields) -> dict[str, Any] | None:
    ident: dict[str, Any] = {}
    if f.get("station_name"):
        ident["name"] = f["station_name"]
    if "vendor_id" in f:
        ident["vendor_id"] = f["vendor_id"]
        ident["product_code"] = f"0x{f['device_id']:04x}"
        if "vendor" in f:
            ident["vendor"] = f["vendor"]
    if f.get("type_of_station"):
        ident["model"] = f["type_of_station"]
    if f.get("device_roles"):
        ident["device_type"] = f["device_roles"][0]
    return ident or None


class ProfinetSession(Session):
    """DCP and RT frames carry no state a decoder needs to keep between frames."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def feed(self, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        n = len(pdu)
        if n < 2:
            return [Message("profinet_dcp", {}, None, (A_TRUNCATED,), "dcp_truncated")]
        frame_id = _H.unpack_from(pdu)[0]
        if not 0xFEFC <= frame_id <= 0xFEFF:
            rt_class = _rt_class(frame_id)
            kind = ("rt_cyclic" if rt_class.startswith("rt_class") else
                    PN_ALARM_KINDS.get(frame_id) or ("ptcp" if rt_class == "ptcp" else "rt_other"))
            return [Message("profinet_rt", {"frame_id": frame_id, "rt_class": rt_class}, None,
                            (), kind)]
        return [self._dcp(pdu, frame_id)]

    def _dcp(self, pdu: bytes, frame_id: int) -> Message:
        f: Fields = {"frame_id": frame_id, "frame": PN_FRAMES[frame_id]}
        an: list[str] = []
        if len(pdu) < DCP_HEADER_LEN:
            return Message("profinet_dcp", f, None, (A_TRUNCATED,), "dcp_truncated")
        _, sid, stype, xid, delay, dlen = _DCP.unpack_from(pdu)
        service = DCP_SERVICES.get(sid)
        f.update(service_id=sid, service=service or "unknown", service_type_id=stype,
                 service_type=DCP_SERVICE_TYPES.get(stype, "unknown"), xid=xid)
        if service is None or stype not in DCP_SERVICE_TYPES:
            an.append(A_UNKNOWN_SERVICE)
        response = bool(stype & DCP_RESPONSE_BIT)
        if frame_id == 0xFEFE:
            f["response_delay"] = delay
        f["data_length"] = dlen
        end = DCP_HEADER_LEN + dlen
        if end > len(pdu):
            an.append(A_LENGTH)          # Ethernet padding may follow, never a shortfall
            end = len(pdu)
        seen = _blocks(pdu, DCP_HEADER_LEN, end, f, an, sid, response)
        kind = f"dcp_{service or 'unknown'}"
        if sid == 4:
            keys = set(seen)
            for wanted, name in DCP_SECURITY_KINDS:
                if keys & wanted:
                    kind = name
                    break
        identity = _identity(f) if (response and sid in (3, 5)) or sid == 6 else None
        anomalies = () if not an else tuple(dict.fromkeys(an))
        return Message("profinet_dcp", f, not response, anomalies, kind, identity)


class ProfinetDecoder(Decoder):
    """PROFINET RT and DCP on Ethertype 0x8892."""

    def probe(self, data: bytes) -> bool:
        if len(data) < DCP_HEADER_LEN:
            return False
        frame_id, sid, stype = _DCP.unpack_from(data)[:3]
        return 0xFEFC <= frame_id <= 0xFEFF and sid in DCP_SERVICES and stype in DCP_SERVICE_TYPES

    def session(self, limits: Limits) -> ProfinetSession:
        return ProfinetSession(limits)


DECODER = ProfinetDecoder(name="profinet", ethertypes=frozenset({ETH_TYPE_PROFINET}))
