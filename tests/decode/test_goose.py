"""IEC 61850 GOOSE / SV decoder: a captured frame laid out field by field, every Data type,
stNum/sqNum tracking, BER anomalies, a fuzz run, the pipeline on VLAN-tagged frames, and the
fixture captures against tshark and the Zeek GOOSE baseline."""
from __future__ import annotations

import random
from datetime import datetime, timezone
from collections import defaultdict
from pathlib import Path

import dpkt
import pytest

from edge_agent.agent import Pipeline
from edge_agent.capture.source import FileSource
from edge_agent.config import load
from edge_agent.decode import Limits, Message
from edge_agent.decode.goose import DECODER, GooseSession, GSEHeader, tlv, utc_time
from edge_agent.events import to_record
from tests.conftest import BASELINES, fixture_pcaps
from tests.decode import fuzz
from tests.test_agreement import agreement, needs_tshark, tshark_rows

PCAPS = fixture_pcaps("goose")
needs_fixtures = pytest.mark.skipif(not PCAPS, reason="no GOOSE fixture captures in shared/")


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


def ber(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    if n < 0x100:
        return bytes([tag, 0x81, n]) + value
    return bytes([tag, 0x82]) + n.to_bytes(2, "big") + value


def frame(apdu: bytes, appid: int = 1, reserved1: int = 0) -> bytes:
    return bytes(GSEHeader(appid=appid, length=8 + len(apdu), reserved1=reserved1, data=apdu))


T_2000 = h("386ebbf3 421728 0a")                 # 2000-01-02 02:46:11.258166 UTC, quality 0x0a


def bint(n: int) -> bytes:
    """BER INTEGER contents: shortest two's complement (a leading 00 keeps it positive)."""
    return n.to_bytes(n.bit_length() // 8 + 1, "big")


def goose(st: int = 1, sq: int = 0, ref: str = "IED1LD0/LLN0$GO$gcb1", data: bytes | None = None,
          entries: int | None = None, t: bytes = T_2000) -> bytes:
    data = ber(0x83, b"\x01") + ber(0x85, b"\x2a") if data is None else data
    count = entries if entries is not None else _top_level(data)
    body = (ber(0x80, ref.encode()) + ber(0x81, h("0fa0"))          # TAL 4000 ms
            + ber(0x82, b"IED1LD0/LLN0$DS1") + ber(0x83, b"GO1") + ber(0x84, t)
            + ber(0x85, bint(st)) + ber(0x86, bint(sq))
            + ber(0x87, b"\0") + ber(0x88, b"\x01") + ber(0x89, b"\0")
            + ber(0x8A, bytes([count])) + ber(0xAB, data))
    return frame(ber(0x61, body))


def _top_level(data: bytes) -> int:
    off = n = 0
    while off < len(data):
        off = tlv(data, off, len(data))[2]
        n += 1
    return n


def one(sess: GooseSession, pdu: bytes) -> Message:
    msgs = DECODER.safe_feed(sess, pdu, True, 0.0)
    assert len(msgs) == 1
    return msgs[0]


def new() -> GooseSession:
    return DECODER.session(Limits())


# GOOSE.pcap frame 1, after the Ethertype 0x88b8
CAPTURED = h(
    "0001 | 0091 | 0000 | 0000 |"                # APPID 1, length 145, reserved 1 and 2
    "61 81 86 |"                                 # IECGoosePdu, 134 octets
    "80 1a" + b"GEDeviceF650/LLN0$GO$gcb01".hex() + "|"   # [0] gocbRef
    "81 03 009c40 |"                             # [1] timeAllowedtoLive 40000
    "82 18" + b"GEDeviceF650/LLN0$GOOSE1".hex() + "|"     # [2] datSet
    "83 0b" + b"F650_GOOSE1".hex() + "|"         # [3] goID
    "84 08 386ebbf3 421728 0a |"                 # [4] t: seconds, fraction, quality
    "85 01 01 | 86 01 0a |"                      # [5] stNum 1, [6] sqNum 10
    "87 01 00 | 88 01 01 | 89 01 00 |"           # [7] test false, [8] confRev 1, [9] ndsCom
    "8a 01 08 |"                                 # [10] numDatSetEntries 8
    "ab 20" + "83 01 00 | 84 03 03 0000 |" * 4)  # [11] allData: 4 x (boolean, bit-string)


def test_round_trip_captured_frame() -> None:
    hdr = GSEHeader(CAPTURED)
    assert (hdr.appid, hdr.length, hdr.reserved1, hdr.reserved2) == (1, 145, 0, 0)
    assert bytes(GSEHeader(appid=1, length=145, data=hdr.data)) == CAPTURED
    m = one(new(), CAPTURED)
    assert m.proto == "goose" and m.kind == "goose" and m.is_request is None
    assert m.anomalies == ()
    assert m.fields == {
        "appid": 1, "length": 145, "simulation": False,
        "gocb_ref": "GEDeviceF650/LLN0$GO$gcb01", "time_allowed_to_live": 40000,
        "dat_set": "GEDeviceF650/LLN0$GOOSE1", "go_id": "F650_GOOSE1",
        "time": "2000-01-02T02:46:11.258166Z", "time_quality": 10, "st_num": 1, "sq_num": 10,
        "test": False, "conf_rev": 1, "nds_com": False, "num_entries": 8,
        "values": [False, "0000000000000"] * 4, "state_change": False}
    assert m.identity == {"name": "GEDeviceF650"}


def test_every_data_type() -> None:
    data = (ber(0x83, b"\xff")                             # boolean true
            + ber(0x84, h("06 c0"))                        # bit-string, 6 unused bits: "11"
            + ber(0x85, h("ff85"))                         # integer -123
            + ber(0x86, h("00ffffffff"))                   # unsigned 4294967295
            + ber(0x87, h("08 40490fdb"))                  # floating-point single 3.14159...
            + ber(0x87, h("0b 400921fb54442d18"))          # floating-point double pi
            + ber(0x8A, b"on")                             # visible-string
            + ber(0x89, h("beef"))                         # octet-string
            + ber(0x91, T_2000)                            # utc-time
            + ber(0xA2, ber(0x83, b"\x00") + ber(0xA2, ber(0x85, b"\x07")))   # nested structure
            + ber(0xA1, ber(0x85, b"\x01") + ber(0x85, b"\x02")))            # array
    m = one(new(), goose(data=data))
    assert m.anomalies == ()
    v = m.fields["values"]
    assert v[:4] == [True, "11", -123, 4294967295]
    assert abs(v[4] - 3.14159) < 1e-5 and v[5] == pytest.approx(3.141592653589793)
    assert v[6:] == ["on", "beef", "2000-01-02T02:46:11.258166Z", [False, [7]], [1, 2]]
    assert m.fields["num_entries"] == 11


def test_values_are_bounded() -> None:
    data = ber(0x83, b"\x01") * 100
    m = one(new(), goose(data=data, entries=100))
    assert len(m.fields["values"]) == 64 and m.anomalies == ()


def test_utc_time() -> None:
    assert utc_time(h("00000000 800000 00"), 0, 8) == ("1970-01-01T00:00:00.500000Z", 0)
    assert utc_time(T_2000, 0, 8) == ("2000-01-02T02:46:11.258166Z", 10)


def test_simulation_bit() -> None:
    m = one(new(), frame(goose()[8:], reserved1=0x8000))
    assert m.fields["simulation"] is True


# --- stNum / sqNum ----------------------------------------------------------------------------

def test_sequence_tracking() -> None:
    sess = new()
    steps = [
        (goose(5, 0), (), "goose", False),                       # first frame: baseline
        (goose(5, 1), (), "goose", False),                       # retransmission
        (goose(6, 0, t=h("386ebbf4 000000 0a")), (), "goose_state_change", True),
        (goose(6, 1, t=h("386ebbf4 000000 0a")), (), "goose", False),
        (goose(6, 1, t=h("386ebbf4 000000 0a")), ("goose.replay",), "goose", False),
        (goose(6, 4, t=h("386ebbf4 000000 0a")), ("goose.sq_num_gap",), "goose", False),
        (goose(6, 2, t=h("386ebbf4 000000 0a")), ("goose.sq_num_regression",), "goose", False),
        (goose(9, 0), ("goose.st_num_jump",), "goose_state_change", True),
        (goose(3, 0), ("goose.st_num_regression",), "goose", False),
        (goose(4, 3), ("goose.sq_num_gap",), "goose_state_change", True),   # missed sq 0-2
    ]
    for i, (pdu, anomalies, kind, change) in enumerate(steps):
        m = one(sess, pdu)
        assert (m.anomalies, m.kind, m.fields["state_change"]) == (anomalies, kind, change), i


def test_counters_roll_over() -> None:
    sess = new()
    one(sess, goose(7, 0xFFFFFFFF))
    assert one(sess, goose(7, 1)).anomalies == ()               # sqNum wraps (to 0 or 1)
    one(sess, goose(0xFFFFFFFF, 0))
    m = one(sess, goose(1, 0))
    assert m.anomalies == () and m.kind == "goose_state_change"


def test_control_blocks_tracked_apart_and_bounded() -> None:
    sess = DECODER.session(Limits(max_pending=4))
    for i in range(10):
        m = one(sess, goose(1, 0, ref=f"IED{i}/LLN0$GO$gcb"))
        assert m.identity == {"name": f"IED{i}"}
    assert len(sess.blocks) == 4
    m = one(sess, goose(2, 0, ref="IED9/LLN0$GO$gcb"))
    assert m.kind == "goose_state_change" and m.identity is None


# --- Sampled Values ---------------------------------------------------------------------------

def asdu(sv_id: str, cnt: int) -> bytes:
    return ber(0x30, ber(0x80, sv_id.encode())             # svID
               + ber(0x82, cnt.to_bytes(2, "big"))         # smpCnt
               + ber(0x83, h("00000001"))                  # confRev 1
               + ber(0x85, b"\x02")                        # smpSynch: global
               + ber(0x87, bytes(64)))                     # 8 x (value, quality)


def test_sampled_values() -> None:
    apdu = ber(0x60, ber(0x80, b"\x02") + ber(0xA2, asdu("MU01", 3999) + asdu("MU01", 0)))
    m = one(new(), frame(apdu, appid=0x4000))
    assert m.proto == "sv" and m.kind == "sv" and m.anomalies == ()
    assert m.fields == {"appid": 0x4000, "length": 8 + len(apdu), "simulation": False,
                        "num_asdu": 2, "asdus": [
                            {"sv_id": "MU01", "smp_cnt": 3999, "conf_rev": 1, "smp_synch": True},
                            {"sv_id": "MU01", "smp_cnt": 0, "conf_rev": 1, "smp_synch": True}]}
    many = ber(0x60, ber(0x80, b"\x20") + ber(0xA2, asdu("M", 1) * 32))
    assert len(one(new(), frame(many)).fields["asdus"]) == 16


# --- malformed ----------------------------------------------------------------------------------

@pytest.mark.parametrize("pdu,anomaly", [
    # header length 4: below the header itself
    (h("0001 0004 0000 0000") + goose()[8:], "goose.invalid_length"),
    # header length says 200, the frame has fewer octets
    (h("0001 00c8 0000 0000") + goose()[8:], "goose.truncated"),
    # shorter than the header
    (h("0001 00"), "goose.invalid_length"),
    # APDU sequence shorter than the header length says
    (frame(ber(0x61, ber(0x80, b"x")) + bytes(4)), "goose.invalid_length"),
    # indefinite length form
    (frame(h("61 80 80 01 41 00 00")), "goose.malformed_asn1"),
    # length in 5 octets
    (frame(h("61 85 0000000003 800141")), "goose.malformed_asn1"),
    # high tag number form where gocbRef belongs (GOOSE_malformed_asn1.pcap)
    (frame(ber(0x61, h("1f1a 01 41"))), "goose.malformed_asn1"),
    # gocbRef length points past the PDU
    (frame(ber(0x61, h("80 20 4142"))), "goose.truncated"),
    # mandatory fields missing
    (frame(ber(0x61, ber(0x80, b"ref"))), "goose.malformed_asn1"),
    # neither GOOSE nor SV PDU tag
    (frame(ber(0x30, b"")), "goose.malformed_asn1"),
    # numDatSetEntries 5, allData holds 2
    (goose(entries=5), "goose.num_entries_mismatch"),
    # structures nested 6 deep
    (goose(data=ber(0xA2, ber(0xA2, ber(0xA2, ber(0xA2, ber(0xA2, ber(0xA2, b""))))))),
     "goose.malformed_asn1"),
    # UtcTime of 7 octets
    (goose(t=T_2000[:7]), "goose.malformed_asn1"),
    # integer of 12 octets
    (goose(data=ber(0x85, bytes(12))), "goose.malformed_asn1"),
    # SV: an ASDU that is not a SEQUENCE
    (frame(ber(0x60, ber(0x80, b"\x01") + ber(0xA2, ber(0x31, b"")))), "goose.malformed_asn1"),
])
def test_malformed(pdu: bytes, anomaly: str) -> None:
    m = new().feed(pdu, True, 0.0)[0]              # not safe_feed: must not raise
    assert anomaly in m.anomalies, m
    assert m.proto in ("goose", "sv")


def test_truncated_frame_keeps_what_arrived() -> None:
    pdu = CAPTURED[:133]                            # GOOSE_truncated.pcap: 12 octets missing
    m = one(new(), pdu)
    assert m.anomalies == ("goose.truncated",)
    assert m.fields["st_num"] == 1 and m.fields["sq_num"] == 10
    assert m.fields["values"] == [False, "0000000000000", False, "0000000000000", False]


def test_every_truncation_decodes() -> None:
    for pdu in (CAPTURED, goose(), frame(ber(0x60, ber(0x80, b"\x01") + ber(0xA2, asdu("A", 1))))):
        for cut in range(len(pdu)):
            m = new().feed(pdu[:cut], True, 0.0)[0]
            assert m.anomalies, (pdu.hex(), cut)


def test_probe_and_registration() -> None:
    assert DECODER.probe(CAPTURED) and not DECODER.probe(b"\x00\x01\x00\x91\0\0\0\0\x30\x00")
    assert DECODER.name == "goose" and DECODER.ethertypes == frozenset({0x88B8, 0x88BA})


# --- fuzz ---------------------------------------------------------------------------------------

def _ber_length(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 10:                             # a BER length octet gone wild
        buf[rng.randrange(9, len(buf))] = rng.choice((0x80, 0x81, 0x84, 0x85, 0x7F, 0xFF))


def _ber_tag(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 10:                             # a tag swapped for another Data tag
        buf[rng.randrange(8, len(buf))] = rng.choice((0xA1, 0xA2, 0x83, 0x84, 0x87, 0x91,
                                                      0x1F, 0x30, 0x60, 0x61))


MUTATE = fuzz.Mutator((fuzz.overwrite, fuzz.truncate, fuzz.insert(6), _ber_length, _ber_tag),
                      fix=fuzz.length_field(2, 2, chance=0.7))


def test_fuzz_no_exception_escapes() -> None:
    seeds = [CAPTURED, goose(3, 4), goose(data=ber(0xA2, ber(0x87, h("08 40490fdb"))
                                                   + ber(0x91, T_2000) + ber(0x8A, b"x"))),
             frame(ber(0x60, ber(0x80, b"\x02") + ber(0xA2, asdu("MU", 1) + asdu("MU", 2))))]
    # SV messages carry GOOSE's anomalies: one decoder serves both
    fuzz.run(DECODER, seeds, MUTATE, seed=0x61850, from_client=True, prefixes=("goose.",),
             session=lambda: DECODER.session(Limits(max_pending=8)),
             bounded=lambda s: len(s.blocks) <= 8)


# --- the pipeline on Ethernet frames ------------------------------------------------------------

def test_pipeline_vlan_tagged_goose_and_sv(tmp_path: Path) -> None:
    src, goose_dst, sv_dst = h("00a0f4082f77"), h("010ccd010001"), h("010ccd040001")
    tag = h("8100 8005")                              # 802.1Q priority 4, VLAN 5
    sv = frame(ber(0x60, ber(0x80, b"\x01") + ber(0xA2, asdu("MU01", 7))), appid=0x4000)
    frames = [goose_dst + src + tag + h("88b8") + goose(1, 0),
              goose_dst + src + tag + h("88b8") + goose(2, 0),
              sv_dst + src + h("88ba") + sv]
    path = tmp_path / "gse.pcap"
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, raw in enumerate(frames):
            w.writepkt(raw, ts=1_700_000_000 + i)
    recs: list[dict] = []
    Pipeline(load(), on_event=lambda ev: recs.append(to_record(ev))).run(FileSource([str(path)]))
    assert [r["proto"] for r in recs] == ["goose", "goose", "sv"]
    g = recs[1]
    assert g["src_ip"] == "00:a0:f4:08:2f:77" and g["dest_ip"] == "01:0c:cd:01:00:01"
    assert g["src_port"] is None and g["vlan"] == 5 and g["transport"] == "ether"
    assert g["goose"]["state_change"] is True and g["anomalies"] == []
    assert recs[2]["sv"]["asdus"][0]["smp_cnt"] == 7 and "vlan" not in recs[2]


# --- real captures ------------------------------------------------------------------------------

def _records(path: Path) -> list[dict]:
    recs: list[dict] = []
    Pipeline(load(), on_event=lambda ev: recs.append(to_record(ev))).run(FileSource([str(path)]))
    return [r for r in recs if r["proto"] == "goose"]


@needs_tshark
@needs_fixtures
@pytest.mark.parametrize("path", PCAPS, ids=[p.name for p in PCAPS])
def test_pcap_agrees_with_tshark(path: Path) -> None:
    ours: dict = defaultdict(list)
    for r in _records(path):
        g = r["goose"]
        ours[r["src_ip"]].append((g.get("appid"), g.get("gocb_ref"), g.get("st_num"),
                                  g.get("sq_num")))
    theirs: dict = defaultdict(list)
    for row in tshark_rows(path, "goose", ["eth.src", "goose.appid", "goose.gocbRef",
                                           "goose.stNum", "goose.sqNum"]):
        src, appid, ref, st, sq = (c[0] if c else None for c in row[4:9])
        theirs[src].append((int(appid, 0), ref, int(st) if st else None,
                            int(sq) if sq else None))
    matched, total, diffs = agreement(ours, theirs)
    print(f"{path.name}: {matched}/{total} = {matched / max(total, 1):.2%} agreement with tshark")
    assert total and matched / total >= 0.99, diffs[:5]


# Zeek GOOSE log columns -> our record's fields
ZEEK_VOCABULARY = {"appid": "appid", "length": "length", "gocb_ref": "gocb_ref",
                   "time_allowed_to_live": "time_allowed_to_live", "dataset": "dat_set",
                   "go_id": "go_id", "timestamp": "time", "timestamp_quality": "time_quality",
                   "st_num": "st_num", "sq_num": "sq_num", "simulation": "test",
                   "conf_rev": "conf_rev", "nds_com": "nds_com",
                   "num_dat_set_entries": "num_entries"}
ZEEK_ERRORS = {"malformed_asn1": "goose.malformed_asn1", "truncated_packet": "goose.truncated"}


def _zeek_value(col: str, value: str) -> object:
    if col in ("appid", "timestamp_quality"):
        return int(value, 16)
    if col == "timestamp":
        secs = float(value)
        return datetime.fromtimestamp(secs, timezone.utc).isoformat().replace("+00:00", "Z")
    if col in ("simulation", "nds_com"):
        return value == "T"
    if value.isdigit():
        return int(value)
    return value


@needs_fixtures
@pytest.mark.parametrize("path", PCAPS, ids=[p.name for p in PCAPS])
def test_pcap_matches_zeek_goose_log(path: Path) -> None:
    """Zeek's GOOSE analyzer: every field of the frames it parsed, and its parse error as our
    anomaly for those it did not (where it logs zeros, we keep what arrived)."""
    lines = (BASELINES / "goose" / path.stem / "goose.log").read_text().splitlines()
    cols = next(line for line in lines if line.startswith("#fields")).split("\t")[1:]
    rows = [dict(zip(cols, line.split("\t"))) for line in lines
            if line and not line.startswith("#")]
    recs = _records(path)
    assert len(recs) == len(rows)
    checked = 0
    for row, rec in zip(rows, recs):
        assert rec["src_ip"] == row["src_mac"] and rec["dest_ip"] == row["dst_mac"]
        if row["parse_status"] != "ok":
            assert ZEEK_ERRORS[row["parse_error"]] in rec["anomalies"]
            continue
        g = rec["goose"]
        for col, ours in ZEEK_VOCABULARY.items():
            assert g[ours] == _zeek_value(col, row[col]), (col, g[ours], row[col])
            checked += 1
    print(f"{path.name}: {len(rows)} Zeek lines, {checked} fields equal")
    if path.stem == "GOOSE":
        # the publisher restarted between frames 3 and 4: t moved, sqNum went back to 1
        assert [r["anomalies"] for r in recs].count(["goose.sq_num_regression"]) == 1
