"""IEC 60870-5-104 decoder: APCI framing and formats, sequence tracking, ASDU data unit
identifier, information elements of the monitor and control types, anomalies; the APDU vectors
of parsitects' zeek-iec104 decoded against their annotations, and a capture against tshark."""
from __future__ import annotations

import math
import os
import random
import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from edge_agent.decode import Limits, Message
from edge_agent.decode.iec104 import APCI, DECODER, ASDUHeader, IEC104Session
from edge_agent.decode.iec104_types import IEC104_ELEMENTS, IEC104_TYPES
from tests.conftest import fixture_pcaps
from tests.decode import fuzz
from tests.test_agreement import agent_records, agreement, needs_tshark, tshark_rows

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("EDGE_AGENT_SHARED", ROOT.parent / "shared")) / "fixtures"
VECTORS = FIXTURES / "baselines" / "iec104" / "apdu_vectors"
needs_vectors = pytest.mark.skipif(not VECTORS.is_dir(), reason=f"no APDU vectors at {VECTORS}")


def h(text: str) -> bytes:
    """Hex with spaces and ``|`` separators allowed, so vectors can be laid out field by field."""
    return bytes.fromhex(text.replace("|", " "))


def apdu(ctrl: str, asdu: str = "") -> bytes:
    """An APDU built with the dpkt header class: start, length, control octets, then the ASDU."""
    c = h(ctrl)
    body = h(asdu)
    return bytes(APCI(length=4 + len(body), ctrl1=c[0], ctrl2=c[1], ctrl3=c[2],
                      ctrl4=c[3])) + body


def one(sess: IEC104Session, pdu: bytes, from_client: bool = True) -> Message:
    out = DECODER.safe_feed(sess, pdu, from_client, 0.0)
    assert len(out) == 1
    return out[0]


def new() -> IEC104Session:
    return DECODER.session(Limits())


I0 = "00 00 00 00"                      # I format, N(S) 0, N(R) 0
STARTDT_ACT = h("68 04 | 07 00 00 00")
STARTDT_CON = h("68 04 | 0b 00 00 00")
# C_SC_NA_1 act: type 45 | VSQ 1 | COT 6 | OA 0 | CA 10 | IOA 2 | SCO on, execute
SINGLE_CMD = apdu(I0, "2d | 01 | 06 | 00 | 0a00 | 020000 | 01")
# M_ME_NC_1 spontaneous: IOA 5550, -4.7155 (float LE), QDS 0 (vector m_me_nc_1-1)
FLOAT_MEAS = apdu("02 ae 5c 8c", "0d | 01 | 03 | 00 | 9001 | ae1500 | 60e596c0 | 00")


# --- round trip through the dpkt header classes -----------------------------------------------

def test_round_trip_headers() -> None:
    asdu = bytes(ASDUHeader(type_id=100, vsq=1, cot=6, common_address=10)) + h("000000 14")
    pdu = bytes(APCI(length=4 + len(asdu), ctrl1=0x02, ctrl3=0x04)) + asdu
    assert pdu == h("68 0e | 02 00 04 00 | 64 01 06 00 0a00 | 000000 14")
    hdr = APCI(pdu)
    assert (hdr.start, hdr.length, hdr.ctrl1) == (0x68, 14, 2)
    dui = ASDUHeader(hdr.data)
    assert (dui.type_id, dui.vsq, dui.cot, dui.originator, dui.common_address) == (
        100, 1, 6, 0, 10)
    m = one(new(), pdu)
    assert m.fields == {
        "apci_type": "I", "tx_seq": 1, "rx_seq": 2, "type_id": 100, "type": "c_ic_na_1",
        "sq": False, "num_objects": 1, "cot_code": 6, "cot": "activation", "negative": False,
        "test": False, "originator": 0, "common_address": 10,
        "objects": [{"ioa": 0, "qualifier": 20}]}
    assert m.kind == "c_ic_na_1" and m.is_request is True and m.anomalies == ()


# --- APCI formats -----------------------------------------------------------------------------

@pytest.mark.parametrize("ctrl,name,is_request", [
    ("07 00 00 00", "startdt_act", True), ("0b 00 00 00", "startdt_con", False),
    ("13 00 00 00", "stopdt_act", True), ("23 00 00 00", "stopdt_con", False),
    ("43 00 00 00", "testfr_act", True), ("83 00 00 00", "testfr_con", False),
])
def test_u_format(ctrl: str, name: str, is_request: bool) -> None:
    m = one(new(), h("68 04 " + ctrl))
    assert m.fields == {"apci_type": "U", "u_func_code": h(ctrl)[0], "u_func": name}
    assert m.kind == name and m.is_request is is_request and m.anomalies == ()


def test_s_format() -> None:
    m = one(new(), h("68 04 | 01 00 7e 14"))           # vector s-format: N(R) 2623
    assert m.fields == {"apci_type": "S", "rx_seq": 2623}
    assert m.kind == "s_frame" and m.is_request is None and m.anomalies == ()


# --- information elements ---------------------------------------------------------------------

ELEMENT_VECTORS: list[tuple[str, str, dict[str, Any], bool]] = [
    # type | VSQ | COT | OA | CA, then IOA and the element; the object expected; is_request
    ("01 01 03 00 0100 | 0a0000 | 91", {"ioa": 10, "value": 1, "quality": ("bl", "iv")}, False),
    ("03 01 03 00 0100 | 0a0000 | 42", {"ioa": 10, "value": 2, "quality": ("nt",)}, False),
    ("05 01 03 00 0100 | 0a0000 | c5 00",                   # VTI -59 transient, QDS 0
     {"ioa": 10, "value": -59, "transient": True, "quality": ()}, False),
    ("07 01 03 00 0100 | 0a0000 | 78563412 | 01",           # BSI 0x12345678, overflow
     {"ioa": 10, "value": 0x12345678, "quality": ("ov",)}, False),
    ("09 01 03 00 0100 | 0a0000 | 0040 | 00",               # NVA 0.5
     {"ioa": 10, "value": 0.5, "quality": ()}, False),
    ("0b 01 03 00 0100 | 0a0000 | 18fc | 20",               # SVA -1000, substituted
     {"ioa": 10, "value": -1000, "quality": ("sb",)}, False),
    ("0f 01 25 00 0100 | 0a0000 | e8030000 | 25",           # BCR 1000, seq 5, carry
     {"ioa": 10, "value": 1000, "sequence": 5, "quality": ("cy",)}, False),
    ("14 01 03 00 0100 | 0a0000 | 0300 0100 | 00",          # SCD status 3, change 1
     {"ioa": 10, "value": 3, "changes": 1, "quality": ()}, False),
    ("15 01 01 00 0100 | 0a0000 | 00c0",                    # NVA without quality: -0.5
     {"ioa": 10, "value": -0.5}, False),
    ("1e 01 03 00 0100 | 0a0000 | 01 | ddd9 03 89 10 07 18",  # SIQ + CP56 summer time
     {"ioa": 10, "value": 1, "quality": (), "time": "2024-07-16T09:03:55.773",
      "summer_time": True}, False),
    ("02 01 03 00 0100 | 0a0000 | 00 | ddd9 83",            # SIQ + CP24 marked invalid
     {"ioa": 10, "value": 0, "quality": (), "time": "03:55.773", "time_invalid": True}, False),
    ("11 01 03 00 0100 | 0a0000 | 02 | 6400 | ddd9 03",     # SEP on, 100 ms elapsed, CP24
     {"ioa": 10, "value": 2, "quality": (), "elapsed_ms": 100, "time": "03:55.773"}, False),
    ("12 01 03 00 0100 | 0a0000 | 03 | 00 | 6400 | ddd9 03",   # SPE gs+sl1
     {"ioa": 10, "events": ("gs", "sl1"), "quality": (), "duration_ms": 100,
      "time": "03:55.773"}, False),
    ("2d 01 06 00 0100 | 0a0000 | 81",                      # SCO on, select
     {"ioa": 10, "value": 1, "qualifier": 0, "select": True}, True),
    ("2e 01 06 00 0100 | 0a0000 | 06",                      # DCO on, short pulse (QU 1)
     {"ioa": 10, "value": 2, "qualifier": 1, "select": False}, True),
    ("2f 01 06 00 0a00 | 010000 | 02",                      # RCO higher (vector c_rc_na_1)
     {"ioa": 1, "value": 2, "qualifier": 0, "select": False}, True),
    ("30 01 06 00 0100 | 0a0000 | 0020 | 00",               # setpoint normalized 0.25
     {"ioa": 10, "value": 0.25, "qualifier": 0, "select": False}, True),
    ("31 01 06 00 0100 | 0a0000 | 0a00 | 80",               # setpoint scaled 10, select
     {"ioa": 10, "value": 10, "qualifier": 0, "select": True}, True),
    ("32 01 06 00 0100 | 0a0000 | 0000c03f | 00",           # setpoint float 1.5
     {"ioa": 10, "value": 1.5, "qualifier": 0, "select": False}, True),
    ("33 01 06 00 0100 | 0a0000 | ff000000",                # bitstring command
     {"ioa": 10, "value": 255}, True),
    ("3e 01 47 00 9001 | 421f00 | 0100 | 00 | ddd9 03 09 10 07 18",  # vector c_se_tb_1: P/N
     {"ioa": 8002, "value": 1, "qualifier": 0, "select": False,
      "time": "2024-07-16T09:03:55.773"}, False),
    ("46 01 04 00 0a00 | 000000 | 82",                      # end of init: remote reset, params
     {"ioa": 0, "value": 2, "after_parameter_change": True}, False),
    ("64 01 06 00 0a00 | 000000 | 15",                      # interrogation group 1
     {"ioa": 0, "qualifier": 21}, True),
    ("65 01 06 00 0a00 | 000000 | 45",                      # counter interrogation: general, freeze
     {"ioa": 0, "qualifier": 5, "freeze": 1}, True),
    ("66 01 05 00 0a00 | 0a0000", {"ioa": 10}, True),       # read command
    ("67 01 06 00 0a00 | 000000 | 0000 1e 0d 05 0c 17",     # clock sync 2023-12-05 13:30:00.000
     {"ioa": 0, "time": "2023-12-05T13:30:00.000"}, True),
    ("69 01 06 00 0a00 | 000000 | 01",                      # reset process: general
     {"ioa": 0, "qualifier": 1}, True),
    ("6b 01 06 00 0a00 | 000000 | 3412 | 0000 1e 0d 05 0c 17",   # test command with time
     {"ioa": 0, "value": 0x1234, "time": "2023-12-05T13:30:00.000"}, True),
    ("6e 01 06 00 0a00 | 0a0000 | 0040 | 41",               # parameter normalized: threshold
     {"ioa": 10, "value": 0.5, "qualifier": 1, "local_change": True,
      "not_in_operation": False}, True),
    ("7a 01 0d 00 0a00 | 0a0000 | 0100 | 02 | 01",         # F_SC_NA_1 select file 1, section 2
     {"ioa": 10, "file": 1, "section": 2, "qualifier": 1}, False),
    ("7d 01 0d 00 0a00 | 0a0000 | 0100 | 02 | 03 | aabbcc",   # F_SG_NA_1 segment of 3
     {"ioa": 10, "file": 1, "section": 2, "segment_length": 3, "segment": "aabbcc"}, False),
]


@pytest.mark.parametrize("asdu,obj,is_request", ELEMENT_VECTORS,
                         ids=[v[0][:2] for v in ELEMENT_VECTORS])
def test_information_elements(asdu: str, obj: dict[str, Any], is_request: bool) -> None:
    m = one(new(), apdu(I0, asdu))
    assert m.anomalies == (), m
    assert m.fields["objects"] == [obj]
    assert m.is_request is is_request
    assert m.kind == IEC104_TYPES[int(asdu[:2], 16)]


def test_sequence_of_objects_sq() -> None:
    # M_SP_NA_1, SQ=1, 3 objects from IOA 1001 (vector m_sp_na_1-sq)
    m = one(new(), apdu("1a d7 ec 54", "01 | 83 | 14 | 00 | 9001 | e90300 | 00 01 00"))
    assert (m.fields["tx_seq"], m.fields["rx_seq"]) == (27533, 10870)
    assert m.fields["sq"] is True and m.fields["num_objects"] == 3
    assert m.fields["cot"] == "interrogated_by_station"
    assert [(o["ioa"], o["value"]) for o in m.fields["objects"]] == [(1001, 0), (1002, 1),
                                                                      (1003, 0)]


def test_objects_are_bounded() -> None:
    body = "01 | ff | 14 | 00 | 9001 | e90300 |" + " 00" * 127    # 127 objects, SQ=1
    m = one(new(), apdu(I0, body))
    assert m.anomalies == () and m.fields["num_objects"] == 127
    assert len(m.fields["objects"]) == 64 and m.fields["objects"][-1]["ioa"] == 1001 + 63


def test_negative_confirmation_and_test_bit() -> None:
    # C_SC_NA_1 actcon, P/N set, cause 47 unknown object address, test bit
    m = one(new(), apdu(I0, "2d | 01 | ef | 03 | 0a00 | 630000 | 01"), False)
    assert (m.fields["cot"], m.fields["negative"], m.fields["test"]) == (
        "unknown_object_address", True, True)
    assert m.fields["originator"] == 3 and m.is_request is False and m.anomalies == ()


def test_every_standard_type_is_named_and_sized() -> None:
    assert set(IEC104_ELEMENTS) == set(IEC104_TYPES)
    assert all(re.fullmatch(r"[mcspf]_[a-z]{2}_[a-z]{2}_1", n) for n in IEC104_TYPES.values())
    for tid, name in IEC104_TYPES.items():
        spec = IEC104_ELEMENTS[tid]
        size = spec[0] if spec else 4
        m = one(new(), apdu(I0, f"{tid:02x} 01 06 00 0100 | 010000" + " 00" * size))
        assert m.fields["type"] == name and m.kind == name
        assert "iec104.unknown_type" not in m.anomalies
        assert m.anomalies == () or tid == 125, (name, m.anomalies)


# --- sequence numbers -------------------------------------------------------------------------

def _i(tx: int, rx: int = 0) -> bytes:
    return apdu(f"{(tx << 1) & 0xFF:02x} {tx >> 7:02x} {(rx << 1) & 0xFF:02x} {rx >> 7:02x}",
                "01 01 03 00 0100 | 0a0000 | 01")


def test_sequence_tracking() -> None:
    sess = new()
    assert one(sess, _i(0), False).anomalies == ()
    assert one(sess, _i(1), False).anomalies == ()
    m = one(sess, _i(1), False)                                # the same N(S) again
    assert m.anomalies == ("iec104.sequence_duplicate",) and m.fields["expected_tx_seq"] == 2
    m = one(sess, _i(5), False)                                # 2, 3 and 4 never seen
    assert m.anomalies == ("iec104.sequence_gap",)
    assert one(sess, _i(6), False).anomalies == ()
    # the other direction counts on its own; N(R) 7 acknowledges everything the server sent
    assert one(sess, _i(0, 7), True).anomalies == ()
    assert one(sess, h("68 04 | 01 00 0e 00"), True).anomalies == ()       # S: N(R) 7
    assert one(sess, h("68 04 | 01 00 10 00"), True).anomalies == ("iec104.invalid_ack",)


def test_sequence_wraps_at_32768() -> None:
    sess = new()
    assert one(sess, _i(32767)).anomalies == ()
    m = one(sess, _i(0))
    assert m.anomalies == () and m.fields["tx_seq"] == 0


# --- framing ----------------------------------------------------------------------------------

def test_split_partial_frame() -> None:
    for cut in range(len(SINGLE_CMD)):
        assert DECODER.split(SINGLE_CMD[:cut]) == ([], 0), cut
    assert DECODER.split(SINGLE_CMD) == ([SINGLE_CMD], len(SINGLE_CMD))


def test_split_several_apdus_in_one_segment() -> None:
    stream = STARTDT_ACT + SINGLE_CMD + FLOAT_MEAS + STARTDT_CON[:3]
    pdus, used = DECODER.split(stream)
    assert pdus == [STARTDT_ACT, SINGLE_CMD, FLOAT_MEAS] and used == len(stream) - 3
    sess = new()
    kinds = [one(sess, p, True).kind for p in pdus]
    assert kinds == ["startdt_act", "c_sc_na_1", "m_me_nc_1"]


def test_split_resync_on_garbage() -> None:
    assert DECODER.split(b"GET / HTTP/1.1\r\n") == ([], -1)
    assert DECODER.split(h("68 02 00 00")) == ([], -1)                # length below 4
    assert DECODER.split(h("16")) == ([], -1)
    pdus, used = DECODER.split(STARTDT_ACT + h("16 03 01 00"))
    assert (pdus, used) == ([STARTDT_ACT], 6)


def test_probe() -> None:
    for pdu in (STARTDT_ACT, STARTDT_CON, SINGLE_CMD, FLOAT_MEAS, h("68 04 01 00 7e 14"),
                STARTDT_ACT + SINGLE_CMD):
        assert DECODER.probe(pdu), pdu.hex()
    assert not DECODER.probe(h("68 04 | 05 00 00 00"))                # undefined U function
    assert not DECODER.probe(h("68 04 | 07 00 00 00 | 16"))           # followed by no APDU
    assert not DECODER.probe(apdu(I0, "2a 01 06 00 0a00 | 020000 | 01"))   # type 42 unused
    assert not DECODER.probe(apdu(I0, "2d 01 00 00 0a00 | 020000 | 01"))   # cause 0
    assert not DECODER.probe(h("68 fe 00 00 00 00"))                  # length 254
    assert not DECODER.probe(b"\x16\x03\x01\x00\x85\x01")
    assert DECODER.name == "iec104" and DECODER.tcp_ports == frozenset({2404})


# --- malformed input: each anomaly by name ----------------------------------------------------

@pytest.mark.parametrize("pdu,anomaly", [
    (h("69 04 07 00 00 00"), "iec104.invalid_start"),
    (h("68 04 07 00"), "iec104.truncated"),                              # control cut
    (h("68 0e 00 00 00 00 2d 01 06 00"), "iec104.truncated"),            # length 14, 8 there
    (h("68 05 07 00 00 00 00"), "iec104.invalid_length"),                # U with an extra octet
    (h("68 fe 00 00 00 00") + bytes(254), "iec104.invalid_length"),      # length 254
    (h("68 07 00 00 00 00 2d 01 06"), "iec104.invalid_length"),          # I, half a DUI
    (apdu(I0, "2d 01 06 00 0a00 | 020000 | 01 01"), "iec104.invalid_length"),   # extra octet
    (apdu(I0, "2d 02 06 00 0a00 | 020000 | 01"), "iec104.invalid_length"),      # 2 objects, 1
    (apdu(I0, "2d 00 06 00 0a00"), "iec104.invalid_length"),             # no objects
    (apdu(I0, "2a 01 06 00 0a00 | 020000 | 01"), "iec104.unknown_type"),
    (apdu(I0, "2d 01 0e 00 0a00 | 020000 | 01"), "iec104.unknown_cot"),  # cause 14 reserved
    (apdu(I0, "2d 01 00 00 0a00 | 020000 | 01"), "iec104.unknown_cot"),  # cause 0
    (h("68 04 05 00 00 00"), "iec104.invalid_control"),                  # no U function
    (h("68 04 0f 00 00 00"), "iec104.invalid_control"),                  # two U functions
    (h("68 04 01 05 00 00"), "iec104.invalid_control"),                  # S, reserved octet
])
def test_malformed(pdu: bytes, anomaly: str) -> None:
    m = new().feed(pdu, True, 0.0)[0]         # not safe_feed: the decoder must not raise
    assert anomaly in m.anomalies, m
    assert m.proto == "iec104" and "iec104.malformed" not in m.anomalies


def test_private_cause_is_named_not_flagged() -> None:
    m = one(new(), apdu(I0, "01 01 30 00 0a00 | 010000 | 00"))       # cause 48
    assert m.fields["cot"] == "private" and m.anomalies == ()


def test_every_truncation_decodes() -> None:
    for pdu in [SINGLE_CMD, FLOAT_MEAS, STARTDT_ACT] + [apdu(I0, v[0]) for v in ELEMENT_VECTORS]:
        for cut in range(len(pdu)):
            m = new().feed(pdu[:cut], True, 0.0)[0]
            assert m.anomalies, (pdu.hex(), cut)


# --- the zeek-iec104 APDU vectors -------------------------------------------------------------

_COTS = {"act": "activation", "actcon": "activation_con", "actterm": "activation_term",
         "spont": "spontaneous", "init": "initialized", "inrogen": "interrogated_by_station"}


def _vector_apdus(path: Path) -> list[tuple[bytes, str]]:
    """The bytes of each APDU in a .test file, with the annotation text that describes it."""
    data = b""
    notes: list[str] = []
    starts: list[int] = []
    for line in path.read_text().splitlines():
        code, _, note = line.partition(";")
        if note.startswith(";"):
            continue                    # ";;" lines are prose
        if "Apdu len=" in note:
            starts.append(len(notes))
        data += bytes.fromhex(code.strip().replace(" ", ""))
        notes.append(note)
    pdus, used = DECODER.split(data)
    if used < len(data):
        pdus.append(data[used:])        # c_rd_na_1-sq announces 27 octets and has 25
    assert len(pdus) == len(starts), path.name
    bounds = starts + [len(notes)]
    return [(p, "\n".join(notes[bounds[i]:bounds[i + 1]])) for i, p in enumerate(pdus)]


def _groups(pattern: str, text: str) -> tuple[str, ...]:
    match = re.search(pattern, text)
    assert match, pattern
    return match.groups()


def _ints(pattern: str, text: str) -> list[int]:
    return [int(v) for v in re.findall(pattern, text)]


VECTOR_FILES = sorted(VECTORS.glob("*.test")) if VECTORS.is_dir() else []


@needs_vectors
@pytest.mark.parametrize("path", VECTOR_FILES, ids=[p.stem for p in VECTOR_FILES])
def test_apdu_vectors(path: Path) -> None:
    for pdu, note in _vector_apdus(path):
        m = one(new(), pdu)
        f = m.fields
        if "Ctrl_s" in note:
            assert f["apci_type"] == "S" and f["rx_seq"] == _ints(r"rsn=(\d+)", note)[0]
            assert m.anomalies == ()
            continue
        ssn, rsn = _groups(r"ssn=(\d+) rsn=(\d+)", note)
        assert (f["tx_seq"], f["rx_seq"]) == (int(ssn), int(rsn))
        assert f["type"] == _groups(r"TypeID::(\w+)", note)[0].lower()
        nobj, sq = map(int, _groups(r"nobj=(\d+) sq=(\d)", note))
        assert (f["num_objects"], f["sq"]) == (nobj, bool(sq))
        cot, pn, test = _groups(r"CoT::(\w+) pn=(\d) test=(\d)", note)
        assert (f["cot"], f["negative"], f["test"]) == (_COTS[cot.lower()], pn == "1",
                                                        test == "1")
        assert f["originator"] == _ints(r"originator_address=(\d+)", note)[0]
        assert f["common_address"] == _ints(r"common_address=(\d+)", note)[0]
        objs = f["objects"]
        assert len(objs) == min(nobj, 64)
        base = _ints(r"base_addr=(\d+)", note)
        addrs = _ints(r"obj_addr=(\d+)", note)
        if base:
            assert [o["ioa"] for o in objs] == [base[0] + i for i in range(len(objs))]
        elif addrs:
            assert [o["ioa"] for o in objs][:len(addrs)] == addrs[:len(objs)]
        for key, pattern in (("value", r"r32=(-?[\d.]+)"), ("value", r"sva=(-?\d+)"),
                             ("value", r"spi=(\d)"), ("value", r"dpi=(\d)"),
                             ("qualifier", r"qoi=(\d+)"), ("value", r"rcs=(\d)")):
            want = [float(v) for v in re.findall(pattern, note)][:len(objs)]
            if not want:
                continue
            got = [o[key] for o in objs][:len(want)]
            assert all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-3)
                       for a, b in zip(got, want)), (path.name, pattern, got, want)
        invalid = _ints(r"::(?:QDS|SIQ|DIQ) .*iv=(\d)", note)[:len(objs)]
        assert [int("iv" in o["quality"]) for o in objs[:len(invalid)]] == invalid
        millis = _ints(r"ms=(\d+)", note)[:len(objs)]
        stamps = [o["time"] for o in objs if "time" in o][:len(millis)]
        assert [int(t[-6:-4]) * 1000 + int(t[-3:]) for t in stamps] == millis
        if f["type"] == "c_rd_na_1" and "raw_data" in note:
            # zeek-iec104's synthetic read commands carry data the standard does not have
            assert "iec104.invalid_length" in m.anomalies
            assert set(m.anomalies) <= {"iec104.invalid_length", "iec104.truncated"}
        else:
            assert m.anomalies == (), (path.name, m.anomalies)


@needs_vectors
def test_apdu_vector_timestamps() -> None:
    (pdu, _), = _vector_apdus(VECTORS / "c_se_tb_1.test")
    assert one(new(), pdu).fields["objects"][0]["time"] == "2024-07-16T09:03:55.773"
    first = _vector_apdus(VECTORS / "m_me_tf_1-x2.test")[0][0]
    assert one(new(), first).fields["objects"][0]["time"] == "2023-12-05T13:30:52.165"


# --- fuzz -------------------------------------------------------------------------------------

SEEDS = [STARTDT_ACT, STARTDT_CON, SINGLE_CMD, FLOAT_MEAS, h("68 04 01 00 7e 14")] + [
    apdu(I0, v[0]) for v in ELEMENT_VECTORS]


def _vsq(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 7:
        buf[7] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0x81, 0xFF, rng.randrange(256)))  # VSQ


def _type_id(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 6:
        buf[6] = rng.randrange(1, 128)              # any type id


def _more_apdus(rng: random.Random, buf: bytearray) -> None:
    buf.extend(rng.choice(SEEDS))                   # several APDUs in one segment


MUTATE = fuzz.Mutator((fuzz.overwrite, fuzz.truncate, fuzz.insert(8), _vsq, _type_id, _more_apdus),
                      fix=fuzz.length_field(1, 1, less=2, chance=0.6))   # the APDU length


def test_fuzz_no_exception_escapes() -> None:
    def check(m: Message) -> bool:
        return len(m.fields.get("objects", ())) <= 64 and fuzz.writable(m)
    assert fuzz.run(DECODER, SEEDS, MUTATE, seed=0x2404, session=new, check=check) >= 100_000


# --- real capture -----------------------------------------------------------------------------

# tshark 4.0 names the fields iec60870_104.* / iec60870_asdu.*; older and newer ones 104apci.*
_FIELD_SETS = (
    ("iec60870_104", ["iec60870_104.type", "iec60870_104.utype", "iec60870_asdu.typeid",
                      "iec60870_asdu.causetx", "iec60870_asdu.addr", "iec60870_104.tx",
                      "iec60870_104.rx"]),
    ("104apci", ["104apci.type", "104apci.utype", "104asdu.typeid", "104asdu.causetx",
                 "104asdu.addr", "104apci.tx", "104apci.rx"]),
)


def _tshark_apdus(path: Path) -> dict[tuple[str, int], list[tuple]]:
    for display, fields in _FIELD_SETS:
        try:
            rows = tshark_rows(path, display, fields)
            break
        except subprocess.CalledProcessError:
            continue
    else:
        pytest.fail("tshark knows neither the iec60870_104 nor the 104apci fields")
    out: dict[tuple[str, int], list[tuple]] = defaultdict(list)
    for row in rows:
        key = ((row[0] or row[1])[0], int((row[2] or row[3])[0]))
        types, utypes, tids, cots, addrs, txs, rxs = (list(c) for c in row[4:11])
        # Each field lists its occurrences in APDU order: I takes a type id, cause, address,
        # N(S) and N(R); S takes an N(R); U takes a U type.
        for t in types:
            kind = int(t, 0)
            if kind == 0:
                out[key].append(("I", int(tids.pop(0)), int(cots.pop(0)), int(addrs.pop(0)),
                                 int(txs.pop(0)), int(rxs.pop(0))))
            elif kind == 1:
                out[key].append(("S", int(rxs.pop(0))))
            else:
                out[key].append(("U", int(utypes.pop(0), 0)))
    return out


@needs_tshark
def test_pipeline_agrees_with_tshark() -> None:
    paths = fixture_pcaps("iec104")
    if not paths:
        pytest.skip("no IEC 104 fixture captures")
    for path in paths:
        ours: dict = defaultdict(list)
        for r in agent_records(path, "iec104"):
            f = r["iec104"]
            if f.get("apci_type") == "I":
                t: tuple = ("I", f["type_id"], f["cot_code"], f["common_address"], f["tx_seq"],
                            f["rx_seq"])
            elif f.get("apci_type") == "S":
                t = ("S", f["rx_seq"])
            else:
                t = ("U", f.get("u_func_code", 0) >> 2)   # tshark's U type: the function bits
            ours[(r["src_ip"], r["src_port"])].append(t)
            assert not r["anomalies"], r
        theirs = _tshark_apdus(path)
        matched, total, diffs = agreement(ours, theirs)
        print(f"{path.name}: {matched}/{total} APDUs agree with tshark")
        assert total >= 100 and matched / total >= 0.99, diffs[:5]
