"""Omron FINS decoder: frames laid out field by field (UDP and FINS/TCP), pairing, memory
areas, controller data, anomalies, a fuzz run, and the fixture capture against tshark and the
ICSNPP baseline."""
from __future__ import annotations

import random
import struct
from collections import defaultdict
from pathlib import Path

import pytest

from edge_agent.decode import Limits, Message
from edge_agent.decode.omron_fins import (DECODER, FINS_COMMANDS, FINSHeader, FINSTCPHeader,
                                          OmronFINSSession)
from tests.conftest import BASELINES, fixture_pcaps
from tests.decode import fuzz
from tests.test_agreement import agent_records, agreement, needs_tshark, tshark_rows

PCAPS = fixture_pcaps("omron_fins")
needs_fixtures = pytest.mark.skipif(not PCAPS, reason="no FINS fixture captures in shared/")


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


def tcp(frame: bytes, command: int = 2, error: int = 0) -> bytes:
    return bytes(FINSTCPHeader(length=8 + len(frame), command=command, error_code=error,
                               data=frame))


def one(sess: OmronFINSSession, pdu: bytes, from_client: bool = True) -> Message:
    msgs = DECODER.safe_feed(sess, pdu, from_client, 0.0)
    assert len(msgs) == 1
    return msgs[0]


def new() -> OmronFINSSession:
    return DECODER.session(Limits())


# omron_fins_tcp_commands_responses.pcap frames 4 and 5: Run and its response
RUN = h("46494e53 | 00000017 | 00000002 | 00000000 |"   # "FINS", length 23, frame send, ok
        "80 | 00 | 02 |"                               # ICF command+gateway, RSV, GCT 2
        "00 00 00 | 00 00 00 |"                        # DNA DA1 DA2, SNA SA1 SA2
        "7a | 0401 |"                                  # SID, Run
        "0000 | 01")                                   # program number, mode debug
RUN_RESPONSE = h("46494e53 00000016 00000002 00000000 |"
                 "c1 | 00 | 02 | 000000 | 000000 | 7a | 0401 | 0000")  # end code normal
# A UDP memory area read of DM 100-102 by node 0x0a from PLC node 0x01, and its response
READ_DM = h("80 | 00 | 02 | 00 01 00 | 00 0a 00 | 11 | 0101 |"
            "82 | 0064 | 00 | 0003")                   # DM word, address 100, bit 0, 3 words
READ_DM_RESPONSE = h("c0 | 00 | 02 | 00 0a 00 | 00 01 00 | 11 | 0101 | 0000 |"
                     "0001 0002 ffff")


def test_round_trip_tcp_run() -> None:
    tcp_hdr = FINSTCPHeader(RUN)
    assert (tcp_hdr.magic, tcp_hdr.length, tcp_hdr.command, tcp_hdr.error_code) == (
        b"FINS", 23, 2, 0)
    hdr = FINSHeader(tcp_hdr.data)
    assert (hdr.icf, hdr.gct, hdr.sid, hdr.command_code) == (0x80, 2, 0x7A, 0x0401)
    assert tcp(bytes(FINSHeader(sid=0x7A, command_code=0x0401)) + h("0000 01")) == RUN
    sess = new()
    m = one(sess, RUN)
    assert m.anomalies == () and m.is_request is True and m.kind == "run"
    assert m.fields == {
        "tcp_command": 2, "tcp_command_name": "frame_send", "tcp_error_code": 0, "icf": 0x80,
        "gateway": True, "is_response": False, "response_required": True, "gct": 2,
        "dst_net": 0, "dst_node": 0, "dst_unit": 0, "src_net": 0, "src_node": 0,
        "src_unit": 0, "sid": 0x7A, "command_code": 0x0401, "command": "run",
        "program_number": 0, "mode_code": 1, "mode": "debug"}
    r = one(sess, RUN_RESPONSE, False)
    assert r.anomalies == () and r.is_request is False and r.kind == "run"
    assert (r.fields["end_code"], r.fields["end_status"]) == (0, "normal_completion")
    assert r.fields["response_required"] is False and sess.pending == {}


def test_udp_memory_area_read_pairs() -> None:
    sess = new()
    q = one(sess, READ_DM)
    assert q.anomalies == () and q.kind == "memory_area_read" and "tcp_command" not in q.fields
    assert (q.fields["memory_area_code"], q.fields["memory_area"], q.fields["address"],
            q.fields["bit"], q.fields["count"]) == (0x82, "dm_word", 100, 0, 3)
    assert (q.fields["dst_node"], q.fields["src_node"], q.fields["sid"]) == (1, 10, 0x11)
    r = one(sess, READ_DM_RESPONSE, False)
    assert r.anomalies == () and r.fields["values"] == [1, 2, 0xFFFF]
    assert r.fields["memory_area"] == "dm_word" and r.fields["address"] == 100


def test_memory_writes_and_other_commands() -> None:
    sess = new()
    w = one(sess, h("80 00 02 000100 000a00 12 | 0102 | b1 0010 00 0002 | 1234 5678"))
    assert w.kind == "memory_area_write" and w.fields["memory_area"] == "wr_word"
    assert w.fields["values"] == [0x1234, 0x5678] and w.anomalies == ()
    bit = one(sess, h("80 00 02 000100 000a00 13 | 0102 | 30 0064 05 0001 | 01"))
    assert bit.fields["memory_area"] == "cio_bit" and "values" not in bit.fields
    multi = one(sess, h("80 00 02 000100 000a00 14 | 0104 | 82 0000 00 | b0 0001 00"))
    assert [i["memory_area"] for i in multi.fields["items"]] == ["dm_word", "cio_word"]
    param = one(sess, h("80 00 02 000100 000a00 15 | 0201 | 8010 0000 0014"))
    assert (param.fields["parameter_area_code"], param.fields["count"]) == (0x8010, 20)
    prog = one(sess, h("80 00 02 000100 000a00 16 | 0307 | ffff 00000000 0002 | 0000 0000"))
    assert prog.kind == "program_area_write" and prog.fields["program_number"] == 0xFFFF
    clock = one(sess, h("80 00 02 000100 000a00 17 | 0702 | 24 03 15 13 45 30 05"))
    assert clock.fields["clock"] == "2024-03-15T13:45:30"
    for code, name in [(0x0402, "stop"), (0x0C02, "access_right_forced_acquire"),
                       (0x2301, "forced_set_reset"), (0x0308, "program_area_clear"),
                       (0x2101, "error_clear"), (0x0620, "cycle_time_read")]:
        m = one(sess, h("80 00 02 000100 000a00 18") + struct.pack(">H", code))
        assert m.kind == name and m.fields["command"] == name


def test_controller_data_read_reveals_the_plc() -> None:
    sess = new()
    one(sess, h("80 00 02 000100 000a00 05 | 0501 | 00"))
    data = b"CJ2M-CPU33".ljust(20) + b"02.01".ljust(20) + bytes(40) + bytes(12)  # 92 octets
    r = one(sess, h("c0 00 02 000a00 000100 05 | 0501 | 0000") + data, False)
    assert r.anomalies == () and r.kind == "controller_data_read"
    assert (r.fields["controller_model"], r.fields["controller_version"]) == ("CJ2M-CPU33",
                                                                              "02.01")
    assert r.identity == {"model": "CJ2M-CPU33", "firmware": "02.01", "vendor": "OMRON"}
    one(sess, h("80 00 02 000100 000a00 06 | 0501 | 01"))
    r = one(sess, h("c0 00 02 000a00 000100 06 | 0501 | 0000") + bytes(67), False)
    assert r.identity is None and "controller_model" not in r.fields


def test_controller_status_read() -> None:
    sess = new()
    one(sess, h("80 00 02 000100 000a00 07 | 0601"))
    r = one(sess, h("c0 00 02 000a00 000100 07 | 0601 | 0000 | 01 04 0000 0000") + bytes(20),
            False)
    assert (r.fields["status"], r.fields["mode"]) == ("run", "run")


def test_error_end_code_is_an_exception() -> None:
    sess = new()
    one(sess, READ_DM)
    r = one(sess, h("c0 00 02 000a00 000100 11 | 0101 | 1103"), False)   # address range error
    assert r.kind == "memory_area_read_exception" and r.fields["end_code"] == 0x1103
    assert r.fields["end_status"] == "address_range_error" and r.anomalies == ()
    # the network relay error flag (bit 15) does not hide the code
    one(sess, READ_DM)
    r = one(sess, h("c0 00 02 000a00 000100 11 | 0101 | 8401"), False)
    assert r.fields["end_status"] == "undefined_command"


def test_fins_tcp_handshake() -> None:
    sess = new()
    q = one(sess, tcp(h("00000000"), command=0))             # client: assign me a node
    assert q.kind == "node_address_data_send" and q.is_request is True
    assert q.fields["client_node"] == 0 and q.anomalies == ()
    r = one(sess, tcp(h("000000ef 00000001"), command=1), False)
    assert (r.fields["client_node"], r.fields["server_node"]) == (0xEF, 1)
    assert r.is_request is False and r.kind == "node_address_data_send"
    err = one(sess, tcp(b"", command=3, error=0x21), False)
    assert err.kind == "frame_send_error_notification_exception"
    assert err.anomalies == ("omron_fins.tcp_error",)


def test_pending_is_bounded() -> None:
    sess = DECODER.session(Limits(max_pending=4))
    for sid in range(20):
        one(sess, READ_DM[:9] + bytes([sid]) + READ_DM[10:])
    assert len(sess.pending) == 4


# --- framing ----------------------------------------------------------------------------------

def test_split_partial_and_several() -> None:
    for cut in range(len(RUN)):
        assert DECODER.split(RUN[:cut]) == ([], 0), cut
    stream = RUN + RUN_RESPONSE + RUN[:10]
    assert DECODER.split(stream) == ([RUN, RUN_RESPONSE], len(RUN) + len(RUN_RESPONSE))


def test_split_resync_and_bad_magic() -> None:
    assert DECODER.split(b"GET / HTTP/1.1\r\n\r\n") == ([], -1)
    assert DECODER.split(h("46494e53 00000002 00000002")) == ([], -1)   # length 2 < 8
    damaged = b"FINZ" + RUN[4:]
    assert DECODER.split(damaged) == ([damaged], len(damaged))
    m = one(new(), damaged)
    assert m.anomalies == ("omron_fins.bad_magic",) and m.kind == "run"
    assert DECODER.split(RUN + b"\x16\x03\x01\x00\x85\x01" + bytes(12)) == ([RUN], len(RUN))


def test_probe() -> None:
    assert DECODER.probe(RUN) and DECODER.probe(READ_DM) and DECODER.probe(READ_DM_RESPONSE)
    assert not DECODER.probe(b"\x16\x03\x01\x00\x85\x01\x00\x00\x81\x03\x03\x00")
    assert not DECODER.probe(h("80 00 02 000100 000a00 11 | 9999"))      # unknown command
    assert DECODER.name == "omron_fins"
    assert DECODER.tcp_ports == DECODER.udp_ports == frozenset({9600})
    assert FINS_COMMANDS[0x0101] == "memory_area_read" and FINS_COMMANDS[0x0C03] == (
        "access_right_release")


@pytest.mark.parametrize("pdu,anomaly", [
    (b"FINZ" + RUN[4:], "omron_fins.bad_magic"),
    (RUN[:4] + h("00000030") + RUN[8:], "omron_fins.truncated"),          # length past the end
    (RUN[:4] + h("00000010") + RUN[8:], "omron_fins.invalid_length"),     # length short
    (h("80 00 02 000100"), "omron_fins.truncated"),                        # half a header
    (RUN[:16] + h("80 00 02"), "omron_fins.truncated"),
    (h("80 00 02 000100 000a00 11 | 0101 | 82 0064"), "omron_fins.invalid_length"),
    (h("80 00 02 000100 000a00 11 | 0101 | 82 0064 00 0003 00"), "omron_fins.invalid_length"),
    (h("80 00 02 000100 000a00 11 | 0104 | 82 0000"), "omron_fins.invalid_length"),
    (h("80 00 02 000100 000a00 11 | 9999"), "omron_fins.unknown_command"),
    (h("c0 00 02 000a00 000100 11 | 0101"), "omron_fins.invalid_length"),  # no end code
    (h("80 00 02 000100 000a00 11 | 0101") + bytes(2100), "omron_fins.invalid_length"),
    (tcp(h("0000"), command=0), "omron_fins.invalid_length"),
    (tcp(b"", command=9), "omron_fins.unknown_command"),
])
def test_malformed(pdu: bytes, anomaly: str) -> None:
    m = new().feed(pdu, True, 0.0)[0]
    assert anomaly in m.anomalies and m.proto == "omron_fins", m


def test_every_truncation_decodes() -> None:
    for pdu in (RUN, RUN_RESPONSE, READ_DM, READ_DM_RESPONSE):
        for cut in range(len(pdu) - 1):
            m = new().feed(pdu[:cut], True, 0.0)[0]
            assert m.anomalies or m.fields.get("command") in ("run", "memory_area_read"), cut


# --- fuzz -------------------------------------------------------------------------------------

def _command(rng: random.Random, buf: bytearray) -> None:
    if len(buf) >= 12:                                # any command code
        pos = 26 if buf[:4] == b"FINS" and len(buf) >= 28 else 10
        buf[pos:pos + 2] = rng.choice(list(FINS_COMMANDS)).to_bytes(2, "big")


def _icf(rng: random.Random, buf: bytearray) -> None:
    if buf:
        buf[0] = rng.choice((0x80, 0xC0, 0xC1, 0x81, 0x46))


def _fins_tcp_length(rng: random.Random, buf: bytearray) -> None:
    if buf[:4] == b"FINS" and len(buf) >= 8 and rng.random() < 0.7:
        buf[4:8] = struct.pack(">I", len(buf) - 8)


MUTATE = fuzz.Mutator((fuzz.overwrite, fuzz.truncate, fuzz.insert(8), _command, _icf),
                      fix=_fins_tcp_length)


def test_fuzz_no_exception_escapes() -> None:
    seeds = [RUN, RUN_RESPONSE, READ_DM, READ_DM_RESPONSE, tcp(READ_DM), tcp(h("00000000"), 0),
             h("c0 00 02 000a00 000100 05 | 0501 | 0000") + bytes(92),
             h("80 00 02 000100 000a00 14 | 0104 | 82 0000 00 | b0 0001 00"),
             h("c0 00 02 000a00 000100 07 | 0701 | 0000 | 24 03 15 13 45 30 05")]
    fuzz.run(DECODER, seeds, MUTATE, seed=0x2580,
             session=lambda: DECODER.session(Limits(max_pending=8)),
             bounded=lambda s: len(s.pending) <= 8)


# --- real captures ----------------------------------------------------------------------------

@needs_tshark
@needs_fixtures
@pytest.mark.parametrize("path", PCAPS, ids=[p.name for p in PCAPS])
def test_pcap_agrees_with_tshark(path: Path) -> None:
    ours: dict = defaultdict(list)
    for r in agent_records(path, "omron_fins"):
        o = r["omron_fins"]
        ours[(r["src_ip"], r["src_port"])].append((o.get("icf"), o.get("command_code"),
                                                  o.get("end_code"), o.get("sid")))
    theirs: dict = defaultdict(list)
    for row in tshark_rows(path, "omron.command", ["omron.icf", "omron.command",
                                                   "omron.response.code", "omron.sid"]):
        key = (row[0][0], int((row[2] or row[3])[0]))
        icf, cmd, end, sid = (int(c[0], 0) if c else None for c in row[4:8])
        theirs[key].append((icf, cmd, end, sid))
    matched, total, diffs = agreement(ours, theirs)
    print(f"{path.name}: {matched}/{total} = {matched / max(total, 1):.2%} agreement with tshark")
    assert total and matched / total >= 0.99, diffs[:5]


def _code(text: str) -> int:
    return int(text.rsplit("(", 1)[1].rstrip(")"), 0)


@needs_fixtures
def test_pcap_matches_icsnpp_logs() -> None:
    path = PCAPS[0]
    base = BASELINES / "omron_fins" / path.stem
    rows = [line.split("\t") for line in (base / "omron_fins_general.log").read_text()
            .splitlines() if line and not line.startswith("#")]
    theirs = [(_code(r[13]) == 1, _code(r[14]) == 0, int(r[15]), int(r[17], 16),
               int(r[21], 16), int(r[22], 16), _code(r[23]),
               _code(r[24]) if r[24] != "(empty)" else None) for r in rows]
    recs = agent_records(path, "omron_fins")
    ours = [(o["is_response"], o["response_required"], o["gct"], o["dst_node"], o["src_unit"],
             o["sid"], o["command_code"], o.get("end_code")) for o in
            (r["omron_fins"] for r in recs)]
    assert ours == theirs
    # omron_fins_detail.log: controller model/version of the 0501 responses, the clock
    detail = [line.split("\t") for line in (base / "omron_fins_detail.log").read_text()
              .splitlines() if line and not line.startswith("#")]
    models = [r[44] for r in detail if "(0x0501)" in r[5] and "Response" in r[6]]
    assert [o.get("controller_model", "(empty)") for o in (r["omron_fins"] for r in recs)
            if o["command_code"] == 0x0501 and o["is_response"]] == models
    clocks = [r for r in detail if "(0x0701)" in r[5]]
    assert clocks and clocks[0][16:22] == ["2009", "1", "20", "1", "2", "1"]
    assert [o["clock"] for o in (r["omron_fins"] for r in recs) if "clock" in o] == [
        "2009-01-20T01:02:01"] * 2
    print(f"{path.name}: {len(theirs)} ICSNPP general lines equal, {len(models)} models")
