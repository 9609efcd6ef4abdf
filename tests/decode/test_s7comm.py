"""S7comm over ISO-on-TCP: byte vectors from real captures laid out field by field, pairing,
userdata reassembly, SZL identity, anomalies, and whole captures checked against tshark and
the Zeek/ICSNPP S7comm baselines."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge_agent import config
from edge_agent.agent import Pipeline
from edge_agent.capture.source import FileSource
from edge_agent.decode import Limits, Message
from edge_agent.decode.cotp import DECODER, TPKT, COTPData, COTPSession
from edge_agent.decode.s7comm import S7AckHeader, S7AnyItem, S7Header, S7UserDataParam
from edge_agent.events import to_record
from tests.decode import fuzz

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("EDGE_AGENT_SHARED", ROOT.parent / "shared")) / "fixtures"
PCAPS = FIXTURES / "pcaps" / "s7comm"
BASELINES = FIXTURES / "baselines" / "s7comm"
TSHARK = shutil.which("tshark")
needs_fixtures = pytest.mark.skipif(not PCAPS.is_dir(), reason=f"no fixture captures at {PCAPS}")
needs_tshark = pytest.mark.skipif(TSHARK is None,
                                  reason="tshark not installed (apt-get install tshark)")


def h(text: str) -> bytes:
    """Hex with spaces and ``|`` separators, so vectors can be laid out field by field."""
    return bytes.fromhex(text.replace("|", " "))


def tpkt(s7: bytes, eot: bool = True) -> bytes:
    """Wrap an S7 PDU in a TPKT and a class 0 COTP DT TPDU, with the dpkt header classes."""
    dt = bytes(COTPData(nr_eot=0x80 if eot else 0x00, data=s7))
    return bytes(TPKT(length=4 + len(dt), data=dt))


def feed(sess: COTPSession, s7: bytes, from_client: bool) -> Message:
    msgs = DECODER.safe_feed(sess, tpkt(s7), from_client, 0.0)
    assert len(msgs) == 1, msgs
    return msgs[0]


def session(**limits: int) -> COTPSession:
    sess = DECODER.session(Limits(**limits))
    assert isinstance(sess, COTPSession)
    return sess


# --- vectors (snap7.pcap, s7ident.pcap, the S7 connection in s7comm_plus.pcap) -----------------
# Header: protocol id | rosctr | redundancy id | pdu ref | param length | data length
#         [| error class | error code] for ack and ack_data; then parameter, then data.

SETUP_JOB = h("32 01 | 0000 | 0000 | 0008 | 0000"
              "| f0 00 | 0001 | 0001 | 01e0")          # setup: amq calling 1, called 1, PDU 480
SETUP_ACK = h("32 03 | 0000 | 0000 | 0008 | 0000 | 00 00"
              "| f0 00 | 0001 | 0001 | 00f0")          # PLC grants PDU 240
READ_JOB = h("32 01 | 0000 | 0001 | 000e | 0000"
             "| 04 01"                                 # read var, 1 item
             "| 12 0a 10 | 02 | 0001 | 0000 | 82 | 000008")  # S7ANY BYTE x1, DB0, Q, 1.0
READ_ACK = h("32 03 | 0000 | 0001 | 0002 | 0005 | 00 00"
             "| 04 01"
             "| ff 04 0008 | 00")                      # success, length 8 bits, value 0x00
WRITE_JOB = h("32 01 | 0000 | 0002 | 000e | 0005"
              "| 05 01 | 12 0a 10 | 02 | 0001 | 0000 | 82 | 000008"
              "| 00 04 0008 | 08")                     # data: reserved, 8 bits, value 0x08
WRITE_ACK = h("32 03 | 0000 | 0002 | 0002 | 0001 | 00 00 | 05 01 | ff")
# Userdata: param head 000112 | param length | method | type/group | subfunction | seq
SZL_REQ = h("32 07 | 0000 | 0500 | 0008 | 0008"
            "| 000112 | 04 | 11 | 44 | 01 | 00"      # request, CPU functions, read SZL
            "| ff 09 0004 | 0011 | 0000")             # SZL id 0x0011, index 0
SZL_0011_RESP = h(
    "32 07 | 0000 | 0500 | 000c | 007c"
    "| 000112 | 08 | 12 | 84 | 01 | 00 | 00 | 00 | 0000"  # response; unit ref, last, error
    "| ff 09 0078 | 0011 | 0000 | 001c | 0004"           # id, index, record length 28, 4 records
    "| 0001 | 36455337203331352d32454831342d3041423020 | 00c0 | 0004 | 0001"   # module
    "| 0006 | 36455337203331352d32454831342d3041423020 | 00c0 | 0004 | 0001"   # hardware
    "| 0007 | 2020202020202020202020202020202020202020 | 00c0 | 5603 | 0206"   # FW "V" 3.2.6
    "| 0081 | 426f6f74204c6f61646572202020202020202020 | 0000 | 4120 | 0909")  # boot loader
START_UPLOAD_JOB = h("32 01 | 0000 | 0800 | 0012 | 0000"
                     "| 1d | 00 | 0000 | 00000000"    # start upload, status, -, upload id
                     "| 09 | 5f3042303030303041")     # file name "_0B00000A": SDB 0, active
START_UPLOAD_NAK = h("32 02 | 0000 | 0800 | 0000 | 0000 | d2 41")   # ack, error 0xd241
PLC_STOP_JOB = h("32 01 | 0000 | 1c00 | 0010 | 0000"
                 "| 29 | 0000000000 | 09 | 505f50524f4752414d")      # "P_PROGRAM"
PI_START_JOB = h("32 01 | 0000 | 1f00 | 0016 | 0000"
                 "| 28 | 000000000000fd | 0002 | 4320"              # parameter block "C "
                 "| 09 | 505f50524f4752414d")                        # "P_PROGRAM": cold start
PI_INSE_JOB = h("32 01 | 0000 | 2000 | 001c | 0000"
                "| 28 | 000000000000fd | 000a | 01 00 | 3041303030303150"  # 1 block: DB 1 P
                "| 05 | 5f494e5345")                                 # "_INSE"
SET_CLOCK_REQ = h("32 07 | 0000 | 1700 | 0008 | 000e"
                  "| 000112 | 04 | 11 | 47 | 02 | 00"               # time functions, set clock
                  "| ff 09 000a | 00 19 | 16 02 08 23 08 10 00 02")  # 2016-02-08 23:08:10.000


# --- round trip through the dpkt header classes -----------------------------------------------

def test_round_trip_read_var() -> None:
    item = bytes(S7AnyItem(transport_size=2, count=1, db_number=0, area=0x82,
                           address=(1 << 3).to_bytes(3, "big")))
    param = b"\x04\x01" + item
    pdu = bytes(S7Header(rosctr=1, pdu_ref=1, param_length=len(param), data=param))
    assert pdu == READ_JOB
    hdr = S7Header(pdu)
    assert (hdr.protocol_id, hdr.rosctr, hdr.pdu_ref, hdr.param_length) == (0x32, 1, 1, 14)
    msg = feed(session(), pdu, True)
    assert msg.proto == "s7comm" and msg.kind == "read_var" and msg.is_request is True
    assert msg.anomalies == ()
    assert msg.fields == {
        "rosctr_code": 1, "rosctr": "job", "pdu_ref": 1, "func_code": 4, "func": "read_var",
        "item_count": 1,
        "items": [{"syntax_id": 0x10, "syntax": "s7any", "transport_size_code": 2,
                   "transport_size": "byte", "length": 1, "db_number": 0, "area_code": 0x82,
                   "area": "outputs", "address": "QB1"}]}


def test_round_trip_ack_and_userdata_headers() -> None:
    ack = S7AckHeader(rosctr=2, pdu_ref=0x0800, error_class=0xD2, error_code=0x41)
    assert bytes(ack) == START_UPLOAD_NAK
    ud = bytes(S7UserDataParam(type_group=0x44, subfunction=1)) + h("ff 09 0004 0011 0000")
    built = bytes(S7Header(rosctr=7, pdu_ref=0x0500, param_length=8, data_length=8)) + ud
    assert built == SZL_REQ


# --- functions, request then response ---------------------------------------------------------

def test_setup_communication() -> None:
    sess = session()
    req, resp = feed(sess, SETUP_JOB, True), feed(sess, SETUP_ACK, False)
    assert req.fields["pdu_length"] == 480 and req.kind == "setup_communication"
    assert resp.fields == {"rosctr_code": 3, "rosctr": "ack_data", "pdu_ref": 0,
                           "error_class": 0, "error_code": 0, "error": "no_error",
                           "func_code": 0xF0, "func": "setup_communication",
                           "max_amq_calling": 1, "max_amq_called": 1, "pdu_length": 240}
    assert resp.is_request is False and resp.anomalies == ()


def test_read_var_response_takes_the_request_addresses() -> None:
    sess = session()
    feed(sess, READ_JOB, True)
    resp = feed(sess, READ_ACK, False)
    assert resp.kind == "read_var" and resp.anomalies == ()
    assert resp.fields["items"] == [{"return_code": 0xFF, "return": "success", "data_length": 1,
                                     "data": "00", "syntax": "s7any", "area": "outputs",
                                     "db_number": 0, "address": "QB1", "transport_size": "byte"}]


def test_write_var_carries_the_values() -> None:
    sess = session()
    req = feed(sess, WRITE_JOB, True)
    assert req.kind == "write_var"
    assert req.fields["items"][0]["address"] == "QB1"
    assert (req.fields["items"][0]["data_length"], req.fields["items"][0]["data"]) == (1, "08")
    resp = feed(sess, WRITE_ACK, False)
    assert resp.fields["items"] == [{"return_code": 0xFF, "return": "success",
                                     "syntax": "s7any", "area": "outputs", "db_number": 0,
                                     "address": "QB1", "transport_size": "byte"}]


@pytest.mark.parametrize("area, db, tsize, addr, text", [
    (0x84, 1, 1, 10 << 3 | 2, "DB1.DBX10.2"),        # bit in a data block
    (0x84, 7, 4, 20 << 3, "DB7.DBW20"),
    (0x85, 3, 8, 4 << 3, "DI3.DID4"),
    (0x83, 0, 1, 5 << 3 | 7, "M5.7"),
    (0x81, 0, 6, 0, "ID0"),
    (0x1D, 0, 29, 5, "T5"),                          # timers and counters are numbered
    (0x1C, 0, 28, 12, "C12"),
    (0x80, 0, 2, 256 << 3, "PB256"),
])
def test_item_addresses(area: int, db: int, tsize: int, addr: int, text: str) -> None:
    item = bytes(S7AnyItem(transport_size=tsize, db_number=db, area=area,
                           address=addr.to_bytes(3, "big")))
    param = b"\x04\x01" + item
    msg = feed(session(), bytes(S7Header(rosctr=1, param_length=len(param), data=param)), True)
    assert msg.fields["items"][0]["address"] == text


def test_dbread_and_symbolic_items_are_recognised() -> None:
    dbread = h("12 0c b0 | 02 | 04 0001 0010 | 02 0002 0000")   # 2 areas: 4 @ DB1.16, 2 @ DB2.0
    sym = h("12 06 b2 | 0001 0203 04")                         # S7-1200 symbolic, opaque
    drive = h("12 0a a2 | 01 | 0000 | 0000 | 0371 | 0002")     # Drive ES: parameter 881[2]
    param = b"\x04\x03" + dbread + sym + drive
    msg = feed(session(), bytes(S7Header(rosctr=1, param_length=len(param), data=param)), True)
    assert msg.anomalies == ()
    a, b, c = msg.fields["items"]
    assert a == {"syntax_id": 0xB0, "syntax": "dbread",
                 "areas": [{"length": 4, "db_number": 1, "start_address": 16},
                           {"length": 2, "db_number": 2, "start_address": 0}]}
    assert b == {"syntax_id": 0xB2, "syntax": "s7_1200_symbolic"}
    assert c == {"syntax_id": 0xA2, "syntax": "drive_es_any", "parameter_number": 881,
                 "parameter_index": 2}


def test_start_upload_names_the_block_and_an_error_ack_is_an_exception() -> None:
    sess = session()
    req = feed(sess, START_UPLOAD_JOB, True)
    assert req.kind == "start_upload"
    assert {k: req.fields[k] for k in ("filename", "block_type", "block_number", "filesystem")} \
        == {"filename": "_0B00000A", "block_type": "sdb", "block_number": 0,
            "filesystem": "active"}
    nak = feed(sess, START_UPLOAD_NAK, False)
    # The error is data: named in the fields, no anomaly; the kind counts it as an exception.
    assert nak.anomalies == ()
    assert nak.kind == "start_upload_exception" and nak.is_request is False
    assert (nak.fields["error_class"], nak.fields["error_code"]) == (0xD2, 0x41)
    assert nak.fields["error"] == "not_permitted_in_protection_level"
    assert nak.fields["func"] == "start_upload" and nak.fields["block_type"] == "sdb"


def test_plc_stop_and_plc_control() -> None:
    stop = feed(session(), PLC_STOP_JOB, True)
    assert stop.kind == "plc_stop"
    assert (stop.fields["pi_service"], stop.fields["pi_action"]) == ("P_PROGRAM", "stop")
    start = feed(session(), PI_START_JOB, True)
    assert start.kind == "plc_control"
    assert (start.fields["pi_service"], start.fields["pi_action"], start.fields["pi_args"]) \
        == ("P_PROGRAM", "cold_start", "C ")
    inse = feed(session(), PI_INSE_JOB, True)
    assert inse.fields["pi_action"] == "activate_block"
    assert inse.fields["blocks"] == [{"block_type_code": 0x0A, "block_type": "db",
                                      "block_number": 1, "filesystem": "passive"}]


def test_request_download_lengths() -> None:
    param = h("1a | 00 | 0100 | 00000000 | 09 | 5f30413030303031 50"   # "_0A00001P": DB 1
              "| 0d | 31 303030323638 303030303834")                # load 268, MC7 84
    msg = feed(session(), bytes(S7Header(rosctr=1, param_length=len(param), data=param)), True)
    assert msg.kind == "request_download" and msg.anomalies == ()
    assert (msg.fields["block_type"], msg.fields["block_number"]) == ("db", 1)
    assert (msg.fields["load_memory_length"], msg.fields["mc7_length"]) == (268, 84)


def test_set_clock() -> None:
    msg = feed(session(), SET_CLOCK_REQ, True)
    assert msg.kind == "set_clock" and msg.is_request is True
    assert msg.fields["function_group"] == "time_functions"
    assert msg.fields["clock"] == "2016-02-08T23:08:10.000"


def test_szl_module_identification_feeds_the_inventory() -> None:
    sess = session()
    req = feed(sess, SZL_REQ, True)
    assert req.kind == "read_szl" and req.fields["szl_id"] == 0x0011
    assert "return_code" not in req.fields      # a request's 0xff/0x0a is no result
    resp = feed(sess, SZL_0011_RESP, False)
    assert resp.kind == "read_szl" and resp.is_request is False and resp.anomalies == ()
    assert resp.fields["szl_name"] == "module_identification"
    assert resp.identity == {"order_number": "6ES7 315-2EH14-0AB0", "hardware": "4",
                             "firmware": "V3.2.6", "vendor": "Siemens", "device_type": "plc"}
    # the client does not describe itself by echoing a PLC's lists
    assert feed(session(), SZL_0011_RESP, True).identity is None


def test_fragmented_szl_response_is_reassembled() -> None:
    """snap7.pcap frames 5-8: SZL 0x001C in two data units (reference 0xd5)."""
    first = h("32 07 0000 0200 000c 00da | 000112 08 12 84 01 02 | d5 | 01 | 0000"
              "| ff 09 00d6 | 001c 0000 0022 000a"
              "| 0001" + "53373330302f45543230304d2073746174696f6e5f31".ljust(64, "0")
              + "| 0002" + "504c435f31".ljust(64, "0")
              + "| 0003" + "00" * 32
              + "| 0004" + "4f726967696e616c205369656d656e732045717569706d656e74".ljust(64, "0")
              + "| 0005" + "5320432d423155333933313432303131".ljust(64, "0")
              + "| 0007" + "435055203331352d3220504e2f4450".ljust(64, "0") + "| 0008")
    follow = h("32 07 0000 0300 000c 0004 | 000112 08 12 44 01 02 | 00 00 0000 | 0a 00 0000")
    last = h("32 07 0000 0300 000c 0046 | 000112 08 12 84 01 02 | d5 | 00 | 0000"
             "| ff 09 0042" + "4d4d4320344131414330313900".ljust(64, "0")
             + "| 0009 | 002a f600 0001" + "00" * 26)
    sess = session()
    feed(sess, h("32 07 0000 0200 0008 0008 | 000112 04 11 44 01 00 | ff 09 0004 001c 0000"),
         True)
    a = feed(sess, first, False)
    assert a.identity is None and a.fields["last_data_unit"] is False
    assert feed(sess, follow, True).is_request is True
    b = feed(sess, last, False)
    assert b.anomalies == () and b.fields["data_units_reassembled"] is True
    assert b.fields["memory_card_serial"] == "MMC 4A1AC019"
    assert b.identity == {"vendor_id": 42, "name": "PLC_1", "product": "CPU 315-2 PN/DP",
                          "serial": "S C-B1U393142011", "vendor": "Siemens",
                          "device_type": "plc"}


def test_userdata_push_is_neither_request_nor_response() -> None:
    push = h("32 07 | 0000 | 0000 | 0008 | 0000 | 000112 04 12 | 00 | 02 | 00")  # mode: run
    msg = feed(session(), push, False)
    assert msg.is_request is None and msg.kind == "mode_transition"
    assert msg.fields["mode"] == "run" and msg.anomalies == ()


# --- framing through the ISO-on-TCP decoder ---------------------------------------------------

def test_split_partial_frame() -> None:
    frame = tpkt(READ_JOB)
    assert DECODER.split(frame[:3]) == ([], 0)
    assert DECODER.split(frame[:-1]) == ([], 0)
    assert DECODER.split(frame + frame[:5]) == ([frame], len(frame))


def test_split_several_pdus() -> None:
    frames = [tpkt(p) for p in (SETUP_JOB, READ_JOB, WRITE_JOB)]
    pdus, used = DECODER.split(b"".join(frames))
    assert pdus == frames and used == sum(map(len, frames))
    sess = session()
    kinds = [m.kind for p in pdus for m in DECODER.safe_feed(sess, p, True, 0.0)]
    assert kinds == ["setup_communication", "read_var", "write_var"]


def test_pdu_split_over_two_dt_tpdus() -> None:
    sess = session()
    assert DECODER.safe_feed(sess, tpkt(READ_JOB[:9], eot=False), True, 0.0) == []
    msgs = DECODER.safe_feed(sess, tpkt(READ_JOB[9:]), True, 0.0)
    assert [m.kind for m in msgs] == ["read_var"] and msgs[0].anomalies == ()


# --- malformed input --------------------------------------------------------------------------

MALFORMED = [
    ("short_header", h("32 01 0000 00"), True, "s7comm.invalid_length"),
    ("lengths_disagree", h("32 01 0000 0001 0020 0000 | 04 01"), True, "s7comm.invalid_length"),
    ("item_past_param", h("32 01 0000 0001 0004 0000 | 04 02 12 0a"), True,
     "s7comm.invalid_length"),
    ("job_without_function", h("32 01 0000 0001 0000 0000"), True, "s7comm.invalid_length"),
    ("unknown_function", h("32 01 0000 0001 0001 0000 | 99"), True, "s7comm.unknown_function"),
    ("unsolicited_ack_data", READ_ACK, False, "s7comm.unsolicited_response"),
    ("short_userdata_param", h("32 07 0000 0001 0004 0000 | 000112 04"), True,
     "s7comm.invalid_length"),
    ("unknown_userdata_group", h("32 07 0000 0001 0008 0000 | 000112 04 11 49 01 00"), True,
     "s7comm.unknown_function"),
    ("read_ack_items_missing", h("32 03 0000 0001 0002 0000 00 00 | 04 02"), False,
     "s7comm.invalid_length"),
]


@pytest.mark.parametrize("name, pdu, from_client, anomaly", MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_malformed(name: str, pdu: bytes, from_client: bool, anomaly: str) -> None:
    msg = feed(session(), pdu, from_client)
    assert anomaly in msg.anomalies and msg.proto == "s7comm"


def test_unknown_rosctr_on_an_s7_connection() -> None:
    sess = session()
    feed(sess, SETUP_JOB, True)
    msg = feed(sess, h("32 05 0000 0001 0000 0000"), True)
    assert msg.anomalies == ("s7comm.unknown_rosctr",) and msg.fields["rosctr"] == "unknown"


def test_too_many_pending() -> None:
    sess = session(max_pending=2)
    msgs = [feed(sess, READ_JOB[:4] + bytes([0, i]) + READ_JOB[6:], True) for i in range(3)]
    assert [m.anomalies for m in msgs] == [(), (), ("s7comm.too_many_pending",)]
    assert sess.s7 is not None and len(sess.s7.pending) == 2


def test_fragment_overflow_is_bounded() -> None:
    sess = session(max_pdu=64)
    unit = h("32 07 0000 0200 000c 0054 | 000112 08 12 84 01 02 | d5 | 01 | 0000"
             "| ff 09 0050") + bytes(80)
    msg = feed(sess, unit, False)
    assert "s7comm.reassembly_overflow" in msg.anomalies
    assert sess.s7 is not None and not sess.s7.fragments


def test_every_truncation_decodes() -> None:
    for pdu in (SETUP_ACK, READ_JOB, READ_ACK, WRITE_JOB, SZL_0011_RESP, START_UPLOAD_JOB,
                PI_INSE_JOB, SET_CLOCK_REQ):
        for cut in range(2, len(pdu)):
            msg = feed(session(), pdu[:cut], False)
            assert msg.anomalies, (pdu.hex(), cut)
            assert "cotp.malformed" not in msg.anomalies


# --- fuzz sanity ------------------------------------------------------------------------------

SEEDS = [SETUP_JOB, SETUP_ACK, READ_JOB, READ_ACK, WRITE_JOB, WRITE_ACK, SZL_REQ, SZL_0011_RESP,
         START_UPLOAD_JOB, START_UPLOAD_NAK, PLC_STOP_JOB, PI_START_JOB, PI_INSE_JOB,
         SET_CLOCK_REQ]


def _lengths(rng: random.Random, buf: bytearray) -> None:
    if len(buf) >= 10:
        i = rng.choice((6, 8))                                   # param / data lengths
        buf[i:i + 2] = rng.randrange(0, 300).to_bytes(2, "big")


def _header_octet(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 15:
        buf[rng.choice((1, 10, 11, 12, 13, 14, 15))] = rng.choice((0, 1, 2, 3, 7, 0x12,
                                                                   0x44, 0x84, 0xFF))


def _item_octet(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 16:
        i = rng.randrange(10, len(buf) - 2)
        buf[i] = rng.choice((0, 1, 0x0A, 0x10, 0x12, 0xFF))      # counts, lengths, ids


MUTATE = fuzz.Mutator((fuzz.overwrite, fuzz.truncate, fuzz.append(12), _lengths, _header_octet,
                       _item_octet))


def test_fuzz_no_exception_escapes() -> None:
    decoded = fuzz.run(
        DECODER, SEEDS, lambda rng, seed: tpkt(MUTATE(rng, seed), eot=rng.random() < 0.95),
        seed=0x5337, session=lambda: session(max_pending=8, max_pdu=4096), renew=5000,
        units=lambda rng, i, frame: fuzz.framed(DECODER, frame),
        prefixes=("s7comm.", "s7comm_plus.", "cotp."),
        bounded=lambda s: s.s7 is None or len(s.s7.pending) <= 8)
    assert decoded >= 90_000


# --- real captures ----------------------------------------------------------------------------

PCAP_FILES = sorted(PCAPS.glob("*.pcap*")) if PCAPS.is_dir() else []


def pipeline_records(path: Path) -> list[dict[str, Any]]:
    events: list = []
    Pipeline(config.load(), on_event=events.append).run(FileSource([str(path)]))
    return [to_record(ev) | {"_identity": ev.message.identity} for ev in events]


class _Multi(list):
    """Values of a key that tshark's JSON repeats in one object."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k not in out:
            out[k] = v
        elif isinstance(out[k], _Multi):
            out[k].append(v)
        else:
            out[k] = _Multi([out[k], v])
    return out


def _all(node: Any) -> list[Any]:
    return list(node) if isinstance(node, _Multi) else [node]


def _find(node: Any, key: str) -> Any:
    """First value of ``key`` anywhere below ``node``."""
    if isinstance(node, list):
        for v in node:
            found = _find(v, key)
            if found is not None:
                return found
    elif isinstance(node, dict):
        if key in node:
            return _all(node[key])[0]
        for v in node.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


def _int(v: Any) -> int | None:
    return None if v is None else int(v, 0)


# tshark field -> how to read the same thing from our record
_COMPARED: dict[str, Any] = {
    "s7comm.header.rosctr": lambda r: r["rosctr_code"],
    "s7comm.header.pduref": lambda r: r["pdu_ref"],
    "s7comm.header.errcls": lambda r: r.get("error_class"),
    "s7comm.header.errcod": lambda r: r.get("error_code"),
    "s7comm.param.func": lambda r: r.get("func_code") if r["rosctr_code"] != 7 else None,
    "s7comm.param.itemcount": lambda r: r.get("item_count"),
    "s7comm.param.userdata.type": lambda r: r.get("userdata_type_code"),
    "s7comm.param.userdata.funcgroup": lambda r: r.get("function_group_code"),
    "s7comm.param.userdata.subfunc": lambda r: r.get("subfunction_code"),
    "s7comm.param.userdata.seq_num": lambda r: r.get("seq"),
    "s7comm.param.userdata.dataunitref": lambda r: r.get("data_unit_ref"),
    "s7comm.param.errcod": lambda r: (r["error_class"] << 8 | r["error_code"]
                                      if "error_class" in r else None),
    "s7comm.data.userdata.szl_id": lambda r: r.get("szl_id"),
    "s7comm.data.userdata.szl_index": lambda r: r.get("szl_index"),
}
_SZL_STRINGS = {
    "s7comm.szl.001c.0001.name": "automation_system_name",
    "s7comm.szl.001c.0002.name": "module_name", "s7comm.szl.001c.0004.copyright": "copyright",
    "s7comm.szl.001c.0005.serialn": "serial_number",
    "s7comm.szl.001c.0007.cputypname": "module_type_name",
    "s7comm.szl.001c.0008.snmcmmc": "memory_card_serial",
}


def _tshark_pdus(path: Path) -> dict[tuple, list[dict[str, Any]]]:
    res = subprocess.run([str(TSHARK), "-r", str(path), "-Y", "s7comm", "-T", "json", "-J",
                          "ip tcp s7comm"], capture_output=True, text=True, check=True)
    out: dict[tuple, list[dict[str, Any]]] = {}
    for pkt in json.loads(res.stdout, object_pairs_hook=_pairs):
        layers = pkt["_source"]["layers"]
        key = (_find(layers["ip"], "ip.src"), int(_find(layers["tcp"], "tcp.srcport")),
               _find(layers["ip"], "ip.dst"), int(_find(layers["tcp"], "tcp.dstport")))
        for s7 in _all(layers["s7comm"]):
            pdu = {k: _int(_find(s7, k)) for k in _COMPARED}
            pdu.update({k: _find(s7, k) for k in _SZL_STRINGS})
            for tree in _all(_find(s7, "s7comm.data.userdata.szl_data_tree") or []):
                if isinstance(tree, dict) and tree.get("s7comm.szl.xy11.0001.index") == "0x0001":
                    pdu["order_number"] = tree["s7comm.szl.xy11.0001.anz"]
            out.setdefault(key, []).append(pdu)
    return out


def agreement(path: Path) -> tuple[int, int, list[str]]:
    """PDUs tshark decodes whose every field tshark shows we decode the same, per direction."""
    ours: dict[tuple, list[dict[str, Any]]] = {}
    for r in pipeline_records(path):
        if r["proto"] == "s7comm":
            key = (r["src_ip"], r["src_port"], r["dest_ip"], r["dest_port"])
            ours.setdefault(key, []).append(r["s7comm"])
    theirs = _tshark_pdus(path)
    same = total = 0
    diffs: list[str] = []
    for key, pdus in theirs.items():
        mine = ours.get(key, [])
        for i, t in enumerate(pdus):
            total += 1
            o = mine[i] if i < len(mine) else {}
            bad = [k for k, get in _COMPARED.items()
                   if t[k] is not None and (not o or get(o) != t[k])]
            bad += [k for k, name in _SZL_STRINGS.items()
                    if t[k] is not None and o.get(name) != t[k].strip()]
            if "order_number" in t and o.get("order_number") != t["order_number"].strip():
                bad.append("order_number")
            if bad:
                diffs.append(f"{key} #{i}: {bad} tshark={t} ours={o}")
            else:
                same += 1
        if len(mine) > len(pdus):
            diffs.append(f"{key}: {len(mine) - len(pdus)} more of ours than tshark's")
            total += len(mine) - len(pdus)
    return same, total, diffs


@needs_tshark
@needs_fixtures
@pytest.mark.parametrize("path", PCAP_FILES, ids=[p.name for p in PCAP_FILES])
def test_pcap_agrees_with_tshark(path: Path) -> None:
    same, total, diffs = agreement(path)
    pct = 100.0 * same / total if total else 100.0
    print(f"{path.name}: s7comm {pct:.2f}% agreement with tshark ({same}/{total} PDUs)")
    if path.name != "s7comm_plus.pcap" or total:
        assert total > 0
    assert pct >= 99.0, diffs[:10]


def _zeek_rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()
            if line and not line.startswith("#")]


def _swap(ref: int) -> int:
    # ICSNPP reads the PDU reference little-endian; the wire (and Wireshark) is big-endian.
    return (ref >> 8) | (ref & 0xFF) << 8


def _icsnpp_view(r: dict[str, Any]) -> tuple[str, ...]:
    s = r["s7comm"]
    if s["rosctr_code"] == 7:
        func = f"0x{s['userdata_type_code'] << 4 | s['function_group_code']:02x}"
        sub = f"0x{s['subfunction_code']:02x}"
    else:
        func = f"0x{s['func_code']:02x}"
        # ICSNPP names the PI service of PLC control (0x28) only, not of PLC stop
        sub = s.get("pi_service", "-") if r["is_request"] and s["func_code"] == 0x28 else "-"
    return ("T" if r["src_port"] != 102 else "F", str(s["rosctr_code"]),
            str(_swap(s["pdu_ref"])), func, sub)


@needs_fixtures
@pytest.mark.parametrize("name", ["snap7", "s7ident", "s7comm_plus"])
def test_pcap_matches_icsnpp_s7comm_log(name: str) -> None:
    """Every ICSNPP s7comm.log line, in order, is one of our records. ICSNPP logs no ack
    (rosctr 2) and drops the userdata data unit it cannot reassemble, so we have more."""
    ours = [_icsnpp_view(r) for r in pipeline_records(PCAPS / f"{name}.pcap")
            if r["proto"] == "s7comm"]
    theirs = [(row[6], row[11], row[13], row[14], row[16])
              for row in _zeek_rows(BASELINES / name / "s7comm.log")]
    it = iter(ours)
    found = sum(any(t == o for o in it) for t in theirs)
    pct = 100.0 * found / len(theirs)
    print(f"{name}.pcap: {pct:.2f}% of ICSNPP s7comm.log found ({found}/{len(theirs)})")
    assert pct >= 99.0


@needs_fixtures
def test_pcap_matches_icsnpp_read_szl_and_upload_logs() -> None:
    recs = [r for r in pipeline_records(PCAPS / "snap7.pcap") if r["proto"] == "s7comm"]
    szl = [(str(_swap(r["s7comm"]["pdu_ref"])), f"0x{r['s7comm']['szl_id']:04x}",
            f"0x{r['s7comm']['szl_index']:04x}") for r in recs if "szl_id" in r["s7comm"]]
    theirs = [(row[11], row[13], row[15])
              for row in _zeek_rows(BASELINES / "snap7" / "s7comm_read_szl.log")]
    it = iter(szl)
    assert all(any(t == o for o in it) for t in theirs)
    uploads = [(r["s7comm"]["filename"], r["s7comm"]["block_number"])
               for r in recs if r["is_request"] and r["s7comm"].get("func") == "start_upload"]
    theirs_up = [(row[17], int(row[19]))
                 for row in _zeek_rows(BASELINES / "snap7" / "s7comm_upload_download.log")
                 if row[13] == "Start Upload" and row[6] == "T"]
    assert uploads == theirs_up and len(uploads) == 5
    lengths = [r["s7comm"]["block_length"] for r in recs if "block_length" in r["s7comm"]]
    assert lengths == [216] * 4


@needs_fixtures
def test_pcap_identity_matches_icsnpp_known_devices() -> None:
    recs = pipeline_records(PCAPS / "s7ident.pcap")
    (row,) = _zeek_rows(BASELINES / "s7ident" / "s7comm_known_devices.log")
    system, module, plant, serial = row[11:15]
    comp = [r["s7comm"] for r in recs if r["proto"] == "s7comm"
            and r["s7comm"].get("szl_id") == 0x001C and not r["is_request"]]
    assert comp and comp[0]["automation_system_name"] == system
    assert comp[0]["module_name"] == module and comp[0]["serial_number"] == serial
    assert comp[0]["plant_designation"] == ("" if plant == "(empty)" else plant)
    idents = [r["_identity"] for r in recs if r["_identity"]]
    merged: dict[str, Any] = {}
    for ident in idents:
        merged.update(ident)
    assert merged == {"order_number": "6ES7 315-2EH14-0AB0", "hardware": "4",
                      "firmware": "V3.2.6", "vendor": "Siemens", "device_type": "plc",
                      "vendor_id": 42, "name": module, "product": "CPU 315-2 PN/DP",
                      "serial": serial}
    # only the PLC side reveals itself
    assert all(r["src_port"] == 102 for r in recs if r["_identity"])
