"""IEC 61850 GOOSE and Sampled Values, straight on Ethernet.

Spec: IEC 61850-8-1 (Ed. 2) Annex A (A.2 the Ethernet header: APPID, Length, Reserved 1 whose
bit 15 is the Simulate flag, Reserved 2; A.3 the IECGoosePdu in ASN.1 BER) with the MMS Data
CHOICE it carries (ISO 9506-2 / IEC 61850-8-1 8.1.3), and IEC 61850-9-2 (Ed. 2) 8.5 (savPdu:
noASDU, ASDU svID, datSet, smpCnt, confRev, refrTm, smpSynch, smpRate, samples). Ethertypes
0x88B8 (GOOSE) and 0x88BA (SV), both behind optional 802.1Q tags. Header fields are
big-endian, as is every BER integer.

One decoder serves both Ethertypes; the PDU's BER tag tells them apart ([APPLICATION 1] 0x61
GOOSE, [APPLICATION 0] 0x60 SV), so GOOSE records carry proto "goose" and SV records "sv". The
BER reader is a small bounded one (definite lengths of at most four octets, nesting to
``GOOSE_MAX_DEPTH``): no ASN.1 library on the hot path, where a substation sends thousands of
frames a second.

GOOSE records: ``appid, length, simulation`` (Reserved 1 bit 15) and from the PDU ``gocb_ref,
time_allowed_to_live, dat_set, go_id, time`` (ISO 8601 UTC) ``time_quality, st_num, sq_num,
test`` (the PDU's [7] boolean, "test" in Ed. 1 and "simulation" in Ed. 2) ``conf_rev, nds_com,
num_entries, values`` (allData decoded: booleans, bit strings as "0101", integers, floats,
strings, UTC times, nested structures and arrays as lists; bounded) and ``state_change``. Per
flow and control block the session follows stNum/sqNum (IEC 61850-8-1 18.1.2.5: a new state
increments stNum and restarts sqNum at 0; each retransmission increments sqNum): a state change
is kind ``goose_state_change``, a retransmission ``goose``. The first frame of a control block
names its publisher's logical device (``Message.identity`` name). SV records: ``appid,
length, simulation, num_asdu, asdus`` [{``sv_id, dat_set, smp_cnt, conf_rev, smp_synch,
smp_rate``}] (bounded), kind ``sv``.

Anomalies (prefixed ``goose.``, also for SV frames): ``invalid_length`` (header length below 8,
or the APDU shorter than it says), ``truncated`` (the frame shorter than the header length, a
BER length past its enclosing value: the fields that arrived are kept), ``malformed_asn1``
(an unexpected tag, an indefinite or over-long length, a missing mandatory field, nesting too
deep), ``num_entries_mismatch`` (numDatSetEntries against allData), ``st_num_regression``,
``st_num_jump``, ``sq_num_regression``, ``sq_num_gap``, ``replay`` (the same stNum, sqNum and t
again).
"""
from __future__ import annotations

import struct
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import dpkt

from edge_agent.decode import Decoder, Limits, Message, Session


class GSEHeader(dpkt.Packet):
    """GOOSE / SV Ethernet header (IEC 61850-8-1 A.2, 61850-9-2 8.5.2); ``data`` is the APDU.

    Documents the wire layout and builds test vectors; the hot path reads the same fields with
    ``struct``.
    """

    __hdr__ = (
        ("appid", "H", 0),
        ("length", "H", 8),        # from APPID on: header + APDU
        ("reserved1", "H", 0),     # bit 15: Simulate (Ed. 2)
        ("reserved2", "H", 0),
    )


ETH_TYPE_GOOSE = 0x88B8          # IEC 61850-8-1 A.2
ETH_TYPE_SV = 0x88BA             # IEC 61850-9-2 8.5.2
GOOSE_HEADER_LEN = 8
GOOSE_SIMULATE_BIT = 0x8000      # 61850-8-1 A.2 Table A.2: Reserved 1 bit 15
GOOSE_PDU_TAG = 0x61             # [APPLICATION 1] IMPLICIT SEQUENCE (A.3)
SV_PDU_TAG = 0x60                # [APPLICATION 0] IMPLICIT SEQUENCE (9-2 8.5.3)
GOOSE_MAX_DEPTH = 4              # nested structures/arrays followed in allData
GOOSE_MAX_VALUES = 64            # data values kept per record, nested ones counted
GOOSE_MAX_STRING = 129           # VisibleString129 (61850-7-2), the longest reference
SV_MAX_ASDUS = 16                # 9-2 allows up to 8 in practice; a bound for hostile frames
GOOSE_MAX_COUNTER = 0xFFFFFFFF   # stNum / sqNum are INT32U and roll over (8-1 18.1.2.5)

# A.3 IECGoosePdu: context tag -> record field; tag 0xAB is allData, 0x8C security.
GOOSE_FIELDS: dict[int, str] = {
    0x80: "gocb_ref", 0x81: "time_allowed_to_live", 0x82: "dat_set", 0x83: "go_id",
    0x84: "time", 0x85: "st_num", 0x86: "sq_num", 0x87: "test", 0x88: "conf_rev",
    0x89: "nds_com", 0x8A: "num_entries",
}
GOOSE_STRINGS = frozenset({0x80, 0x82, 0x83})
GOOSE_BOOLEANS = frozenset({0x87, 0x89})
GOOSE_ALL_DATA = 0xAB
GOOSE_SECURITY = 0x8C
GOOSE_MANDATORY = ("gocb_ref", "time_allowed_to_live", "dat_set", "time", "st_num", "sq_num",
                   "conf_rev", "num_entries")
# 9-2 8.5.3 savPdu and ASDU context tags
SV_NO_ASDU, SV_SECURITY, SV_SEQUENCE = 0x80, 0x81, 0xA2
SV_ASDU = 0x30
SV_FIELDS: dict[int, str] = {0x80: "sv_id", 0x81: "dat_set", 0x82: "smp_cnt", 0x83: "conf_rev",
                             0x85: "smp_synch", 0x86: "smp_rate"}

A_LENGTH = "goose.invalid_length"
A_TRUNCATED = "goose.truncated"
A_ASN1 = "goose.malformed_asn1"
A_ENTRIES = "goose.num_entries_mismatch"
A_ST_REGRESSION = "goose.st_num_regression"
A_ST_JUMP = "goose.st_num_jump"
A_SQ_REGRESSION = "goose.sq_num_regression"
A_SQ_GAP = "goose.sq_num_gap"
A_REPLAY = "goose.replay"

_HDR = struct.Struct(">HHHH")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_TIME = struct.Struct(">I3sB")
_BITS = tuple(f"{x:08b}" for x in range(256))

Fields = dict[str, Any]


class BERError(ValueError):
    """A BER encoding the reader will not follow; ``anomaly`` names why."""

    def __init__(self, anomaly: str) -> None:
        super().__init__(anomaly)
        self.anomaly = anomaly


def tlv(b: bytes, off: int, end: int, clamp: bool = False) -> tuple[int, int, int]:
    """One BER TLV at ``off``: (tag, value start, value end). High tag numbers come back as
    ``0x1F00 | number`` with the class bits above, so they never equal a low-form tag. With
    ``clamp`` a value running past ``end`` is returned as is for the caller to judge."""
    if off + 2 > end:
        raise BERError(A_TRUNCATED)
    tag = b[off]
    off += 1
    if tag & 0x1F == 0x1F:
        number = 0
        for _ in range(4):
            if off >= end:
                raise BERError(A_TRUNCATED)
            byte = b[off]
            off += 1
            number = number << 7 | (byte & 0x7F)
            if not byte & 0x80:
                break
        else:
            raise BERError(A_ASN1)
        tag = (tag & 0xE0) << 24 | number | 0x1F00
        if off >= end:
            raise BERError(A_TRUNCATED)
    n = b[off]
    off += 1
    if n & 0x80:
        width = n & 0x7F
        if width == 0 or width > 4:            # indefinite form, or longer than any frame
            raise BERError(A_ASN1)
        if off + width > end:
            raise BERError(A_TRUNCATED)
        n = int.from_bytes(b[off:off + width], "big")
        off += width
    if off + n > end and not clamp:
        raise BERError(A_TRUNCATED)
    return tag, off, off + n


def _int(b: bytes, start: int, stop: int, signed: bool = True) -> int:
    if not 0 < stop - start <= 9:                # INT64 / INT32U with a leading zero octet
        raise BERError(A_ASN1)
    return int.from_bytes(b[start:stop], "big", signed=signed)


def _string(b: bytes, start: int, stop: int) -> str:
    return b[start:min(stop, start + GOOSE_MAX_STRING)].decode("latin-1")


def utc_time(b: bytes, start: int, stop: int) -> tuple[str, int]:
    """UtcTime (61850-8-1 8.1.3.7): seconds since 1970 (4 octets), fraction of a second
    (3 octets, /2**24), time quality (1 octet). Returns the ISO 8601 string and the quality."""
    if stop - start != 8:
        raise BERError(A_ASN1)
    secs, frac, quality = _TIME.unpack_from(b, start)
    micros = min((int.from_bytes(frac, "big") * 1_000_000 + (1 << 23)) >> 24, 999_999)
    stamp = datetime.fromtimestamp(secs, timezone.utc).replace(microsecond=micros)
    return stamp.isoformat().replace("+00:00", "Z"), quality


@lru_cache(maxsize=256)
def _utc_cached(raw: bytes) -> tuple[str, int]:
    """``t`` changes only with the state, so retransmissions hit the cache."""
    return utc_time(raw, 0, len(raw))


def _data(b: bytes, start: int, stop: int, out: list[Any], budget: list[int],
          depth: int) -> int:
    """MMS Data values (61850-8-1 8.1.3 / ISO 9506-2 Data CHOICE) from ``start`` to ``stop``;
    returns how many there are at this level (``out`` keeps at most the budget)."""
    off = start
    count = 0
    while off < stop:
        # Short-form tag and length (nearly every Data value) without the general reader.
        if off + 2 <= stop and b[off + 1] < 0x80 and b[off] & 0x1F != 0x1F \
                and off + 2 + b[off + 1] <= stop:
            tag, vs, ve = b[off], off + 2, off + 2 + b[off + 1]
        else:
            tag, vs, ve = tlv(b, off, stop)
        off = ve
        count += 1
        if budget[0] <= 0:
            continue
        budget[0] -= 1
        if tag in (0xA1, 0xA2):                  # array, structure
            if depth >= GOOSE_MAX_DEPTH:
                raise BERError(A_ASN1)
            inner: list[Any] = []
            _data(b, vs, ve, inner, budget, depth + 1)
            out.append(inner)
        elif tag == 0x83:                        # boolean
            out.append(ve > vs and b[vs] != 0)
        elif (tag == 0x85 or tag == 0x86) and 0 < ve - vs <= 9:    # integer, unsigned
            out.append(int.from_bytes(b[vs:ve], "big", signed=True))
        elif tag == 0x84:                        # bit-string: unused-bits octet, then bits
            if ve == vs:
                raise BERError(A_ASN1)
            bits = "".join(map(_BITS.__getitem__, b[vs + 1:ve]))
            out.append(bits[:len(bits) - (b[vs] & 7)] if b[vs] & 7 else bits)
        elif tag == 0x85 or tag == 0x86:         # integer, unsigned
            out.append(_int(b, vs, ve))
        elif tag == 0x87:                        # floating-point: exponent width, IEEE 754
            if ve - vs == 5:
                out.append(_F32.unpack_from(b, vs + 1)[0])
            elif ve - vs == 9:
                out.append(_F64.unpack_from(b, vs + 1)[0])
            else:
                raise BERError(A_ASN1)
        elif tag == 0x8A or tag == 0x90:         # visible-string, MMSString
            out.append(_string(b, vs, ve))
        elif tag == 0x91:                        # utc-time
            out.append(utc_time(b, vs, ve)[0])
        else:                                    # octet-string, binary-time, bcd, ...
            out.append(b[vs:min(ve, vs + 32)].hex())
    return count


def _header(pdu: bytes, an: list[str]) -> tuple[Fields, int]:
    appid, length, res1, _ = _HDR.unpack_from(pdu)
    f: Fields = {"appid": appid, "length": length, "simulation": bool(res1 & GOOSE_SIMULATE_BIT)}
    end = len(pdu)
    if length < GOOSE_HEADER_LEN:
        an.append(A_LENGTH)
    elif length > end:
        an.append(A_TRUNCATED)
    else:
        end = length                             # Ethernet pads short frames: ignore the rest
    return f, end


def parse_goose(pdu: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
    """IECGoosePdu fields from ``off`` (the sequence's value) to ``end``."""
    cut = False
    while off < end:
        if off + 2 <= end and pdu[off + 1] < 0x80 and pdu[off] & 0x1F != 0x1F:
            tag, vs, ve = pdu[off], off + 2, off + 2 + pdu[off + 1]
        else:
            tag, vs, ve = tlv(pdu, off, end, clamp=True)
        if ve > end:                             # keep what arrived of a string or allData
            if tag not in GOOSE_STRINGS and tag != GOOSE_ALL_DATA:
                raise BERError(A_TRUNCATED)
            cut, ve = True, end
        off = ve
        name = GOOSE_FIELDS.get(tag)
        if name is not None:
            if tag in GOOSE_STRINGS:
                f[name] = pdu[vs:min(ve, vs + GOOSE_MAX_STRING)].decode("latin-1")
            elif tag in GOOSE_BOOLEANS:
                f[name] = ve > vs and pdu[vs] != 0
            elif tag == 0x84:
                f["time"], f["time_quality"] = _utc_cached(pdu[vs:ve])
            elif 0 < ve - vs <= 9:
                f[name] = int.from_bytes(pdu[vs:ve], "big", signed=True)
            else:
                raise BERError(A_ASN1)
        elif tag == GOOSE_ALL_DATA:
            values: list[Any] = []
            f["values"] = values
            count = _data(pdu, vs, ve, values, [GOOSE_MAX_VALUES], 0)
            if f.get("num_entries", count) != count and not cut:
                an.append(A_ENTRIES)
        elif tag != GOOSE_SECURITY:
            raise BERError(A_ASN1)
    if cut:
        raise BERError(A_TRUNCATED)


def parse_sv(pdu: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
    """savPdu fields from ``off`` (the sequence's value) to ``end``."""
    while off < end:
        tag, vs, ve = tlv(pdu, off, end)
        off = ve
        if tag == SV_NO_ASDU:
            f["num_asdu"] = _int(pdu, vs, ve)
        elif tag == SV_SEQUENCE:
            asdus: list[Fields] = []
            f["asdus"] = asdus
            p = vs
            while p < ve:
                atag, avs, ave = tlv(pdu, p, ve)
                p = ave
                if atag != SV_ASDU:
                    raise BERError(A_ASN1)
                if len(asdus) < SV_MAX_ASDUS:
                    asdus.append(_asdu(pdu, avs, ave))
        elif tag != SV_SECURITY:
            raise BERError(A_ASN1)


def _asdu(pdu: bytes, off: int, end: int) -> Fields:
    a: Fields = {}
    while off < end:
        tag, vs, ve = tlv(pdu, off, end)
        off = ve
        name = SV_FIELDS.get(tag)
        if name is None:
            continue                             # refrTm, samples, smpMod, gmIdentity
        if tag <= 0x81:
            a[name] = _string(pdu, vs, ve)
        elif tag == 0x85:
            a[name] = ve > vs and pdu[vs] != 0
        else:
            a[name] = int.from_bytes(pdu[vs:min(ve, vs + 8)], "big")
    return a


def _sequence_anomaly(prev: tuple[int, int, str | None], st: int, sq: int,
                      t: str | None) -> tuple[str | None, bool]:
    """Judge stNum/sqNum against the control block's last frame: (anomaly, state change)."""
    pst, psq, pt = prev
    if st == pst:
        if sq == psq:
            return (A_REPLAY if t == pt else A_SQ_REGRESSION), False
        if sq == psq + 1 or (psq == GOOSE_MAX_COUNTER and sq <= 1):
            return None, False
        return (A_SQ_REGRESSION if sq < psq else A_SQ_GAP), False
    if st == pst + 1 or (pst == GOOSE_MAX_COUNTER and st <= 1):
        # Edition 1 devices start a new state at sqNum 1, Edition 2 ones at 0.
        return (None if sq <= 1 else A_SQ_GAP), True
    if st > pst:
        return A_ST_JUMP, True
    return A_ST_REGRESSION, False


class GooseSession(Session):
    """Per flow (publisher MAC, destination, Ethertype): the last stNum, sqNum and t of each
    control block, at most ``limits.max_pending`` of them (least recently seen dropped)."""

    def __init__(self, limits: Limits) -> None:
        self.max_blocks = max(1, limits.max_pending)
        self.blocks: dict[str, tuple[int, int, str | None]] = {}

    def feed(self, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        an: list[str] = []
        if len(pdu) < GOOSE_HEADER_LEN:
            return [Message("goose", {}, None, (A_LENGTH,), "goose")]
        f, end = _header(pdu, an)
        tag = pdu[GOOSE_HEADER_LEN] if end > GOOSE_HEADER_LEN else -1
        proto = "sv" if tag == SV_PDU_TAG else "goose"
        try:
            # The APDU may be cut short (snap length, a lost fragment of a long frame): read
            # the fields that did arrive, as tshark does.
            _, vs, ve = tlv(pdu, GOOSE_HEADER_LEN, end, clamp=True)
            if ve < end:
                an.append(A_LENGTH)
            elif ve > end:
                an.append(A_TRUNCATED)
                ve = end
            if tag == GOOSE_PDU_TAG:
                parse_goose(pdu, vs, ve, f, an)
            elif tag == SV_PDU_TAG:
                parse_sv(pdu, vs, ve, f, an)
            else:
                an.append(A_ASN1)
        except BERError as err:
            an.append(err.anomaly)
        kind = "sv"
        identity = None
        if proto == "goose":
            kind, identity = self._track(f, an)
        anomalies = () if not an else tuple(dict.fromkeys(an)) if len(an) > 1 else (an[0],)
        return [Message(proto, f, None, anomalies, kind, identity)]

    def _track(self, f: Fields, an: list[str]) -> tuple[str, dict[str, Any] | None]:
        missing = [k for k in GOOSE_MANDATORY if k not in f]
        if missing:
            if A_TRUNCATED not in an and A_LENGTH not in an:
                an.append(A_ASN1)
        ref = f.get("gocb_ref")
        st, sq = f.get("st_num"), f.get("sq_num")
        if ref is None or st is None or sq is None:
            return "goose", None
        blocks = self.blocks
        prev = blocks.pop(ref, None)
        identity = None
        change = False
        if prev is None:
            if len(blocks) >= self.max_blocks:
                del blocks[next(iter(blocks))]
            ld = ref.split("/", 1)[0]
            identity = {"name": ld} if ld else None
        else:
            anomaly, change = _sequence_anomaly(prev, st, sq, f.get("time"))
            if anomaly:
                an.append(anomaly)
        blocks[ref] = (st, sq, f.get("time"))
        f["state_change"] = change
        return ("goose_state_change" if change else "goose"), identity

    def close(self, now: float) -> list[Message]:
        self.blocks.clear()
        return []


class GooseDecoder(Decoder):
    """GOOSE (0x88B8) and Sampled Values (0x88BA)."""

    def probe(self, data: bytes) -> bool:
        if len(data) < GOOSE_HEADER_LEN + 2:
            return False
        _, length, _, _ = _HDR.unpack_from(data)
        return length >= GOOSE_HEADER_LEN + 2 and data[GOOSE_HEADER_LEN] in (GOOSE_PDU_TAG,
                                                                             SV_PDU_TAG)

    def session(self, limits: Limits) -> GooseSession:
        return GooseSession(limits)


DECODER = GooseDecoder(name="goose", ethertypes=frozenset({ETH_TYPE_GOOSE, ETH_TYPE_SV}))
