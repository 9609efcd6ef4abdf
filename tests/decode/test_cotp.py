"""ISO-on-TCP (RFC 1006 TPKT + X.224 COTP) on port 102: framing, connection management
TPDUs, DT reassembly, dispatch to S7comm / S7comm-plus / the MMS hook, anomalies, and whole
captures (S7 and IEC 61850 MMS) checked against tshark and the ICSNPP cotp.log baselines."""
from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge_agent.decode import Limits, Message, discover
from edge_agent.decode import cotp
from edge_agent.decode.cotp import DECODER, TPKT, COTPConnect, COTPData, COTPSession
from edge_agent.flows.stream import Stream
from tests.conftest import fixture_pcaps
from tests.decode import fuzz
from tests.decode.test_s7comm import (BASELINES, READ_JOB, SETUP_JOB, TSHARK, _all, _find, _pairs,
                                      _zeek_rows, h, needs_tshark, pipeline_records, tpkt)

# TPKT: version | reserved | length; then the TPDU: length indicator | code | ...
# Connection request/confirm: dst ref | src ref | class+options | parameters (code, len, value)
CR = h("03 00 0016 | 11 e0 | 0000 | 0001 | 00"
       "| c0 01 0a"                          # TPDU size 2^10
       "| c1 02 0100"                        # calling TSAP: PG, 0
       "| c2 02 0101")                       # called TSAP: PG, rack 0 slot 1
CC = h("03 00 0016 | 11 d0 | 0001 | 0006 | 00 | c0 01 0a | c1 02 0100 | c2 02 0101")
MMS_CR = h("03 00 0013 | 0e e0 | 0000 | 0006 | 00 | c1 02 0002 | c2 02 0001")   # IEC 61850 client
DR = h("03 00 000b | 06 80 | 0006 | 0001 | 80")                  # disconnect, reason: normal
DC = h("03 00 000a | 05 c0 | 0001 | 0006")
ER = h("03 00 000c | 07 70 | 0001 | 02 | c1 01 f5")              # invalid TPDU type, offender
ED = h("03 00 000a | 04 10 | 0001 | 80 | 41")                    # expedited data, one octet
DT_SETUP = tpkt(SETUP_JOB)                                       # 02 f0 80 | S7 setup job
MMS_INITIATE = h("03 00 001d | 02 f0 80 | 0d 16 | 05 06 13 01 00 16 01 02 14 02 00 02"
                 "| 33 02 00 01 34 02 00 01")                    # ISO session CONNECT SPDU


def sess(**limits: int) -> COTPSession:
    s = DECODER.session(Limits(**limits))
    assert isinstance(s, COTPSession)
    return s


def one(s: COTPSession, pdu: bytes, from_client: bool = True) -> Message:
    msgs = DECODER.safe_feed(s, pdu, from_client, 0.0)
    assert len(msgs) == 1, msgs
    return msgs[0]


# --- round trip and connection management -----------------------------------------------------

def test_round_trip_connection_request() -> None:
    params = h("c0 01 0a | c1 02 0100 | c2 02 0101")
    tpdu = bytes(COTPConnect(li=6 + len(params), code=0xE0, src_ref=1, data=params))
    assert bytes(TPKT(length=4 + len(tpdu), data=tpdu)) == CR
    hdr = COTPConnect(TPKT(CR).data)
    assert (hdr.li, hdr.code, hdr.dst_ref, hdr.src_ref) == (0x11, 0xE0, 0, 1)
    msg = one(sess(), CR)
    assert msg.proto == "cotp" and msg.is_request is True and msg.anomalies == ()
    assert msg.fields == {"tpdu_code": 0xE, "tpdu": "connection_request", "dst_ref": 0,
                          "src_ref": 1, "class": 0, "extended_formats": False,
                          "tpdu_size": 1024, "calling_tsap": "0100", "called_tsap": "0101",
                          "connection_type_code": 1, "connection_type": "pg", "rack": 0,
                          "slot": 1}
    # CR/CC name no kind: the flow is named after the S7 or MMS messages that follow
    assert msg.kind == "cotp_connect"


def test_connection_confirm() -> None:
    msg = one(sess(), CC, False)
    assert msg.is_request is False and msg.fields["tpdu"] == "connection_confirm"
    assert (msg.fields["dst_ref"], msg.fields["src_ref"]) == (1, 6)
    assert "rack" not in msg.fields            # read from the request only


def test_mms_tsaps_are_not_read_as_rack_and_slot() -> None:
    msg = one(sess(), MMS_CR)
    assert msg.fields["called_tsap"] == "0001" and "rack" not in msg.fields
    assert msg.anomalies == ()


def test_disconnect_error_and_expedited() -> None:
    s = sess()
    dr = one(s, DR, False)
    assert dr.kind == "cotp_disconnect" and dr.anomalies == ()
    assert (dr.fields["reason_code"], dr.fields["reason"]) == (128, "normal")
    assert one(s, DC).kind == "cotp_disconnect_confirm"
    er = one(s, ER, False)
    assert er.kind == "cotp_error"
    assert (er.fields["reject_cause_code"], er.fields["reject_cause"]) == (2, "invalid_tpdu_type")
    ed = one(s, ED)
    assert ed.kind == "cotp_expedited_data" and ed.fields["user_data_length"] == 1


# --- framing ----------------------------------------------------------------------------------

def test_split_partial_frame() -> None:
    assert DECODER.split(CR[:3]) == ([], 0)
    assert DECODER.split(CR[:-1]) == ([], 0)
    assert DECODER.split(CR + DT_SETUP[:6]) == ([CR], len(CR))


def test_split_several_tpdus() -> None:
    buf = CR + CC + DT_SETUP + tpkt(READ_JOB)
    pdus, used = DECODER.split(buf)
    assert pdus == [CR, CC, DT_SETUP, tpkt(READ_JOB)] and used == len(buf)
    s = sess()
    msgs = [m for p in pdus for m in DECODER.safe_feed(s, p, True, 0.0)]
    assert [m.proto for m in msgs] == ["cotp", "cotp", "s7comm", "s7comm"]


def test_split_rejects_what_is_not_tpkt() -> None:
    assert DECODER.split(b"\x16\x03\x01\x00\x10") == ([], -1)       # TLS, not TPKT
    assert DECODER.split(h("03 00 0002 ff")) == ([], -1)            # cannot advance
    assert DECODER.split(CR + b"GET / HTTP/1.1") == ([CR], len(CR))  # good frames first


def test_probe() -> None:
    for good in (CR, CC, MMS_CR, DT_SETUP, DR, ER):
        assert DECODER.probe(good[:256])
    for bad in (b"", CR[:6], b"\x03\x00\x00\x16\x11\x30" + CR[6:], b"GET / HTTP/1.1\r\n",
                h("03 00 0004 00 00 00"), h("03 00 0016 30 e0") + CR[6:]):
        assert not DECODER.probe(bad)


def test_resync_after_picking_up_mid_stream() -> None:
    """A capture started mid-PDU: the stream finds the next TPKT by probing."""
    stream = Stream(65_536, 16)
    stream.add(1000, READ_JOB[5:] + DT_SETUP + CR)      # tail of a TPDU, then two whole ones
    pdus, anomalies = stream.take(DECODER.split, DECODER.probe)
    assert pdus == [DT_SETUP, CR] and anomalies == ["tcp.resync"]


# --- data transfer ----------------------------------------------------------------------------

def test_dt_reassembly_until_eot() -> None:
    s = sess()
    first = bytes(TPKT(length=7 + 9, data=bytes(COTPData(nr_eot=0x00, data=READ_JOB[:9]))))
    assert DECODER.safe_feed(s, first, True, 0.0) == []
    msg = one(s, tpkt(READ_JOB[9:]))
    assert msg.proto == "s7comm" and msg.kind == "read_var" and msg.anomalies == ()
    assert not s.held[True]


def test_dt_reassembly_is_bounded() -> None:
    s = sess(max_pdu=16)
    assert DECODER.safe_feed(s, tpkt(bytes(12), eot=False), True, 0.0) == []
    msg = one(s, tpkt(bytes(12), eot=False))
    assert msg.anomalies == ("cotp.reassembly_overflow",) and s.held_len[True] == 0
    # the other direction is untouched and the next TSDU decodes
    assert one(s, DT_SETUP).kind == "setup_communication"


def test_non_s7_data_is_a_cotp_record_without_the_mms_module(monkeypatch: Any) -> None:
    monkeypatch.setattr(cotp, "_mms_hook", None)
    msg = one(sess(), MMS_INITIATE)
    assert msg.proto == "cotp" and msg.kind == "cotp_data" and msg.anomalies == ()
    assert msg.fields == {"tpdu_code": 0xF, "tpdu": "data", "user_data_length": 22,
                          "spdu_code": 0x0D, "spdu": "connect"}


def test_mms_hook_gets_the_tsdu(monkeypatch: Any) -> None:
    seen: list[tuple[bytes, bool]] = []

    def decode(user_data: bytes, from_client: bool) -> Message | None:
        seen.append((user_data, from_client))
        if user_data[0] != 0x0D:
            return None
        return Message("mms", {"pdu": "initiate_request"}, True, (), "initiate")

    monkeypatch.setattr(cotp, "_mms_hook", decode)
    s = sess()
    msg = one(s, MMS_INITIATE)
    assert (msg.proto, msg.kind) == ("mms", "initiate") and seen[0] == (MMS_INITIATE[7:], True)
    assert one(s, tpkt(b"\x01\x00\x01\x00"), False).proto == "cotp"   # hook declined
    assert one(s, DT_SETUP).proto == "s7comm"                          # S7 never reaches it


def test_mms_hook_is_looked_up_lazily(monkeypatch: Any) -> None:
    monkeypatch.setattr(cotp, "_mms_hook", cotp._MMS_UNSET)
    hook = cotp.mms_hook()
    try:
        from edge_agent.decode import mms  # type: ignore[attr-defined]
    except ImportError:
        assert hook is None
    else:
        assert hook is getattr(mms, "decode", None)


def test_s7_protocol_id_with_a_bad_rosctr_is_not_s7_on_a_fresh_connection(monkeypatch: Any
                                                                           ) -> None:
    """ISO session SPDU 0x32 (minor sync ack) exists: only a valid ROSCTR makes it S7."""
    monkeypatch.setattr(cotp, "_mms_hook", None)
    msg = one(sess(), tpkt(h("32 09 0000 0000 0000 0000")))
    assert msg.proto == "cotp" and not msg.anomalies


# --- malformed input --------------------------------------------------------------------------

MALFORMED = [
    ("tpkt_version", h("04") + CR[1:], "cotp.invalid_tpkt"),
    ("tpkt_length_disagrees", h("03 00 0020") + CR[4:], "cotp.invalid_length"),
    ("li_zero", h("03 00 0007 00 e0 00"), "cotp.invalid_length"),
    ("li_past_end", h("03 00 000a 20 e0 0000 0001 00"), "cotp.invalid_length"),
    ("param_past_li", h("03 00 000e 09 e0 0000 0001 00 | c1 04 01"), "cotp.invalid_length"),
    ("unknown_tpdu", h("03 00 0009 04 30 0001 00"), "cotp.unknown_tpdu"),
    ("cr_without_class", h("03 00 000a 05 e0 0000 0001"), "cotp.invalid_length"),
    ("er_without_cause", h("03 00 0008 03 70 0001"), "cotp.invalid_length"),
    ("too_short", h("03 00 0005 01"), "cotp.invalid_length"),
    ("dt_without_nr", h("03 00 0006 01 f0"), "cotp.invalid_length"),
]


@pytest.mark.parametrize("name, pdu, anomaly", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed(name: str, pdu: bytes, anomaly: str) -> None:
    msgs = DECODER.safe_feed(sess(), pdu, True, 0.0)
    assert msgs and anomaly in msgs[0].anomalies
    assert "cotp.malformed" not in msgs[0].anomalies


def test_dt_framing_anomaly_rides_on_the_s7_record() -> None:
    pdu = h("03 00 0019") + h("02 f0 80") + SETUP_JOB[:-1] + b"\x00\x00"  # TPKT 1 too short
    msg = one(sess(), pdu)
    assert msg.proto == "s7comm" and "cotp.invalid_length" in msg.anomalies


def test_every_truncation_decodes() -> None:
    for pdu in (CR, CC, DR, DC, ER, ED, DT_SETUP):
        for cut in range(1, len(pdu)):
            msgs = DECODER.safe_feed(sess(), pdu[:cut], True, 0.0)
            assert msgs and msgs[0].anomalies, (pdu.hex(), cut)
            assert not any(a.endswith(".malformed") for a in msgs[0].anomalies)


def test_decoder_registration() -> None:
    reg = discover()
    assert reg.for_port("tcp", 50000, 102) == (DECODER, False)
    assert reg.for_port("tcp", 102, 50000) == (DECODER, True)
    assert DECODER.name == "cotp" and DECODER.tcp_ports == frozenset({102})


# --- fuzz sanity ------------------------------------------------------------------------------

SEEDS = [CR, CC, MMS_CR, DR, DC, ER, ED, DT_SETUP, MMS_INITIATE, tpkt(READ_JOB),
         tpkt(h("72 03 0000 | 72 03 0000")), tpkt(h("72 ff 01 00"))]
# COTP carries S7comm, S7comm-plus and MMS, whose messages may also carry COTP's anomalies
ISO_PREFIXES = ("cotp.", "s7comm.", "s7comm_plus.", "mms.")


def _li(rng: random.Random, buf: bytearray) -> None:
    if len(buf) >= 6:
        buf[4] = rng.choice((0, 1, 2, 3, 6, 0x11, 0xFF))                  # LI


def _tpdu_code(rng: random.Random, buf: bytearray) -> None:
    if len(buf) >= 6:
        buf[5] = rng.choice((0xE0, 0xD0, 0x80, 0xC0, 0xF0, 0x70, 0x10, 0x60, 0x30))


def _eot(rng: random.Random, buf: bytearray) -> None:
    if len(buf) >= 7:
        buf[6] = rng.choice((0x00, 0x80, 0x7F))                           # EOT / refs


MUTATE = fuzz.Mutator((fuzz.overwrite, fuzz.truncate, fuzz.append(12), _li, _tpdu_code, _eot),
                      fix=fuzz.length_field(2, 2, chance=0.7))            # TPKT length


def test_fuzz_no_exception_escapes() -> None:
    decoded = fuzz.run(
        DECODER, SEEDS, MUTATE, seed=0x102, session=lambda: sess(max_pending=8, max_pdu=2048),
        renew=10_000, prefixes=ISO_PREFIXES,
        units=lambda rng, i, buf: fuzz.framed(DECODER, buf) + ([buf] if rng.random() < 0.1 else []),
        bounded=lambda s: s.held_len[True] <= 2048 and s.held_len[False] <= 2048)
    assert decoded >= 50_000


# --- real captures ----------------------------------------------------------------------------

ISO_PCAPS = fixture_pcaps("s7comm") + fixture_pcaps("mms")


def _our_tpdus(records: list[dict[str, Any]]) -> dict[tuple, list[int]]:
    """TPDU type per record: cotp records name it, every upper-layer record came in a DT."""
    out: dict[tuple, list[int]] = {}
    for r in records:
        key = (r["src_ip"], r["src_port"], r["dest_ip"], r["dest_port"])
        if r["proto"] == "cotp":
            if "tpdu_code" in r["cotp"]:
                out.setdefault(key, []).append(r["cotp"]["tpdu_code"])
        elif r[r["proto"]]:
            out.setdefault(key, []).append(0xF)
    return out


def _tshark_tpdus(path: Path) -> dict[tuple, list[int]]:
    res = subprocess.run([str(TSHARK), "-r", str(path), "-Y", "cotp", "-T", "json", "-J",
                          "ip tcp cotp"], capture_output=True, text=True, check=True)
    out: dict[tuple, list[int]] = {}
    for pkt in json.loads(res.stdout, object_pairs_hook=_pairs):
        layers = pkt["_source"]["layers"]
        key = (_find(layers["ip"], "ip.src"), int(_find(layers["tcp"], "tcp.srcport")),
               _find(layers["ip"], "ip.dst"), int(_find(layers["tcp"], "tcp.dstport")))
        for layer in _all(layers["cotp"]):
            out.setdefault(key, []).append(int(_find(layer, "cotp.type"), 0))
    return out


@needs_tshark
@pytest.mark.parametrize("path", ISO_PCAPS, ids=[p.name for p in ISO_PCAPS])
def test_pcap_agrees_with_tshark(path: Path) -> None:
    ours, theirs = _our_tpdus(pipeline_records(path)), _tshark_tpdus(path)
    total = sum(len(v) for v in theirs.values())
    same = sum(a == b for k, v in theirs.items() for a, b in zip(v, ours.get(k, [])))
    extra = sum(max(0, len(ours.get(k, [])) - len(v)) for k, v in theirs.items())
    extra += sum(len(v) for k, v in ours.items() if k not in theirs)
    pct = 100.0 * same / (total + extra) if total else 100.0
    print(f"{path.name}: cotp {pct:.2f}% agreement with tshark ({same}/{total + extra} TPDUs)")
    assert total > 0 and pct >= 99.0, (ours, theirs)


@pytest.mark.parametrize("path", fixture_pcaps("mms"), ids=[p.name for p in fixture_pcaps("mms")])
def test_mms_captures_frame_cleanly(path: Path) -> None:
    records = pipeline_records(path)
    assert records
    assert {r["proto"] for r in records} <= {"cotp", "mms"}
    anomalies = [a for r in records for a in r["anomalies"]]
    assert not any(a.startswith(("s7comm", "cotp.")) for a in anomalies), anomalies
    if all(r["proto"] == "cotp" for r in records):     # without the MMS module
        spdus = [r["cotp"].get("spdu") for r in records if r["cotp"]["tpdu"] == "data"]
        assert spdus[:2] == ["connect", "accept"]


@pytest.mark.parametrize("name", ["snap7", "s7ident", "s7comm_plus"])
def test_pcap_matches_icsnpp_cotp_log(name: str) -> None:
    """ICSNPP's cotp.log: one line per TPDU, with is_orig and the TPDU code."""
    path = BASELINES.parent.parent / "pcaps" / "s7comm" / f"{name}.pcap"
    if not path.exists():
        pytest.skip(f"no fixture capture {path}")
    ours = [("T" if r["src_port"] != 102 else "F",
             f"0x{r['cotp']['tpdu_code'] if r['proto'] == 'cotp' else 0xF:02x}")
            for r in pipeline_records(path)
            if r[r["proto"]] and (r["proto"] != "cotp" or "tpdu_code" in r["cotp"])]
    theirs = [(row[6], row[11]) for row in _zeek_rows(BASELINES / name / "cotp.log")]
    print(f"{name}.pcap: {len(ours)} TPDUs, ICSNPP cotp.log {len(theirs)}")
    assert ours == theirs
