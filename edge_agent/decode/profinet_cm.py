"""PROFINET IO Context Management (PNIO-CM): DCE/RPC connectionless over UDP.

Spec: IEC 61158-6-10 4.10 (PNIO-CM: the RPC interfaces of IO device, controller, supervisor and
parameter server, their operations Connect 0, Release 1, Read 2, Write 3, Control 4, Read
Implicit 5, the NDR request/response headers, PNIOStatus and the IODReadReqHeader /
IODWriteReqHeader blocks) on the DCE 1.1 RPC connectionless PDU (The Open Group C706, 12.5: the
80-octet header whose data representation label says the byte order of the header and the NDR
body; PNIO blocks themselves are big-endian). UDP port 34964 (the RPC endpoint mapper of a
PROFINET device); a device answers from, and later talks on, ephemeral ports, so other ports are
found by probe (RPC version 4 and a PNIO interface UUID).

Records (proto ``profinet_io_cm``): ``packet_type_code, packet_type, opnum, operation,
interface, seq_num, server_boot, fragment_num, byte_order, object_uuid, activity_uuid``,
requests ``args_maximum``, responses ``pnio_status`` ("0x00000000") and ``status`` ("ok" or
"error"); ``blocks`` (block type ids with names) and from a read/write header ``api, slot,
subslot, index, record_data_length``; a Connect request's ``station_name`` (the controller's
CMInitiatorStationName). A request and its response share the kind (the operation:
``connect``, ``read_implicit`` ...); a response with a non-zero PNIOStatus is
``<operation>_exception``. Responses name the device behind the object UUID (vendor id and
device id, 61158-6-10 "ObjectUUID") in ``Message.identity``; a Connect request names its
controller.

Anomalies (prefixed ``profinet_io_cm.``): ``truncated`` (shorter than the RPC header or its
NDR header), ``invalid_length`` (the RPC body length disagrees with the datagram),
``invalid_version`` (RPC version not 4), ``unknown_operation`` (an opnum the PNIO interfaces do
not define).
"""
from __future__ import annotations

import struct
import uuid
from functools import lru_cache
from typing import Any

import dpkt

from edge_agent.decode import Decoder, Limits, Message, Session
from edge_agent.decode.profinet import PN_VENDORS


class DCERPCHeader(dpkt.Packet):
    """DCE/RPC connectionless header (C706 12.5.1), big-endian data representation.

    Documents the wire layout and builds test vectors; the hot path reads the same fields with
    ``struct`` in the byte order the header declares.
    """

    __hdr__ = (
        ("rpc_vers", "B", 4),
        ("ptype", "B", 0),
        ("flags1", "B", 0x20),        # idempotent
        ("flags2", "B", 0),
        ("drep", "3s", b"\x00\x00\x00"),   # integer big-endian, ASCII, IEEE float
        ("serial_hi", "B", 0),
        ("object", "16s", b"\x00" * 16),
        ("if_id", "16s", b"\x00" * 16),
        ("act_id", "16s", b"\x00" * 16),
        ("server_boot", "I", 0),
        ("if_vers", "I", 1),
        ("seqnum", "I", 0),
        ("opnum", "H", 0),
        ("ihint", "H", 0xFFFF),
        ("ahint", "H", 0xFFFF),
        ("len", "H", 0),              # body length
        ("fragnum", "H", 0),
        ("auth_proto", "B", 0),
        ("serial_lo", "B", 0),
    )


PNIO_CM_PORT = 34964              # 61158-6-10: PNIO-CM / RPC endpoint mapper
RPC_HEADER_LEN = 80               # C706 12.5.1
RPC_VERSION = 4
RPC_LITTLE_ENDIAN = 0x10          # C706 14.1: drep[0] high nibble 1 = little-endian integers
# C706 12.5.3 packet types
RPC_PTYPES: dict[int, str] = {0: "request", 1: "ping", 2: "response", 3: "fault",
                              4: "working", 5: "nocall", 6: "reject", 7: "ack",
                              8: "cl_cancel", 9: "fack", 10: "cancel_ack"}
RPC_REQUEST, RPC_RESPONSE = 0, 2
# 61158-6-10 4.10.3: interface UUIDs DEA0000x-6C97-11D1-8271-00A02442DF7D, and the endpoint
# mapper of C706 Appendix O
PNIO_INTERFACES: dict[uuid.UUID, str] = {
    uuid.UUID("dea00001-6c97-11d1-8271-00a02442df7d"): "pnio_device",
    uuid.UUID("dea00002-6c97-11d1-8271-00a02442df7d"): "pnio_controller",
    uuid.UUID("dea00003-6c97-11d1-8271-00a02442df7d"): "pnio_supervisor",
    uuid.UUID("dea00004-6c97-11d1-8271-00a02442df7d"): "pnio_parameter_server",
    uuid.UUID("e1af8308-5d1f-11c9-91a4-08002b14a0fa"): "epm",
}
PNIO_OBJECT_PREFIX = b"\xde\xa0\x00\x00\x6c\x97\x11\xd1\x82\x71"   # ObjectUUID fixed part
PNIO_OPERATIONS: dict[int, str] = {0: "connect", 1: "release", 2: "read", 3: "write",
                                   4: "control", 5: "read_implicit"}
# 61158-6-10 5.2.1 BlockType (the ones CM exchanges most)
PNIO_BLOCKS: dict[int, str] = {
    0x0008: "iod_write_req_header", 0x0009: "iod_read_req_header",
    0x0101: "ar_block_req", 0x0102: "iocr_block_req", 0x0103: "alarm_cr_block_req",
    0x0104: "expected_submodule_block_req", 0x0110: "iod_control_req_prm_end",
    0x0112: "iox_control_req_application_ready", 0x0114: "release_block_req",
    0x8008: "iod_write_res_header", 0x8009: "iod_read_res_header", 0x8101: "ar_block_res",
    0x8102: "iocr_block_res", 0x8103: "alarm_cr_block_res", 0x8104: "module_diff_block",
    0x8110: "iod_control_res_prm_end", 0x8112: "iox_control_res_application_ready",
    0x8114: "release_block_res", 0x0020: "im0", 0x0030: "im0_filter_data_submodule",
    0x0031: "im0_filter_data_module", 0x0032: "im0_filter_data_device",
    0x0010: "diagnosis_data", 0x0400: "multiple_block_header",
    0x0240: "pd_interface_data_real", 0x020F: "pd_port_data_real",
}
PNIO_READ_WRITE_HEADERS = frozenset({0x0008, 0x0009, 0x8008, 0x8009})
PNIO_AR_BLOCK_REQ = 0x0101
PNIO_MAX_BLOCKS = 16

A_TRUNCATED = "profinet_io_cm.truncated"
A_LENGTH = "profinet_io_cm.invalid_length"
A_VERSION = "profinet_io_cm.invalid_version"
A_UNKNOWN_OPERATION = "profinet_io_cm.unknown_operation"

_RPC_TAIL = {True: struct.Struct("<IIIHHHHHBB"), False: struct.Struct(">IIIHHHHHBB")}
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}
_BLOCK = struct.Struct(">HH")
_RW_HEADER = struct.Struct(">H16sIHH2xHI")   # seq, AR UUID, API, slot, subslot, index, length
_AR_REQ = struct.Struct(">H16sH6s16sIHHH")   # type, AR UUID, key, MAC, object UUID, props...

Fields = dict[str, Any]


def _uuid(raw: bytes, little: bool) -> uuid.UUID:
    return uuid.UUID(bytes_le=raw) if little else uuid.UUID(bytes=raw)


@lru_cache(maxsize=1024)
def _uuid_text(raw: bytes, little: bool) -> str:
    """UUIDs repeat for the life of an AR: building uuid.UUID per datagram costs more than
    the rest of the decode."""
    return str(_uuid(raw, little))


# Interface UUIDs as they appear on the wire, in either byte order.
_IFACES_RAW: dict[bytes, str] = {**{k.bytes: v for k, v in PNIO_INTERFACES.items()},
                                 **{k.bytes_le: v for k, v in PNIO_INTERFACES.items()}}


def _blocks(b: bytes, off: int, end: int, f: Fields) -> None:
    """PNIO blocks (BlockType, BlockLength counting from after the length field)."""
    blocks: list[Fields] = []
    f["blocks"] = blocks
    while off + 6 <= end and len(blocks) < PNIO_MAX_BLOCKS:
        btype, blen = _BLOCK.unpack_from(b, off)
        blocks.append({"block_type": btype, "block": PNIO_BLOCKS.get(btype, "unknown")})
        if btype in PNIO_READ_WRITE_HEADERS and off + 6 + _RW_HEADER.size <= end:
            _, _, api, slot, subslot, index, length = _RW_HEADER.unpack_from(b, off + 6)
            f.update(api=api, slot=slot, subslot=subslot, index=index,
                     record_data_length=length)
        elif btype == PNIO_AR_BLOCK_REQ and off + 6 + _AR_REQ.size <= end:
            # ARBlockReq: ... CMInitiatorActivityTimeoutFactor, UDPRTPort, StationNameLength
            name_len = _AR_REQ.unpack_from(b, off + 6)[-1]
            start = off + 6 + _AR_REQ.size
            f["station_name"] = b[start:min(start + name_len, end)].decode("latin-1")
        if blen < 2:
            break
        off += 4 + blen


class ProfinetCMSession(Session):
    """PNIO-CM carries its context in every datagram: nothing is kept per flow."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def feed(self, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        n = len(pdu)
        if n < RPC_HEADER_LEN:
            return [Message("profinet_io_cm", {}, None, (A_TRUNCATED,), "truncated")]
        an: list[str] = []
        vers, ptype = pdu[0], pdu[1]
        little = bool(pdu[4] & RPC_LITTLE_ENDIAN)
        boot, _, seq, opnum, _, _, blen, frag, _, _ = _RPC_TAIL[little].unpack_from(pdu, 56)
        iface = _IFACES_RAW.get(pdu[24:40], "unknown")
        op = PNIO_OPERATIONS.get(opnum) if iface.startswith("pnio") else None
        f: Fields = {"packet_type_code": ptype, "packet_type": RPC_PTYPES.get(ptype, "unknown"),
                     "opnum": opnum, "operation": op or "unknown", "interface": iface,
                     "seq_num": seq, "server_boot": boot, "fragment_num": frag,
                     "byte_order": "little" if little else "big",
                     "object_uuid": _uuid_text(pdu[8:24], little),
                     "activity_uuid": _uuid_text(pdu[40:56], little)}
        if vers != RPC_VERSION:
            an.append(A_VERSION)
        if op is None and iface != "epm" and ptype in (RPC_REQUEST, RPC_RESPONSE):
            an.append(A_UNKNOWN_OPERATION)
        end = RPC_HEADER_LEN + blen
        if end != n:
            an.append(A_LENGTH)
            end = min(end, n)
        identity = None
        kind = op or f["packet_type"]
        if op is not None and ptype in (RPC_REQUEST, RPC_RESPONSE):
            u32 = _U32[little]
            off = RPC_HEADER_LEN
            if ptype == RPC_REQUEST:
                # NDR: ArgsMaximum, ArgsLength, MaximumCount, Offset, ActualCount
                if end - off < 20:
                    an.append(A_TRUNCATED)
                else:
                    f["args_maximum"] = u32.unpack_from(pdu, off)[0]
                    _blocks(pdu, off + 20, end, f)
            else:
                # NDR: PNIOStatus (big-endian octets), ArgsLength, MaximumCount, Offset, Actual
                if end - off < 20:
                    an.append(A_TRUNCATED)
                else:
                    status = int.from_bytes(pdu[off:off + 4], "big")
                    f["pnio_status"] = f"0x{status:08x}"
                    f["status"] = "ok" if status == 0 else "error"
                    if status:
                        kind = f"{op}_exception"
                    _blocks(pdu, off + 20, end, f)
            raw_obj = pdu[8:24]
            if little:      # back to RFC 4122 octet order: the first three fields swap
                raw_obj = raw_obj[3::-1] + raw_obj[5:3:-1] + raw_obj[7:5:-1] + raw_obj[8:]
            if ptype == RPC_RESPONSE and raw_obj[:10] == PNIO_OBJECT_PREFIX:
                # ObjectUUID node field: instance, device id, vendor id of the device
                device, vendor = struct.unpack_from(">HH", raw_obj, 12)
                identity = {"vendor_id": vendor, "product_code": f"0x{device:04x}"}
                if vendor in PN_VENDORS:
                    identity["vendor"] = PN_VENDORS[vendor]
            elif ptype == RPC_REQUEST and f.get("station_name"):
                identity = {"name": f["station_name"], "device_type": "io_controller"}
        is_request = True if ptype == RPC_REQUEST else False if ptype == RPC_RESPONSE else None
        anomalies = () if not an else tuple(dict.fromkeys(an))
        return [Message("profinet_io_cm", f, is_request, anomalies, kind, identity)]


class ProfinetCMDecoder(Decoder):
    """PNIO-CM over UDP."""

    def probe(self, data: bytes) -> bool:
        if len(data) < RPC_HEADER_LEN or data[0] != RPC_VERSION or data[1] > 10:
            return False
        iface = _IFACES_RAW.get(bytes(data[24:40]))
        return iface is not None and iface != "epm"

    def session(self, limits: Limits) -> ProfinetCMSession:
        return ProfinetCMSession(limits)


DECODER = ProfinetCMDecoder(name="profinet_io_cm", udp_ports=frozenset({PNIO_CM_PORT}))
