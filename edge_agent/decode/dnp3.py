"""DNP3: data link framing and CRCs, transport reassembly, application layer, request pairing.

Spec: IEEE Std 1815-2012 (DNP3): clause 9 (data link layer: the frame of start octets 0x05 0x64,
length, control, destination, source and header CRC, then user data in blocks of at most 16
octets each followed by its CRC; primary and secondary link function codes), clause 8
(transport function: FIN/FIR/sequence header, segment reassembly), clause 4 (application
layer: application control, function codes, internal indications, object headers) and
Annex A (object library, in :mod:`edge_agent.decode.dnp3_objects`). Link frames ride straight
on TCP or UDP, port 20000 (IANA; the standard's IP networking annex). Every multi-byte field is
little-endian.

Records: one per data link frame. ``src, dst, link_func_code, link_func, dir, prm`` and
``fcb, fcv`` (primary frames) or ``dfc`` (secondary) come from the link header; frames with
user data add ``transport_fir, transport_fin, transport_seq``. The frame that completes an
application fragment adds ``func_code, func, seq, fir, fin, con, uns, unsolicited`` and
``objects`` (group, variation, name, qualifier, range_start/range_stop or count, points);
responses add ``iin`` (IIN1 << 8 | IIN2, as Zeek logs it) and ``iin_flags`` (Suricata's
names). A transport segment that does not complete a fragment gives a link-level record with
no ``func_code`` and no ``kind``, so lost segments stay visible without counting as messages.
Link-only frames (reset link states, request link status, link status, ack ...) carry their
link function as ``kind``. Responses to a remembered request (paired by master, outstation
and application sequence number) add ``request_func_code, request_func`` and take the
request's function as ``kind`` ("select"), with ``_exception`` appended when IIN2 says the
request was refused (no such function, unknown object, parameter error).

Anomalies (prefixed ``dnp3.``): ``bad_crc`` (header or data block; the frame is still
decoded), ``invalid_start``, ``invalid_length`` (link length below 5, user data where the link
function carries none or none where it must, a frame cut short, an application header too
short), ``unknown_link_function``, ``transport_sequence`` (a segment without a preceding FIR,
out of sequence or repeated, a FIR while a fragment was still open), ``fragment_too_large``
(over 2048 octets), ``unknown_function``, ``unknown_object``, ``truncated_object``,
``invalid_qualifier``, ``unmatched_response`` (a solicited response, first fragment, whose
request was not seen), ``too_many_pending``.
"""
from __future__ import annotations

import array
import struct
from typing import Any

import dpkt

from edge_agent.decode import Decoder, Limits, Message, Session
from edge_agent.decode.dnp3_objects import parse_objects


class DNP3Link(dpkt.Packet):
    """Data link header (clause 9). The CRC covers the 8 octets before it.

    Documents the wire layout and builds test vectors; the hot path reads the same fields with
    ``struct``.
    """

    __byte_order__ = "<"
    __hdr__ = (
        ("start", "2s", b"\x05\x64"),
        ("length", "B", 5),       # control + addresses + user data octets, CRCs excluded
        ("ctrl", "B", 0),         # DIR, PRM, FCB/-, FCV/DFC, function code
        ("dst", "H", 0),
        ("src", "H", 0),
        ("crc", "H", 0),
    )


class DNP3AppHeader(dpkt.Packet):
    """Application request header (clause 4): application control and function code."""

    __byte_order__ = "<"
    __hdr__ = (
        ("ac", "B", 0xC0),        # FIR, FIN, CON, UNS, SEQ (4 bits)
        ("func", "B", 1),
    )


class DNP3AppResponseHeader(dpkt.Packet):
    """Application response header: request header plus the internal indications."""

    __byte_order__ = "<"
    __hdr__ = (
        ("ac", "B", 0xC0),
        ("func", "B", 129),
        ("iin1", "B", 0),
        ("iin2", "B", 0),
    )


class DNP3ObjectHeader(dpkt.Packet):
    """Object header (clause 4); the range field that follows depends on the qualifier."""

    __byte_order__ = "<"
    __hdr__ = (
        ("group", "B", 0),
        ("variation", "B", 0),
        ("qualifier", "B", 0),    # reserved bit, object prefix code (3), range specifier (4)
    )


class DNP3CROB(dpkt.Packet):
    """Control relay output block, g12v1 (Annex A)."""

    __byte_order__ = "<"
    __hdr__ = (
        ("control_code", "B", 0),
        ("count", "B", 1),
        ("on_time", "I", 0),
        ("off_time", "I", 0),
        ("status", "B", 0),
    )


DNP3_PORT = 20000              # IANA registered port, TCP and UDP (IP networking annex)
DNP3_START = b"\x05\x64"       # clause 9: start octets
DNP3_HEADER_LEN = 10           # start, length, control, destination, source, CRC
DNP3_MIN_LENGTH = 5            # clause 9: length counts control and both addresses at least
DNP3_BLOCK = 16                # clause 9: user data octets per CRC block
DNP3_CRC_POLY = 0xA6BC         # clause 9: 0x3D65 reflected, initial 0, result complemented
DNP3_MAX_FRAGMENT = 2048       # clause 4: largest application fragment we reassemble
DNP3_MAX_ASSEMBLIES = 4        # fragments in progress per flow (per direction and address pair)
# A request older than this is no longer expected to be answered (masters time out and retry
# within seconds; clause 5 leaves the value to the implementation).
DNP3_RESPONSE_TIMEOUT = 60.0

DNP3_CTL_DIR, DNP3_CTL_PRM, DNP3_CTL_FCB, DNP3_CTL_FCV = 0x80, 0x40, 0x20, 0x10
DNP3_TH_FIN, DNP3_TH_FIR, DNP3_TH_SEQ = 0x80, 0x40, 0x3F      # clause 8 transport header
DNP3_AC_FIR, DNP3_AC_FIN, DNP3_AC_CON, DNP3_AC_UNS, DNP3_AC_SEQ = 0x80, 0x40, 0x20, 0x10, 0x0F

# Clause 9 link function codes, primary (PRM=1) and secondary (PRM=0) frames.
DNP3_LINK_PRIMARY: dict[int, str] = {
    0: "reset_link_states", 1: "reset_user_process", 2: "test_link_states",
    3: "confirmed_user_data", 4: "unconfirmed_user_data", 9: "request_link_status",
}
DNP3_LINK_SECONDARY: dict[int, str] = {
    0: "ack", 1: "nack", 11: "link_status", 14: "link_not_functioning", 15: "not_supported",
}
DNP3_LINK_USER_DATA = frozenset({3, 4})     # primary functions that carry user data

# Clause 4 application function codes, named as Zeek's DNP3 analyzer logs them (lower case);
# 33 is IEEE 1815-2012's authentication request without acknowledgement.
DNP3_FUNCS: dict[int, str] = {
    0: "confirm", 1: "read", 2: "write", 3: "select", 4: "operate", 5: "direct_operate",
    6: "direct_operate_nr", 7: "immed_freeze", 8: "immed_freeze_nr", 9: "freeze_clear",
    10: "freeze_clear_nr", 11: "freeze_at_time", 12: "freeze_at_time_nr", 13: "cold_restart",
    14: "warm_restart", 15: "initialize_data", 16: "initialize_appl", 17: "start_appl",
    18: "stop_appl", 19: "save_config", 20: "enable_unsolicited", 21: "disable_unsolicited",
    22: "assign_class", 23: "delay_measure", 24: "record_current_time", 25: "open_file",
    26: "close_file", 27: "delete_file", 28: "get_file_info", 29: "authenticate_file",
    30: "abort_file", 31: "activate_config", 32: "authenticate_req",
    33: "authenticate_req_nr", 129: "response", 130: "unsolicited_response",
    131: "authenticate_resp",
}
DNP3_RESPONSE, DNP3_UNSOLICITED, DNP3_AUTH_RESPONSE = 129, 130, 131
DNP3_RESPONSES = frozenset({129, 130, 131})
# Requests an outstation does not answer (clause 4: the "no ack" forms and confirm).
DNP3_NO_RESPONSE = frozenset({0, 6, 8, 10, 12, 33})

# Clause 4 internal indications: IIN1 bits 0-7, then IIN2 bits 0-7 (Suricata's names).
DNP3_IIN1 = ("all_stations", "class_1_events", "class_2_events", "class_3_events",
             "need_time", "local_control", "device_trouble", "device_restart")
DNP3_IIN2 = ("no_func_code_support", "object_unknown", "parameter_error",
             "event_buffer_overflow", "already_executing", "config_corrupt", "reserved_2",
             "reserved_1")
# IIN2 no_func_code_support, object_unknown, parameter_error: the request was refused.
DNP3_IIN2_ERRORS = 0x07
_IIN1 = tuple(tuple(n for i, n in enumerate(DNP3_IIN1) if b >> i & 1) for b in range(256))
_IIN2 = tuple(tuple(n for i, n in enumerate(DNP3_IIN2) if b >> i & 1) for b in range(256))

Fields = dict[str, Any]


def _control(ctrl: int) -> tuple[Fields, str, bool, bool]:
    """Link control octet: its fields, function name, PRM, and whether user data follows."""
    lfc = ctrl & 0x0F
    prm = bool(ctrl & DNP3_CTL_PRM)
    lname = (DNP3_LINK_PRIMARY if prm else DNP3_LINK_SECONDARY).get(lfc, "unknown")
    f: Fields = {"link_func_code": lfc, "link_func": lname, "dir": bool(ctrl & DNP3_CTL_DIR),
                 "prm": prm}
    if prm:
        f["fcb"] = bool(ctrl & DNP3_CTL_FCB)
        f["fcv"] = bool(ctrl & DNP3_CTL_FCV)
    else:
        f["dfc"] = bool(ctrl & DNP3_CTL_FCV)
    return f, lname, prm, prm and lfc in DNP3_LINK_USER_DATA


# Decoded once per octet value rather than once per frame.
_CONTROL = tuple(_control(ctrl) for ctrl in range(256))
_APP_CONTROL = tuple({"seq": ac & DNP3_AC_SEQ, "fir": bool(ac & DNP3_AC_FIR),
                      "fin": bool(ac & DNP3_AC_FIN), "con": bool(ac & DNP3_AC_CON),
                      "uns": bool(ac & DNP3_AC_UNS)} for ac in range(256))

A_CRC = "dnp3.bad_crc"
A_START = "dnp3.invalid_start"
A_LENGTH = "dnp3.invalid_length"
A_LINK_FUNCTION = "dnp3.unknown_link_function"
A_TRANSPORT = "dnp3.transport_sequence"
A_FRAGMENT = "dnp3.fragment_too_large"
A_UNKNOWN_FUNCTION = "dnp3.unknown_function"
A_UNMATCHED = "dnp3.unmatched_response"
A_TOO_MANY_PENDING = "dnp3.too_many_pending"

_HEAD = struct.Struct("<2xBBHHH")          # length, control, destination, source, CRC
_CRC16 = struct.Struct("<H").unpack_from


def _crc_tables() -> tuple[tuple[int, ...], array.array]:
    """Per-octet table, and per-16-bit-word table (two octet steps at once, 128 KiB)."""
    octet = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = (c >> 1) ^ DNP3_CRC_POLY if c & 1 else c >> 1
        octet.append(c)
    word = array.array("H", bytes(2 * 65536))
    for x in range(65536):
        c = (x >> 8) ^ octet[x & 0xFF]
        word[x] = (c >> 8) ^ octet[c & 0xFF]
    return tuple(octet), word


_CRC_OCTET, _CRC_WORD = _crc_tables()
_WORDS = tuple(struct.Struct(f"<{n}H").unpack_from for n in range(DNP3_BLOCK // 2 + 1))


def dnp3_crc(data: bytes, start: int = 0, stop: int | None = None) -> int:
    """CRC-16/DNP of ``data[start:stop]`` (clause 9), as the integer sent little-endian."""
    if stop is None:
        stop = len(data)
    c = 0
    n = (stop - start) >> 1
    table = _CRC_WORD
    # Two octets per step: a 16-octet block costs 8 look-ups instead of 16.
    words = (_WORDS[n] if n < len(_WORDS) else struct.Struct(f"<{n}H").unpack_from)(data, start)
    for w in words:
        c = table[c ^ w]
    if (stop - start) & 1:
        c = (c >> 8) ^ _CRC_OCTET[(c ^ data[stop - 1]) & 0xFF]
    return c ^ 0xFFFF


def frame_size(length: int) -> int:
    """Octets on the wire of a frame whose link length field is ``length`` (>= 5)."""
    user = length - DNP3_MIN_LENGTH
    return DNP3_HEADER_LEN + user + 2 * ((user + DNP3_BLOCK - 1) // DNP3_BLOCK)


def build_frame(ctrl: int, dst: int, src: int, user: bytes = b"") -> bytes:
    """A link frame with correct CRCs: for tests and tools."""
    hdr = DNP3Link(length=DNP3_MIN_LENGTH + len(user), ctrl=ctrl, dst=dst, src=src)
    head = bytes(hdr)[:8]
    out = [head, struct.pack("<H", dnp3_crc(head))]
    for i in range(0, len(user), DNP3_BLOCK):
        block = user[i:i + DNP3_BLOCK]
        out.append(block)
        out.append(struct.pack("<H", dnp3_crc(block)))
    return b"".join(out)


class _Assembly:
    """An application fragment being put together from transport segments."""

    __slots__ = ("buf", "seq")

    def __init__(self, first: bytes, seq: int) -> None:
        self.buf = bytearray(first)
        self.seq = seq


class DNP3Session(Session):
    """Per-flow state: fragments in reassembly and requests waiting for their response."""

    def __init__(self, limits: Limits) -> None:
        self.max_pending = max(0, limits.max_pending)
        # (master, outstation, application seq) -> requests (function code, time), oldest
        # first: masters may pipeline several requests with one sequence number.
        self.pending: dict[tuple[int, int, int], list[tuple[int, float]]] = {}
        self.npending = 0
        # (master, outstation) -> request answered by a multi-fragment response in progress.
        self.continuing: dict[tuple[int, int], int] = {}
        # (from_client, source, destination) -> fragment in progress, oldest first.
        self.assembly: dict[tuple[bool, int, int], _Assembly] = {}

    def feed(self, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        # TCP PDUs are single frames (split); a UDP datagram may carry several.
        out: list[Message] = []
        off = 0
        n = len(pdu)
        while off < n:
            if pdu[off:off + 2] != DNP3_START[:n - off]:
                out.append(Message("dnp3", {}, None, (A_START,)))
                break
            if n - off < DNP3_HEADER_LEN:
                out.append(self._partial(pdu, off))
                break
            length = pdu[off + 2]
            stop = off + (frame_size(length) if length >= DNP3_MIN_LENGTH else DNP3_HEADER_LEN)
            out.append(self._frame(pdu, off, min(stop, n), stop > n, from_client, now))
            off = stop
        return out

    @staticmethod
    def _partial(buf: bytes, off: int) -> Message:
        """A record for fewer octets than a link header."""
        f: Fields = {}
        if len(buf) - off >= 6:
            f["dst"] = buf[off + 4] | buf[off + 5] << 8
        return Message("dnp3", f, None, (A_LENGTH,))

    def _frame(self, buf: bytes, off: int, stop: int, cut: bool, from_client: bool,
               now: float) -> Message:
        an: list[str] = []
        length, ctrl, dst, src, crc = _HEAD.unpack_from(buf, off)
        if dnp3_crc(buf, off, off + 8) != crc:
            an.append(A_CRC)
        control, lname, prm, carries = _CONTROL[ctrl]
        f: Fields = {"src": src, "dst": dst}
        f.update(control)
        if lname == "unknown":
            an.append(A_LINK_FUNCTION)
        if cut:
            an.append(A_LENGTH)
        if length < DNP3_MIN_LENGTH or (length > DNP3_MIN_LENGTH) != carries:
            an.append(A_LENGTH)
        if not carries or length <= DNP3_MIN_LENGTH:
            return self._done(f, an, prm, lname)
        user = self._user_data(buf, off + DNP3_HEADER_LEN, stop, length - DNP3_MIN_LENGTH, an)
        if not user:
            return self._done(f, an, None, "")
        th = user[0]
        tseq = th & DNP3_TH_SEQ
        fir, fin = bool(th & DNP3_TH_FIR), bool(th & DNP3_TH_FIN)
        f["transport_fir"] = fir
        f["transport_fin"] = fin
        f["transport_seq"] = tseq
        frag = self._reassemble((from_client, src, dst), fir, fin, tseq, user, an)
        if frag is None:
            return self._done(f, an, None, "")
        return self._application(f, frag, src, dst, now, an)

    @staticmethod
    def _user_data(buf: bytes, p: int, stop: int, size: int, an: list[str]) -> bytes:
        """User data octets without their block CRCs."""
        chunks = []
        while size > 0:
            blk = DNP3_BLOCK if size > DNP3_BLOCK else size
            if p + blk + 2 > stop:
                chunks.append(buf[p:stop])
                break
            if dnp3_crc(buf, p, p + blk) != _CRC16(buf, p + blk)[0] and A_CRC not in an:
                an.append(A_CRC)
            chunks.append(buf[p:p + blk])
            p += blk + 2
            size -= blk
        return b"".join(chunks)

    def _reassemble(self, key: tuple[bool, int, int], fir: bool, fin: bool, tseq: int,
                    user: bytes, an: list[str]) -> bytes | None:
        """Clause 8 reception rules; the completed fragment, or None while it is open."""
        table = self.assembly
        asm = table.get(key)
        if fir:
            if asm is not None:
                an.append(A_TRANSPORT)          # the previous fragment never finished
                del table[key]
            if fin:
                return user[1:]
            if len(table) >= DNP3_MAX_ASSEMBLIES:
                del table[next(iter(table))]
            table[key] = _Assembly(user[1:], tseq)
            return None
        if asm is None:
            an.append(A_TRANSPORT)              # no FIR before it: nothing to attach it to
            return None
        if tseq != (asm.seq + 1) & DNP3_TH_SEQ:
            an.append(A_TRANSPORT)
            if tseq != asm.seq:                 # a repeat is dropped, a gap loses the fragment
                del table[key]
            return None
        asm.buf += memoryview(user)[1:]
        asm.seq = tseq
        if len(asm.buf) > DNP3_MAX_FRAGMENT:
            an.append(A_FRAGMENT)
            del table[key]
            return None
        if not fin:
            return None
        del table[key]
        return bytes(asm.buf)

    def _application(self, f: Fields, frag: bytes, src: int, dst: int, now: float,
                     an: list[str]) -> Message:
        if len(frag) < 2:
            an.append(A_LENGTH)
            return self._done(f, an, None, "")
        ac, fc = frag[0], frag[1]
        name = DNP3_FUNCS.get(fc)
        if name is None:
            an.append(A_UNKNOWN_FUNCTION)
            name = "unknown"
        seq = ac & DNP3_AC_SEQ
        f["func_code"] = fc
        f["func"] = name
        f.update(_APP_CONTROL[ac])
        f["unsolicited"] = fc == DNP3_UNSOLICITED
        is_request = fc < DNP3_RESPONSE
        off = 2
        if fc in DNP3_RESPONSES:
            if len(frag) < 4:
                an.append(A_LENGTH)
                return self._done(f, an, False, name)
            iin1, iin2 = frag[2], frag[3]
            f["iin"] = iin1 << 8 | iin2
            f["iin_flags"] = list(_IIN1[iin1] + _IIN2[iin2])
            off = 4
        identity = None
        if name != "unknown":
            objects, identity = parse_objects(frag, off, fc, is_request, an)
            f["objects"] = objects
        self._pair(f, fc, seq, src, dst, is_request, now, an)
        kind = name
        if fc == DNP3_RESPONSE:
            # A solicited response belongs to its request's transaction, and IIN2's request
            # error bits make it the DNP3 form of an exception response.
            kind = f.get("request_func", name)
            if frag[3] & DNP3_IIN2_ERRORS:
                kind += "_exception"
        anomalies = tuple(dict.fromkeys(an)) if len(an) > 1 else tuple(an)
        return Message("dnp3", f, is_request, anomalies, kind,
                       identity if not is_request else None)

    def _pair(self, f: Fields, fc: int, seq: int, src: int, dst: int, is_request: bool,
              now: float, an: list[str]) -> None:
        pending = self.pending
        req: int | None = None
        if is_request:
            if fc in DNP3_NO_RESPONSE:
                return
            if self.npending >= self.max_pending:
                if pending:
                    oldest = next(iter(pending))
                    del pending[oldest][0]
                    if not pending[oldest]:
                        del pending[oldest]
                    self.npending -= 1
                an.append(A_TOO_MANY_PENDING)
            if self.max_pending:
                pending.setdefault((src, dst, seq), []).append((fc, now))
                self.npending += 1
        elif fc != DNP3_UNSOLICITED and not f["fir"]:
            # Later fragments of a multi-fragment response carry the following sequence
            # numbers: they belong to the request the first fragment answered.
            cont = self.continuing
            req = cont.pop((dst, src), None) if f["fin"] else cont.get((dst, src))
            if req is not None:
                f["request_func_code"] = req
                f["request_func"] = DNP3_FUNCS.get(req, "unknown")
        elif fc != DNP3_UNSOLICITED:
            key = (dst, src, seq)
            queue = pending.get(key)
            while queue:
                req, ts = queue.pop(0)
                self.npending -= 1
                if now - ts <= DNP3_RESPONSE_TIMEOUT:
                    break
                req = None
            if queue is not None and not queue:
                del pending[key]
            if req is None:
                if fc == DNP3_RESPONSE:
                    an.append(A_UNMATCHED)
            else:
                f["request_func_code"] = req
                f["request_func"] = DNP3_FUNCS.get(req, "unknown")
                if not f["fin"] and self.max_pending:
                    cont = self.continuing
                    if len(cont) >= self.max_pending and (dst, src) not in cont:
                        del cont[next(iter(cont))]
                    cont[(dst, src)] = req

    @staticmethod
    def _done(f: Fields, an: list[str], is_request: bool | None, kind: str) -> Message:
        anomalies = tuple(dict.fromkeys(an)) if len(an) > 1 else tuple(an)
        return Message("dnp3", f, is_request, anomalies, kind)

    def close(self, now: float) -> list[Message]:
        # Unanswered requests and unfinished fragments were reported as they were seen.
        self.pending.clear()
        self.npending = 0
        self.continuing.clear()
        self.assembly.clear()
        return []


class DNP3Decoder(Decoder):
    """DNP3 over TCP and UDP: link frames straight on the transport."""

    def probe(self, data: bytes) -> bool:
        if len(data) < DNP3_HEADER_LEN or data[0] != 0x05 or data[1] != 0x64:
            return False
        if data[2] < DNP3_MIN_LENGTH:
            return False
        return dnp3_crc(data, 0, 8) == _CRC16(data, 8)[0]

    def split(self, data: bytes) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        off = 0
        n = len(data)
        while n - off >= 3:
            if data[off] != 0x05 or data[off + 1] != 0x64:
                # Hand over what framed cleanly; the next call reports the garbage.
                return (out, off) if out else ([], -1)
            length = data[off + 2]
            # An impossible length still frames the header alone, so feed reports it.
            stop = off + (frame_size(length) if length >= DNP3_MIN_LENGTH
                          else DNP3_HEADER_LEN)
            if stop > n:
                break
            out.append(data[off:stop])
            off = stop
        if not out and n - off in (1, 2) and data[off:off + 2] != DNP3_START[:n - off]:
            return [], -1
        return out, off

    def session(self, limits: Limits) -> Session:
        return DNP3Session(limits)


DECODER = DNP3Decoder(name="dnp3", tcp_ports=frozenset({DNP3_PORT}),
                      udp_ports=frozenset({DNP3_PORT}))
