"""Modbus/TCP decoder: byte vectors from the spec's examples, framing, pairing, anomalies, and
whole captures checked against tshark and the Zeek/ICSNPP baselines."""
from __future__ import annotations

import difflib
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dpkt
import pytest

from edge_agent.decode import Limits, Message
from edge_agent.decode.modbus import DECODER, MBAP, ModbusSession
from tests.decode import fuzz

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("EDGE_AGENT_SHARED", ROOT.parent / "shared")) / "fixtures"
PCAPS = FIXTURES / "pcaps" / "modbus"
BASELINES = FIXTURES / "baselines" / "modbus"
TSHARK = shutil.which("tshark")
needs_fixtures = pytest.mark.skipif(not PCAPS.is_dir(), reason=f"no fixture captures at {PCAPS}")


def h(text: str) -> bytes:
    """Hex with spaces and ``|`` separators allowed, so vectors can be laid out field by field."""
    return bytes.fromhex(text.replace("|", " "))


def one(sess: ModbusSession, adu: bytes, from_client: bool) -> Message:
    msgs = DECODER.safe_feed(sess, adu, from_client, 0.0)
    assert len(msgs) == 1
    return msgs[0]


def pair(req: bytes, resp: bytes) -> tuple[Message, Message]:
    sess = DECODER.session(Limits())
    return one(sess, req, True), one(sess, resp, False)


# --- round trip through the dpkt header class ------------------------------------------------

def test_round_trip_mbap() -> None:
    pdu = h("03 | 006b | 0003")                    # read holding registers, address 107, 3 regs
    adu = bytes(MBAP(transaction_id=0x1234, length=1 + len(pdu), unit_id=17, data=pdu))
    assert adu == h("1234 | 0000 | 0006 | 11") + pdu
    hdr = MBAP(adu)
    assert (hdr.transaction_id, hdr.protocol_id, hdr.length, hdr.unit_id) == (0x1234, 0, 6, 17)
    assert hdr.data == pdu
    msg = one(DECODER.session(Limits()), adu, True)
    assert msg.fields == {"transaction_id": 0x1234, "unit_id": 17, "func_code": 3,
                          "func": "read_holding_registers", "address": 107, "quantity": 3}
    assert msg.is_request is True and msg.kind == "read_holding_registers"
    assert msg.anomalies == () and msg.proto == "modbus"


# --- every public function code, request then response -----------------------------------------
# MBAP prefix in each vector: transaction id | protocol id | length | unit id, then the PDU.

FUNCTION_VECTORS: list[tuple[str, bytes, dict[str, Any], bytes, dict[str, Any]]] = [
    ("fc1_read_coils",
     h("0001 0000 0006 01 | 01 | 0013 | 000a"),                 # address 19, 10 coils
     {"address": 19, "quantity": 10},
     h("0001 0000 0005 01 | 01 | 02 | cd 01"),                  # byte count 2, coils 27-20, 29-28
     {"byte_count": 2, "values": [1, 0, 1, 1, 0, 0, 1, 1, 1, 0], "address": 19, "quantity": 10}),
    ("fc2_read_discrete_inputs",
     h("0002 0000 0006 01 | 02 | 00c4 | 0016"),                 # address 196, 22 inputs
     {"address": 196, "quantity": 22},
     h("0002 0000 0006 01 | 02 | 03 | ac db 35"),               # 3 bytes, 2 padding bits
     {"byte_count": 3, "values": [0, 0, 1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1,
                                  1, 0, 1, 0, 1, 1], "address": 196, "quantity": 22}),
    ("fc3_read_holding_registers",
     h("0003 0000 0006 01 | 03 | 006b | 0003"),                 # address 107, 3 registers
     {"address": 107, "quantity": 3},
     h("0003 0000 0009 01 | 03 | 06 | 022b 0000 0064"),         # 555, 0, 100
     {"byte_count": 6, "values": [555, 0, 100], "address": 107, "quantity": 3}),
    ("fc4_read_input_registers",
     h("0004 0000 0006 01 | 04 | 0008 | 0001"),                 # address 8, 1 register
     {"address": 8, "quantity": 1},
     h("0004 0000 0005 01 | 04 | 02 | 000a"),                   # 10
     {"byte_count": 2, "values": [10], "address": 8, "quantity": 1}),
    ("fc5_write_single_coil",
     h("0005 0000 0006 01 | 05 | 00ac | ff00"),                 # coil 172 ON
     {"address": 172, "value": 0xFF00},
     h("0005 0000 0006 01 | 05 | 00ac | ff00"),                 # echo
     {"address": 172, "value": 0xFF00}),
    ("fc6_write_single_register",
     h("0006 0000 0006 01 | 06 | 0001 | 0003"),                 # register 1 := 3
     {"address": 1, "value": 3},
     h("0006 0000 0006 01 | 06 | 0001 | 0003"),
     {"address": 1, "value": 3}),
    ("fc7_read_exception_status",
     h("0007 0000 0002 01 | 07"),                               # no data
     {},
     h("0007 0000 0003 01 | 07 | 6d"),                          # output data 0x6d
     {"status": 0x6D}),
    ("fc8_diagnostics",
     h("0008 0000 0006 01 | 08 | 0000 | a537"),                 # return query data, data a537
     {"sub_func_code": 0, "sub_func": "return_query_data", "data": "a537"},
     h("0008 0000 0006 01 | 08 | 0000 | a537"),                 # echo
     {"sub_func_code": 0, "sub_func": "return_query_data", "data": "a537"}),
    ("fc11_get_comm_event_counter",
     h("000b 0000 0002 01 | 0b"),
     {},
     h("000b 0000 0006 01 | 0b | ffff | 0108"),                 # status busy, 264 events
     {"status": 0xFFFF, "event_count": 0x108}),
    ("fc12_get_comm_event_log",
     h("000c 0000 0002 01 | 0c"),
     {},
     h("000c 0000 000b 01 | 0c | 08 | 0000 | 0108 | 0121 | 20 00"),  # status, counts, 2 events
     {"byte_count": 8, "status": 0, "event_count": 0x108, "message_count": 0x121,
      "events": [0x20, 0x00]}),
    ("fc15_write_multiple_coils",
     h("000f 0000 0009 01 | 0f | 0013 | 000a | 02 | cd 01"),    # 10 coils from 19
     {"address": 19, "quantity": 10, "byte_count": 2,
      "values": [1, 0, 1, 1, 0, 0, 1, 1, 1, 0]},
     h("000f 0000 0006 01 | 0f | 0013 | 000a"),
     {"address": 19, "quantity": 10}),
    ("fc16_write_multiple_registers",
     h("0010 0000 000b 01 | 10 | 0001 | 0002 | 04 | 000a 0102"),  # registers 1-2 := 10, 258
     {"address": 1, "quantity": 2, "byte_count": 4, "values": [10, 258]},
     h("0010 0000 0006 01 | 10 | 0001 | 0002"),
     {"address": 1, "quantity": 2}),
    ("fc17_report_slave_id",
     h("0011 0000 0002 01 | 11"),
     {},
     h("0011 0000 0007 01 | 11 | 04 | 4142 | ff | 00"),          # id "AB", run indicator ON, 00
     {"byte_count": 4, "data": "4142ff00"}),
    ("fc20_read_file_record",
     h("0014 0000 0011 01 | 14 | 0e"                             # byte count 14
       "| 06 | 0004 | 0001 | 0002"                               # ref 6, file 4, record 1, 2 regs
       "| 06 | 0003 | 0009 | 0002"),                             # ref 6, file 3, record 9, 2 regs
     {"byte_count": 14, "records": [
         {"reference_type": 6, "file_number": 4, "record_number": 1, "record_length": 2},
         {"reference_type": 6, "file_number": 3, "record_number": 9, "record_length": 2}]},
     h("0014 0000 000f 01 | 14 | 0c"                             # response data length 12
       "| 05 | 06 | 0dfe 0020"                                   # sub-response length 5, ref 6
       "| 05 | 06 | 33cd 0040"),
     {"byte_count": 12, "records": [
         {"reference_type": 6, "values": [0x0DFE, 0x20], "file_number": 4, "record_number": 1},
         {"reference_type": 6, "values": [0x33CD, 0x40], "file_number": 3, "record_number": 9}]}),
    ("fc21_write_file_record",
     h("0015 0000 0010 01 | 15 | 0d"                             # request data length 13
       "| 06 | 0004 | 0007 | 0003 | 06af 04be 100d"),            # ref 6, file 4, rec 7, 3 regs
     {"byte_count": 13, "records": [
         {"reference_type": 6, "file_number": 4, "record_number": 7, "record_length": 3,
          "values": [0x06AF, 0x04BE, 0x100D]}]},
     h("0015 0000 0010 01 | 15 | 0d | 06 | 0004 | 0007 | 0003 | 06af 04be 100d"),  # echo
     {"byte_count": 13, "records": [
         {"reference_type": 6, "file_number": 4, "record_number": 7, "record_length": 3,
          "values": [0x06AF, 0x04BE, 0x100D]}]}),
    ("fc22_mask_write_register",
     h("0016 0000 0008 01 | 16 | 0004 | 00f2 | 0025"),          # address 4, AND f2, OR 25
     {"address": 4, "and_mask": 0xF2, "or_mask": 0x25},
     h("0016 0000 0008 01 | 16 | 0004 | 00f2 | 0025"),
     {"address": 4, "and_mask": 0xF2, "or_mask": 0x25}),
    ("fc23_read_write_multiple_registers",
     h("0017 0000 0011 01 | 17 | 0003 | 0006"                    # read 6 from 3
       "| 000e | 0003 | 06 | 00ff 00ff 00ff"),                   # write 3 at 14, byte count 6
     {"read_address": 3, "read_quantity": 6, "write_address": 14, "write_quantity": 3,
      "byte_count": 6, "values": [255, 255, 255]},
     h("0017 0000 000f 01 | 17 | 0c | 00fe 0acd 0001 0003 000d 00ff"),
     {"byte_count": 12, "values": [0xFE, 0xACD, 1, 3, 0xD, 0xFF], "read_address": 3,
      "read_quantity": 6, "write_address": 14, "write_quantity": 3}),
    ("fc24_read_fifo_queue",
     h("0018 0000 0004 01 | 18 | 04de"),                        # FIFO pointer 1246
     {"fifo_pointer_address": 1246},
     h("0018 0000 000a 01 | 18 | 0006 | 0002 | 01b8 1284"),     # byte count 6, 2 entries
     {"byte_count": 6, "fifo_count": 2, "values": [440, 4740], "fifo_pointer_address": 1246}),
    ("fc43_13_canopen",
     h("002b 0000 0006 01 | 2b | 0d | 0102 03"),               # MEI 13, opaque CANopen bytes
     {"mei_type": 13, "mei": "canopen_general_reference", "data": "010203"},
     h("002b 0000 0005 01 | 2b | 0d | 0405"),
     {"mei_type": 13, "mei": "canopen_general_reference", "data": "0405"}),
    ("fc43_14_read_device_identification",
     h("002c 0000 0005 01 | 2b | 0e | 01 | 00"),               # basic identification from 0
     {"mei_type": 14, "mei": "read_device_identification", "read_dev_id_code": 1,
      "object_id": 0},
     h("002c 0000 001b 01 | 2b | 0e | 01 | 01"                  # code 1, conformity 1
       "| 00 | 00 | 03"                                         # no more, next 0, 3 objects
       "| 00 05 4163 6d65 2e"                                   # 0 vendor name "Acme."
       "| 01 04 5031 3233"                                      # 1 product code "P123"
       "| 02 04 5631 2e30"),                                    # 2 revision "V1.0"
     {"mei_type": 14, "mei": "read_device_identification", "read_dev_id_code": 1,
      "conformity_level": 1, "more_follows": False, "next_object_id": 0,
      "number_of_objects": 3, "object_id": 0,
      "device_id": {"vendor_name": "Acme.", "product_code": "P123",
                    "major_minor_revision": "V1.0"}}),
]


@pytest.mark.parametrize("name,req,req_fields,resp,resp_fields", FUNCTION_VECTORS,
                         ids=[v[0] for v in FUNCTION_VECTORS])
def test_function_codes(name: str, req: bytes, req_fields: dict[str, Any], resp: bytes,
                        resp_fields: dict[str, Any]) -> None:
    q, r = pair(req, resp)
    fc = req[7]
    for msg, expect, is_request in ((q, req_fields, True), (r, resp_fields, False)):
        assert msg.anomalies == (), (name, msg)
        assert msg.is_request is is_request
        assert msg.fields["func_code"] == fc
        assert msg.kind == msg.fields["func"] != "unknown"
        assert msg.fields["transaction_id"] == int.from_bytes(req[:2], "big")
        assert msg.fields["unit_id"] == 1
        body = {k: v for k, v in msg.fields.items()
                if k not in ("transaction_id", "unit_id", "func_code", "func")}
        assert body == expect, name


def test_every_public_function_is_covered() -> None:
    public = {1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43}
    assert {v[1][7] for v in FUNCTION_VECTORS} == public


def test_diagnostics_sub_functions() -> None:
    names = {
        0x01: "restart_communications_option", 0x02: "return_diagnostic_register",
        0x03: "change_ascii_input_delimiter", 0x04: "force_listen_only_mode",
        0x0A: "clear_counters_and_diagnostic_register", 0x0B: "return_bus_message_count",
        0x0C: "return_bus_communication_error_count", 0x0D: "return_bus_exception_error_count",
        0x0E: "return_server_message_count", 0x0F: "return_server_no_response_count",
        0x10: "return_server_nak_count", 0x11: "return_server_busy_count",
        0x12: "return_bus_character_overrun_count", 0x14: "clear_overrun_counter_and_flag",
        0x13: "unknown", 0x15: "unknown",
    }
    sess = DECODER.session(Limits())
    for sub, name in names.items():
        # tid = sub | length 6 | unit 1 | fc 08 | sub-function | data 0000
        msg = one(sess, h(f"00{sub:02x} 0000 0006 01 | 08 | 00{sub:02x} | 0000"), True)
        assert (msg.fields["sub_func_code"], msg.fields["sub_func"]) == (sub, name)
        assert msg.anomalies == ()
        # response: 2-byte counter value
        msg = one(sess, h(f"00{sub:02x} 0000 0006 01 | 08 | 00{sub:02x} | 0042"), False)
        assert msg.fields["sub_func"] == name and msg.fields["data"] == "0042"
        assert msg.anomalies == ()
    # a counter sub-function carries exactly 2 data bytes
    msg = one(sess, h("0099 0000 0007 01 | 08 | 000b | 00 00 00"), True)
    assert msg.anomalies == ("modbus.invalid_length",)


def test_device_identification_private_objects_and_flags() -> None:
    resp = h("0001 0000 0011 01 | 2b | 0e | 04 | 83"            # individual access, extended
             "| ff | 81 | 02"                                   # more follows, next 0x81, 2 objs
             "| 06 03 417070"                                   # 6 user application "App"
             "| 80 02 beef")                                    # 0x80 private, binary
    msg = one(DECODER.session(Limits()), resp, False)
    assert msg.fields["more_follows"] is True and msg.fields["next_object_id"] == 0x81
    assert msg.fields["conformity_level"] == 0x83 and msg.fields["read_dev_id_code"] == 4
    assert msg.fields["device_id"] == {"user_application_name": "App", "128": "\\xbe\\xef"}
    assert msg.anomalies == ("modbus.unsolicited_response",)


def test_device_identification_feeds_the_inventory() -> None:
    q, r = pair(FUNCTION_VECTORS[-1][1], FUNCTION_VECTORS[-1][3])
    assert q.identity is None
    assert r.identity == {"vendor": "Acme.", "product_code": "P123", "firmware": "V1.0"}


def test_values_are_bounded() -> None:
    # read 2000 coils: 250 data bytes, only the first 125 values are kept
    req = h("0001 0000 0006 01 | 01 | 0000 | 07d0")
    resp = h("0001 0000 00fd 01 | 01 | fa") + b"\xff" * 250
    q, r = pair(req, resp)
    assert r.anomalies == () and r.fields["quantity"] == 2000
    assert r.fields["values"] == [1] * 125


# --- exceptions -------------------------------------------------------------------------------

def test_exception_response() -> None:
    req = h("0001 0000 0006 00 | 03 | 0258 | 000a")             # read 10 holding regs at 600
    resp = h("0001 0000 0003 00 | 83 | 02")                      # exception bit | code 2
    q, r = pair(req, resp)
    assert r.fields == {"transaction_id": 1, "unit_id": 0, "func_code": 3,
                        "func": "read_holding_registers", "exception_code": 2,
                        "exception": "illegal_data_address", "address": 600, "quantity": 10}
    assert r.kind == "read_holding_registers_exception"
    assert r.is_request is False and r.anomalies == ()
    assert "exception_code" not in q.fields


def test_exception_from_the_client_side_is_a_response() -> None:
    # modbus_modbus.pcap: the server opened the TCP connection, so a flow oriented by SYN
    # hands its exceptions over as client bytes; the exception bit decides.
    sess = DECODER.session(Limits())
    one(sess, h("0005 0000 0006 0a | 01 | 0000 | 0001"), True)   # read 1 coil, unit 10
    msg = one(sess, h("0005 0000 0003 0a | 81 | 06"), True)      # server busy
    assert msg.is_request is False and msg.anomalies == ()
    assert msg.fields["address"] == 0 and msg.kind == "read_coils_exception"
    assert sess.pending == {}


def test_every_exception_code_is_named() -> None:
    named = {1: "illegal_function", 2: "illegal_data_address", 3: "illegal_data_value",
             4: "slave_device_failure", 5: "acknowledge", 6: "slave_device_busy",
             8: "memory_parity_error", 10: "gateway_path_unavailable",
             11: "gateway_target_device_failed_to_respond"}
    for code in range(256):
        msg = one(DECODER.session(Limits()), h(f"0001 0000 0003 01 | 81 | {code:02x}"), False)
        assert msg.fields["exception_code"] == code
        assert msg.fields["exception"] == named.get(code, "unknown")
        bad = "modbus.invalid_exception_code" in msg.anomalies
        assert bad is (code not in named)


# --- malformed input: each anomaly by name ----------------------------------------------------

@pytest.mark.parametrize("adu,from_client,anomaly", [
    # protocol id 1 instead of 0; the PDU still decodes
    (h("0001 0001 0006 01 | 03 | 0000 | 0001"), True, "modbus.invalid_protocol_id"),
    # MBAP length 6 but one byte more follows it
    (h("0001 0000 0006 01 | 03 | 0000 | 0001 | ff"), True, "modbus.invalid_length"),
    # MBAP length agrees, but FC 3 request body is 5 bytes instead of 4
    (h("0001 0000 0007 01 | 03 | 0000 | 0001 | ff"), True, "modbus.invalid_length"),
    # MBAP length 1: no room for a function code
    (h("0001 0000 0001 01 | 03"), True, "modbus.invalid_length"),
    # MBAP length 300: beyond the 253-byte PDU limit
    (h("0001 0000 012c 01 | 03 | 0000 | 0001"), True, "modbus.invalid_length"),
    # FC 16: byte count 4 but quantity 3 needs 6
    (h("0001 0000 000b 01 | 10 | 0001 | 0003 | 04 | 000a 0102"), True, "modbus.invalid_length"),
    # FC 3 response: byte count 4, two bytes present
    (h("0001 0000 0005 01 | 03 | 04 | 0001"), False, "modbus.invalid_length"),
    # exception response with two code bytes
    (h("0001 0000 0004 01 | 83 | 02 02"), False, "modbus.invalid_length"),
    # MBAP length 6 but the datagram stops after 3 PDU bytes
    (h("0001 0000 0006 01 | 03 | 00 00"), True, "modbus.truncated"),
    # shorter than MBAP + function code
    (h("0001 0000 00"), True, "modbus.truncated"),
    # user-defined function 65 (0x41)
    (h("0001 0000 0004 01 | 41 | 1234"), True, "modbus.unknown_function"),
    # exception code 7 is not assigned
    (h("0001 0000 0003 01 | 83 | 07"), False, "modbus.invalid_exception_code"),
    # coil value other than ff00/0000
    (h("0001 0000 0006 01 | 05 | 0001 | 1234"), True, "modbus.invalid_value"),
    # read 126 registers: above the 125 limit
    (h("0001 0000 0006 01 | 03 | 0000 | 007e"), True, "modbus.invalid_value"),
    # read 0 coils
    (h("0001 0000 0006 01 | 01 | 0000 | 0000"), True, "modbus.invalid_value"),
    # file record reference type 5 instead of 6
    (h("0001 0000 000a 01 | 14 | 07 | 05 | 0001 | 0001 | 0001"), True, "modbus.invalid_value"),
    # read device identification code 9
    (h("0001 0000 0005 01 | 2b | 0e | 09 | 00"), True, "modbus.invalid_value"),
    # MEI type 0 is not assigned
    (h("0001 0000 0003 01 | 2b | 00"), True, "modbus.invalid_value"),
    # FIFO count 32 (max 31) with matching byte count but registers missing
    (h("0001 0000 0006 01 | 18 | 0042 | 0020"), False, "modbus.invalid_value"),
    # device identification says 2 objects, carries 1
    (h("0001 0000 000b 01 | 2b | 0e | 01 | 01 | 00 | 00 | 02 | 00 01 41"), False,
     "modbus.invalid_length"),
])
def test_malformed(adu: bytes, from_client: bool, anomaly: str) -> None:
    sess = DECODER.session(Limits())
    msg = sess.feed(adu, from_client, 0.0)[0]      # not safe_feed: the decoder must not raise
    assert anomaly in msg.anomalies, msg
    assert msg.proto == "modbus" and msg.is_request is from_client
    if len(adu) >= 2:
        assert msg.fields["transaction_id"] == 1


def test_malformed_keeps_partial_fields() -> None:
    msg = one(DECODER.session(Limits()), h("0007 0000 0006 09 | 10 | 00"), True)
    assert msg.fields == {"transaction_id": 7, "unit_id": 9, "func_code": 16,
                          "func": "write_multiple_registers"}
    assert set(msg.anomalies) == {"modbus.truncated", "modbus.invalid_length"}


def test_unknown_function_record() -> None:
    msg = one(DECODER.session(Limits()), h("0001 0000 0004 01 | 5a | 00fe"), True)  # UMAS
    assert msg.fields["func"] == "unknown" and msg.fields["func_code"] == 0x5A
    assert msg.fields["data"] == "00fe" and msg.kind == "unknown"
    exc = one(DECODER.session(Limits()), h("0001 0000 0003 01 | da | 01"), False)
    assert exc.kind == "unknown_exception" and exc.fields["func_code"] == 0x5A


# --- pairing ----------------------------------------------------------------------------------

def test_unsolicited_response() -> None:
    sess = DECODER.session(Limits())
    msg = one(sess, h("0009 0000 0005 01 | 03 | 02 | 0001"), False)
    assert msg.anomalies == ("modbus.unsolicited_response",)
    assert "address" not in msg.fields and msg.fields["values"] == [1]
    # the unit id is part of the key: same transaction, other unit
    one(sess, h("0009 0000 0006 01 | 03 | 0000 | 0001"), True)
    msg = one(sess, h("0009 0000 0005 02 | 03 | 02 | 0001"), False)
    assert msg.anomalies == ("modbus.unsolicited_response",)
    # a response consumes its request: a duplicate response is unsolicited
    assert one(sess, h("0009 0000 0005 01 | 03 | 02 | 0001"), False).anomalies == ()
    msg = one(sess, h("0009 0000 0005 01 | 03 | 02 | 0001"), False)
    assert msg.anomalies == ("modbus.unsolicited_response",)


def test_func_mismatch() -> None:
    q, r = pair(h("0002 0000 0006 01 | 03 | 0010 | 0001"),      # read holding register 16
                h("0002 0000 0005 01 | 04 | 02 | 0001"))         # answered as input register
    assert r.anomalies == ("modbus.func_mismatch",)
    assert "address" not in r.fields                            # no context from another function


def test_too_many_pending() -> None:
    sess = DECODER.session(Limits(max_pending=4))
    for tid in range(4):
        msg = one(sess, h(f"{tid:04x} 0000 0006 01 | 03 | 0000 | 0001"), True)
        assert msg.anomalies == ()
    msg = one(sess, h("0004 0000 0006 01 | 03 | 0000 | 0001"), True)
    assert msg.anomalies == ("modbus.too_many_pending",)
    assert len(sess.pending) == 4
    # the oldest (tid 0) was dropped; tid 1 still pairs
    assert one(sess, h("0000 0000 0005 01 | 03 | 02 | 0001"), False).anomalies == (
        "modbus.unsolicited_response",)
    assert one(sess, h("0001 0000 0005 01 | 03 | 02 | 0001"), False).anomalies == ()
    # a reused transaction id replaces its request instead of growing the table
    for _ in range(10):
        assert one(sess, h("0002 0000 0006 01 | 03 | 0000 | 0001"), True).anomalies == ()
    assert len(sess.pending) == 3
    assert sess.close(1.0) == [] and sess.pending == {}


# --- framing ----------------------------------------------------------------------------------

READ_REQ = h("0001 0000 0006 01 | 03 | 0000 | 0002")
READ_RESP = h("0001 0000 0007 01 | 03 | 04 | 0001 0002")


def test_split_partial_frame() -> None:
    for cut in range(len(READ_RESP)):
        assert DECODER.split(READ_RESP[:cut]) == ([], 0), cut
    assert DECODER.split(READ_RESP) == ([READ_RESP], len(READ_RESP))
    assert DECODER.split(READ_RESP + b"\x00\x02") == ([READ_RESP], len(READ_RESP))


def test_split_several_adus() -> None:
    stream = READ_REQ + READ_RESP + READ_REQ + READ_RESP[:5]
    adus, used = DECODER.split(stream)
    assert adus == [READ_REQ, READ_RESP, READ_REQ]
    assert used == len(stream) - 5
    sess = DECODER.session(Limits())
    kinds = [DECODER.safe_feed(sess, a, a is not READ_RESP, 0.0)[0] for a in adus]
    assert [m.fields["transaction_id"] for m in kinds] == [1, 1, 1]


def test_split_resync_on_garbage() -> None:
    assert DECODER.split(b"GET / HTTP/1.1\r\n\r\n") == ([], -1)           # protocol id 0x2f20
    assert DECODER.split(h("0001 0000 0000 01 03")) == ([], -1)          # length 0
    assert DECODER.split(h("0001 0000 8804 05 07")) == ([], -1)          # length 34820
    assert DECODER.split(h("0001 0010")) == ([], -1)                     # protocol id visible
    # frames before the garbage are handed over, the next call resyncs
    adus, used = DECODER.split(READ_REQ + b"\x16\x03\x01\x00\x85\x01")
    assert (adus, used) == ([READ_REQ], len(READ_REQ))
    assert DECODER.split(b"\x16\x03\x01\x00\x85\x01") == ([], -1)


def test_probe() -> None:
    assert DECODER.probe(READ_REQ) and DECODER.probe(READ_RESP)
    assert DECODER.probe(h("0001 0000 0003 01 | 83 | 02"))
    assert not DECODER.probe(h("0001 0000 0003 01 | 80 | 01"))          # function 0
    assert not DECODER.probe(h("0001 0002 0006 01 | 03 | 0000 0001"))   # protocol id 2
    assert not DECODER.probe(b"\x16\x03\x01\x00\x85\x01\x00\x00\x81")   # TLS hello
    assert not DECODER.probe(READ_REQ[:7])


def test_probe_rejects_zero_rich_binary() -> None:
    # Sun RPC call seen on port 502 (modbus-and-non-modbus-p502.pcap frame 39): at offset 10
    # "0000 0000 0002 00 01" looks like a 2-byte read coils frame, too short to be one.
    rpc = h("80000028 7e86ab4a 00000000 00000002 000186a3 00000003 00000000") + bytes(20)
    assert not any(DECODER.probe(rpc[i:]) for i in range(len(rpc)))
    # TLS extensions "0000 0000 000a 00 0a ..." followed by bytes that are no MBAP header
    tls = h("00000000000a000a0008001d00170018 0019000b00020100")
    assert not DECODER.probe(tls)
    # an exception frame must be exactly unit + function + code
    assert not DECODER.probe(h("fa03 0000 0004 5d 88 8a eb"))
    # a frame followed by another frame is fine
    assert DECODER.probe(READ_REQ + READ_REQ)
    assert not DECODER.probe(READ_REQ + h("0001 0001 0006"))


def test_decoder_registration() -> None:
    assert DECODER.name == "modbus"
    assert DECODER.tcp_ports == frozenset({502}) and DECODER.udp_ports == frozenset({502})


# --- fuzz sanity ------------------------------------------------------------------------------

def _mbap_length(rng: random.Random, buf: bytearray) -> None:
    if len(buf) >= 6:
        buf[4:6] = rng.randrange(0, 300).to_bytes(2, "big")       # plausible lengths


def _function(rng: random.Random, buf: bytearray) -> None:
    if len(buf) >= 8:
        buf[7] = rng.randrange(256)                                # any function code


def _count(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 8:
        buf[8] = rng.choice((0, 1, 0x7F, 0x80, 0xFE, 0xFF))        # counts and MEI types


def _garbage(rng: random.Random, buf: bytearray) -> None:
    buf[:] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))


MUTATE = fuzz.Mutator((fuzz.overwrite, fuzz.truncate, fuzz.append(12), _mbap_length, _function,
                       _count, _garbage), fix=fuzz.length_field(4, 2, less=6, chance=0.5))


def test_fuzz_no_exception_escapes() -> None:
    seeds = [v[1] for v in FUNCTION_VECTORS] + [v[3] for v in FUNCTION_VECTORS]
    decoded = fuzz.run(DECODER, seeds, MUTATE, seed=0x4D42, n=20_000,
                       session=lambda: DECODER.session(Limits(max_pending=8)),
                       # framed, and as a raw UDP datagram
                       units=lambda rng, i, buf: fuzz.framed(DECODER, buf) + [buf],
                       bounded=lambda s: len(s.pending) <= 8)
    assert decoded >= 20_000


def test_every_truncation_decodes() -> None:
    for _, req, _, resp, _ in FUNCTION_VECTORS:
        for adu in (req, resp):
            for cut in range(len(adu)):
                msg = ModbusSession(Limits()).feed(adu[:cut], False, 0.0)[0]
                assert msg.anomalies, (adu.hex(), cut)


# --- real captures ----------------------------------------------------------------------------

def _pcap_messages(path: Path) -> list[tuple[int, Message]]:
    """Decode a capture: in-order TCP payloads per direction, through split and feed.

    A stand-in for the flow table: a segment past the expected sequence number starts afresh
    (what is buffered can no longer be completed), one wholly before it is a retransmission.
    """
    out: list[tuple[int, Message]] = []
    streams: dict[tuple, list] = {}
    sessions: dict[tuple, ModbusSession] = {}
    with path.open("rb") as fh:
        for frame, (ts, raw) in enumerate(dpkt.pcap.Reader(fh), 1):
            ip = dpkt.ethernet.Ethernet(raw).data
            tcp = getattr(ip, "data", None)
            if not isinstance(tcp, dpkt.tcp.TCP) or not tcp.data or 502 not in (tcp.sport,
                                                                                 tcp.dport):
                continue
            from_client = tcp.dport == 502
            key = (ip.src, tcp.sport, ip.dst, tcp.dport)
            data = bytes(tcp.data)
            seq = (tcp.seq + (1 if tcp.flags & dpkt.tcp.TH_SYN else 0)) % 2**32
            st = streams.get(key)
            if st is None:
                st = streams[key] = [seq, b""]
            else:
                delta = (seq - st[0] + 2**31) % 2**32 - 2**31
                if delta > 0:
                    st[1] = b""
                elif delta < 0:
                    if delta + len(data) <= 0:
                        continue
                    data = data[-delta:]
            st[0] = (seq + len(tcp.data)) % 2**32
            buf = st[1] + data
            conn = tuple(sorted(((ip.src, tcp.sport), (ip.dst, tcp.dport))))
            sess = sessions.setdefault(conn, DECODER.session(Limits()))
            while True:
                adus, used = DECODER.split(buf)
                if used < 0:
                    buf = b""
                    break
                buf = buf[used:]
                for adu in adus:
                    out.extend((frame, m) for m in DECODER.safe_feed(sess, adu, from_client, ts))
                if not adus:
                    break
            st[1] = buf
    return out


def _ours(path: Path) -> list[tuple[int, int, int, int | None]]:
    return [(m.fields["transaction_id"], m.fields["unit_id"], m.fields["func_code"],
             m.fields.get("exception_code")) for _, m in _pcap_messages(path)]


def _tshark(path: Path) -> list[tuple[int, int, int, int | None]]:
    res = subprocess.run(
        [str(TSHARK), "-r", str(path), "-Y", "mbtcp", "-T", "fields", "-e", "mbtcp.trans_id",
         "-e", "mbtcp.unit_id", "-e", "modbus.func_code", "-e", "modbus.exception_code",
         "-E", "occurrence=a"], capture_output=True, text=True, check=True)
    rows = []
    for line in res.stdout.splitlines():
        cols = [c.split(",") if c else [] for c in (line.split("\t") + [""] * 4)[:4]]
        tids, units, funcs, excs = cols
        for i, tid in enumerate(tids):
            func = int(funcs[i]) & 0x7F if i < len(funcs) else -1   # normalise the 0x80 bit
            exc = int(excs[i]) if len(excs) == len(tids) else (
                int(excs[0]) if len(excs) == 1 and len(tids) == 1 else None)
            rows.append((int(tid), int(units[i]), func, exc))
    return rows


def agreement(path: Path) -> tuple[float, list, list]:
    ours, theirs = _ours(path), _tshark(path)
    if not ours and not theirs:
        return 100.0, ours, theirs
    matcher = difflib.SequenceMatcher(None, ours, theirs, autojunk=False)
    same = sum(block.size for block in matcher.get_matching_blocks())
    return 100.0 * same / max(len(ours), len(theirs)), ours, theirs


PCAP_FILES = sorted(PCAPS.glob("*.pcap*"))


@pytest.mark.skipif(TSHARK is None, reason="tshark not installed (apt-get install tshark)")
@pytest.mark.parametrize("path", PCAP_FILES, ids=[p.name for p in PCAP_FILES])
def test_pcap_agrees_with_tshark(path: Path) -> None:
    pct, ours, theirs = agreement(path)
    print(f"{path.name}: {pct:.2f}% agreement ({len(ours)} ours, {len(theirs)} tshark)")
    assert pct >= 99.5, list(difflib.unified_diff(list(map(str, theirs)), list(map(str, ours)),
                                                  "tshark", "ours", lineterm=""))


@pytest.mark.skipif(TSHARK is None, reason="tshark not installed (apt-get install tshark)")
@needs_fixtures
def test_pcap_agreement_overall() -> None:
    same, total = 0.0, 0
    for path in PCAP_FILES:
        pct, ours, theirs = agreement(path)
        n = max(len(ours), len(theirs))
        same += pct * n / 100
        total += n
    assert total >= 140 and 100.0 * same / total >= 99.5


def _zeek_rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()
            if line and not line.startswith("#")]


@needs_fixtures
def test_pcap_matches_icsnpp_modbus_log() -> None:
    """ICSNPP logs one line per transaction: function (with _EXCEPTION) and exception name."""
    msgs = [m for _, m in _pcap_messages(PCAPS / "modbus_example.pcap") if not m.is_request]
    ours = [(m.kind.upper(), m.fields.get("exception", "-").upper()) for m in msgs]
    theirs = [(r[6], r[7]) for r in _zeek_rows(BASELINES / "modbus_example" / "modbus.log")]
    assert ours == theirs
    # ICSNPP's generated trace sends file record PDUs with byte count 0 (spec: 7..245)
    flagged = {m.fields["func"] for m in msgs if m.anomalies}
    assert flagged == {"read_file_record", "write_file_record"}
    assert all(m.anomalies == ("modbus.invalid_length",) for m in msgs if m.anomalies)
    ident = [m.identity for m in msgs if m.identity]
    assert ident == [{"vendor": "Zeek Modbus Test", "product_code": "Protocol Parsing is fun!",
                      "firmware": "1.2.3.6"}]


@needs_fixtures
def test_pcap_matches_zeek_message_log() -> None:
    msgs = [m for _, m in _pcap_messages(PCAPS / "modbus-and-non-modbus-p502.pcap")]
    ours = [(str(m.fields["transaction_id"]), str(m.fields["unit_id"]), m.fields["func"].upper(),
             "REQ" if m.is_request else "RESP") for m in msgs]
    theirs = [tuple(r[6:10]) for r in
              _zeek_rows(BASELINES / "modbus-and-non-modbus-p502" / "modbus.log")]
    assert ours == theirs


@needs_fixtures
def test_pcap_matches_icsnpp_detailed_values() -> None:
    """Addresses, quantities and values against ICSNPP's modbus_detailed.log."""
    msgs = [m for _, m in _pcap_messages(PCAPS / "modbus_example.pcap")]
    by_tid: dict[tuple[int, int], dict[bool, Message]] = {}
    for m in msgs:
        key = (m.fields["transaction_id"], m.fields["unit_id"])
        by_tid.setdefault(key, {})[bool(m.is_request)] = m
    checked = 0
    for row in _zeek_rows(BASELINES / "modbus_example" / "modbus_detailed.log"):
        tid, unit, func, address, quantity, req_vals, resp_vals = row[6:13]
        exc = row[19]
        q, r = by_tid[int(tid), int(unit)][True], by_tid[int(tid), int(unit)][False]
        if func in ("READ_COILS", "READ_DISCRETE_INPUTS", "READ_HOLDING_REGISTERS",
                    "READ_INPUT_REGISTERS", "WRITE_MULTIPLE_COILS", "WRITE_MULTIPLE_REGISTERS",
                    "MASK_WRITE_REGISTER"):
            assert r.fields["address"] == q.fields["address"] == int(address)
            if quantity != "-":
                assert r.fields["quantity"] == int(quantity)
            vals = req_vals if req_vals != "-" else resp_vals
            if vals != "-":
                holder = q if req_vals != "-" else r
                assert holder.fields["values"] == [int(v) for v in vals.split(",")]
            checked += 1
        if exc != "-":
            assert r.fields["exception"] == exc.lower()
            assert (r.fields["address"], r.fields["quantity"]) == (int(address), int(quantity))
            checked += 1
    assert checked >= 12
    # modbus_read_write_multiple_registers.log: tid 21 writes 3 at 2, reads 4 at 1
    q, r = by_tid[21, 6][True], by_tid[21, 6][False]
    assert (q.fields["write_address"], q.fields["values"]) == (2, [170, 187, 204])
    assert (r.fields["read_address"], r.fields["read_quantity"]) == (1, 4)
    assert r.fields["values"] == [170, 170, 187, 204]
    # modbus_mask_write_register.log: tid 19 and 65535 / or 57005 at address 10
    r = by_tid[19, 4][False]
    assert (r.fields["address"], r.fields["and_mask"], r.fields["or_mask"]) == (10, 65535, 57005)


@needs_fixtures
def test_pcap_suricata_expectations() -> None:
    """modbus_modbus.pcap is Suricata's test capture; its test.yaml counts what we can check."""
    pairs = _pcap_messages(PCAPS / "modbus_modbus.pcap")
    msgs = [m for _, m in pairs]
    reqs = [m for m in msgs if m.is_request]
    assert sum(m.fields["func_code"] == 1 for m in reqs) == 2          # RdCoils requests
    assert sum(m.fields["func_code"] == 8 for m in reqs) == 8          # function 8 alerts
    # five unsolicited server-busy exceptions on the connection the server opened
    busy = [m for m in msgs if m.fields.get("exception") == "slave_device_busy"]
    assert len(busy) == 5 and all("modbus.unsolicited_response" in m.anomalies for m in busy)
    # read device identification requests, never answered
    mei = [m for m in reqs if m.fields["func_code"] == 43]
    assert len(mei) == 2 and mei[0].fields["read_dev_id_code"] == 3
