"""CIP parsing: EPATH segments, services named in the context of their class, Connection
Manager bodies, Logix tag services, PCCC, identity, statuses, and the tables' spellings."""
from __future__ import annotations

import html
import random
import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

import dpkt
import pytest

from edge_agent.decode import cip
from edge_agent.decode.cip import CIPRequest, CIPResponse, ForwardOpen, Rec

TSHARK = shutil.which("tshark")


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


def req(buf: bytes) -> tuple[list[Rec], cip.Ctx | None]:
    return cip.decode_request(buf, 0, len(buf))


def one_req(buf: bytes) -> Rec:
    recs, _ = req(buf)
    assert len(recs) == 1
    return recs[0]


def pair(request: bytes, reply: bytes) -> Rec:
    _, ctx = req(request)
    (rec,) = cip.decode_response(reply, 0, len(reply), ctx)
    return rec


def path(buf: bytes) -> tuple[dict[str, Any], list[str]]:
    f: dict[str, Any] = {}
    an: list[str] = []
    cip.parse_epath(buf, 0, len(buf), f, an)
    return f, an


# --- round trips through the dpkt header classes ------------------------------------------

def test_round_trip_request_and_response_headers() -> None:
    epath = h("20 01 24 01 30 07")
    raw = bytes(CIPRequest(service=0x0E, path_size=len(epath) // 2, data=epath))
    assert raw == h("0e 03 | 20 01 24 01 30 07")
    f, an, kind, ident = one_req(raw)
    assert f == {"service_code": 0x0E, "service": "get_attribute_single", "class_id": 1,
                 "class_name": "identity", "instance_id": 1, "attribute_id": 7}
    assert (an, kind, ident) == ([], "get_attribute_single", None)
    resp = CIPResponse(service=0x8E, data=h("04 41424344"))     # reply: "ABCD"
    rec = pair(raw, bytes(resp))
    assert rec[0]["product_name"] == "ABCD" and rec[3] == {"product": "ABCD"}
    assert CIPResponse(bytes(resp)).general_status == 0


def test_round_trip_forward_open() -> None:
    conn_path = h("0100 2002 2401")
    fo = ForwardOpen(priority_time_tick=7, timeout_ticks=0xF9, ot_connection_id=0x80000014,
                     to_connection_id=0x80FE0013, connection_serial=0x14,
                     originator_vendor_id=77, originator_serial=0x32952BF3, ot_rpi=8_000_000,
                     ot_network_parameters=0x43F4, to_rpi=8_000_000, to_network_parameters=0x43F4,
                     connection_path_size=len(conn_path) // 2, data=conn_path)
    raw = h("54 02 20 06 24 01") + bytes(fo)
    assert bytes(fo) == h("07 f9 | 14000080 | 1300fe80 | 1400 | 4d00 | f32b9532 | 00 000000"
                          "| 00127a00 | f443 | 00127a00 | f443 | a3 | 03 | 0100 2002 2401")
    f, an, kind, _ = one_req(raw)
    assert kind == "forward_open" and an == []
    assert f["to_connection_size"] == 500 and f["to_priority"] == "low"
    assert f["connection_path"] == "port 1 link 0, class 0x02, instance 0x01"


# --- EPATH --------------------------------------------------------------------------------

def test_logical_segment_formats() -> None:
    f, an = path(h("20 f5 | 25 00 2024 | 2a 00 01000100 | 30 03"))
    assert f == {"class_id": 0xF5, "class_name": "tcp_ip_interface", "instance_id": 0x2420,
                 "member_id": 0x00010001, "attribute_id": 3}
    assert an == []
    f, an = path(h("21 00 0601 | 24 01 | 2c 96 | 2c 64"))      # 16-bit class, connection points
    assert (f["class_id"], f["connection_point"], f["connection_points"]) == (0x106, 0x96,
                                                                             [0x96, 0x64])


def test_port_segments() -> None:
    f, an = path(h("01 00"))                                   # backplane, slot 0
    assert (f["port"], f["link_address"], an) == (1, 0, [])
    f, an = path(h("12 0c 3139322e3136382e312e3130 | 20 02 24 01"))   # port 2, IP, then MR
    assert (f["port"], f["link_address"], f["class_id"], an) == (2, "192.168.1.10", 2, [])
    f, an = path(h("12 09 31302e302e302e3132 00 | 20 02"))      # odd-sized address is padded
    assert (f["link_address"], f["class_id"], an) == ("10.0.0.12", 2, [])
    f, an = path(h("0f 1200 05"))                              # 16-bit port id 18, link 5
    assert (f["port"], f["link_address"], an) == (18, 5, [])
    _, text = cip.path_text(h("01 00 20 02 24 01"), 0, 6, an)
    assert text == "port 1 link 0, class 0x02, instance 0x01"


def test_symbolic_segments_build_a_tag_name() -> None:
    # ANSI extended symbols with array members: Program:Main.Arr[3,4].x
    f, an = path(h("91 0c 50726f6772616d3a4d61696e | 91 03 417272 00 | 28 03 | 28 04"
                   "| 91 01 78 00"))
    assert f == {"symbol": "Program:Main.Arr[3,4].x"} and an == []
    f, an = path(h("63 414243"))                               # symbolic segment, 3 chars
    assert f == {"symbol": "ABC"} and an == []


def test_electronic_key() -> None:
    f, an = path(h("34 04 0100 0e00 3600 90 14 | 20 02 24 01"))
    assert (f["key_vendor_id"], f["key_device_type_code"], f["key_product_code"],
            f["key_revision"], f["class_id"]) == (1, 14, 54, "16.20", 2)
    assert an == []


@pytest.mark.parametrize("epath", [
    h("20"),                      # 8-bit class without its value
    h("21 00 01"),                # 16-bit class cut
    h("91 08 4142"),              # symbol longer than the path
    h("c3 00"),                   # data type segment: not in a request path
    h("23 01"),                   # reserved logical format
    h("35 04 0100"),              # a key that is not a key
    h("60 00"),                   # extended symbol formats
    h("80 05 0000"),              # data segment running past the end
])
def test_invalid_paths(epath: bytes) -> None:
    assert path(epath)[1] == ["cip.invalid_path"]


def test_path_size_past_message_is_truncated() -> None:
    f, an, _, _ = one_req(h("0e 04 20 01 24 01"))
    assert "cip.truncated" in an and f["class_id"] == 1


# --- service names in context -------------------------------------------------------------

@pytest.mark.parametrize("code,cls,name", [
    (0x01, 0x01, "get_attributes_all"), (0x05, 0x01, "reset"), (0x0A, 0x02,
                                                                  "multiple_service_packet"),
    (0x54, 0x06, "forward_open"), (0x5B, 0x06, "large_forward_open"),
    (0x4E, 0x06, "forward_close"), (0x52, 0x06, "unconnected_send"),
    (0x56, 0x06, "get_connection_data"),
    (0x4C, 0x6B, "read_tag"), (0x4D, None, "write_tag"), (0x4E, 0x6B, "read_modify_write_tag"),
    (0x52, 0x6B, "read_tag_fragmented"), (0x53, 0x8E, "write_tag_fragmented"),
    (0x4B, 0x67, "execute_pccc"), (0x4B, 0x37, "initiate_upload"),
    (0x4C, 0x37, "initiate_download"), (0x50, 0x37, "download_transfer"),
    (0x54, None, "forward_open"),             # a reply whose request was not seen
])
def test_service_names(code: int, cls: int | None, name: str) -> None:
    assert cip.service_name(code, cls) == (name, True)


def test_unknown_services() -> None:
    assert cip.service_name(0x0B, 1) == ("unknown", False)      # reserved common code
    assert cip.service_name(0x70, 1) == ("unknown", False)      # reserved range
    assert cip.service_name(0x4B, 0x72) == ("unknown", True)    # class specific: legitimate
    _, an, kind, _ = one_req(h("0b 02 20 01 24 01"))
    assert an == ["cip.unknown_service"] and kind == "unknown"


# --- Connection Manager -------------------------------------------------------------------

def test_large_forward_open() -> None:
    f, an, kind, _ = one_req(h(
        "5b 02 20 06 24 01 | 0a 0e | 00000000 | 01000080 | 0100 | 0100 | 78563412"
        "| 01 000000 | 40420f00 | f4010042"        # O->T RPI 1 s, params 32-bit
        "| 40420f00 | f4010022"                     # T->O: multicast
        "| 01"                                     # class 1, cyclic
        "| 09 | 3404 0100 0e00 3600 9014 | 2004 2464 2c96 2c64"))  # key, assembly 100, 150/100
    assert kind == "large_forward_open" and an == []
    assert (f["ot_connection_size"], f["ot_connection_type"]) == (500, "point_to_point")
    assert (f["to_connection_type"], f["transport_class"], f["production_trigger"]) == \
        ("multicast", 1, "cyclic")
    assert (f["target_class_name"], f["target_instance_id"], f["connection_points"]) == \
        ("assembly", 100, [150, 100])
    assert f["key_vendor_id"] == 1


def test_forward_open_reply_and_failure() -> None:
    request = h("54 02 20 06 24 01 07 f9 14000080 1300fe80 1400 4d00 f32b9532 00 000000"
                "00127a00 f443 00127a00 f443 a3 03 0100 2002 2401")
    f, an, kind, _ = pair(request, h(
        "d4 00 00 00 | 01037900 | 1300fe80 | 1400 | 4d00 | f32b9532"
        "| 00127a00 | 00127a00 | 00 00"))          # APIs, no application reply
    assert (f["ot_connection_id"], f["ot_api_us"], kind, an) == \
        ("0x00790301", 8_000_000, "forward_open", [])
    f, an, kind, _ = pair(request, h("d4 00 01 01 | 0001 | 1400 4d00 f32b9532 | 00 00"))
    assert (f["status"], f["extended_status_code"], f["extended_status"]) == \
        ("connection_failure", 0x100, "connection_in_use")
    assert (f["connection_serial"], f["remaining_path_size"], kind, an) == \
        ("0x0014", 0, "forward_open_exception", [])


def test_forward_close() -> None:
    request = h("4e 02 20 06 24 01 | 07 f9 | 1400 | 4d00 | f32b9532 | 03 00 | 0100 2002 2401")
    f, an, kind, _ = one_req(request)
    assert (kind, f["connection_serial"], f["target_class_name"], an) == \
        ("forward_close", "0x0014", "message_router", [])
    f, an, kind, _ = pair(request, h("ce 00 00 00 | 1400 4d00 f32b9532 | 00 00"))
    assert (kind, f["originator_serial"], f["application_reply_size"], an) == \
        ("forward_close", "0x32952bf3", 0, [])


def test_unconnected_send_bad_size() -> None:
    f, an, kind, _ = one_req(h("52 02 20 06 24 01 | 07 f9 | 4000 | 01 02 20 01 24 01"))
    assert kind == "unconnected_send" and "cip.invalid_length" in an


# --- Multiple Service Packet --------------------------------------------------------------

def test_multiple_service_packet_bad_offsets() -> None:
    recs, ctx = req(h("0a 02 20 02 24 01 | 0200 | 0600 ff00 | 01 02 20 01 24 01"))
    assert len(recs) == 2 and recs[1][0]["msp_index"] == 0
    assert "cip.invalid_length" in recs[0][1]
    assert ctx is not None and ctx.children is not None and len(ctx.children) == 2


def test_multiple_service_packet_is_bounded() -> None:
    n = 70
    member = h("01 02 20 01 24 01")
    offsets = struct.pack(f"<{n}H", *(2 + 2 * n + 6 * i for i in range(n)))
    recs, _ = req(h("0a 02 20 02 24 01") + struct.pack("<H", n) + offsets + member * n)
    assert len(recs) == 1 + cip.CIP_MAX_SERVICES
    assert "cip.too_many_services" in recs[0][1]


def test_multiple_service_packet_with_a_failed_member() -> None:
    request = h("0a 02 20 02 24 01 | 0200 | 0600 0e00 | 0e 03 20 01 24 01 30 01"
                "| 0e 03 20 f5 24 01 30 01")
    _, ctx = req(request)
    reply = h("8a 00 1e 00 | 0200 | 0600 0a00 | 8e 00 00 00 | 8e 00 14 00")
    recs = cip.decode_response(reply, 0, len(reply), ctx)
    assert [(r[0]["status"], r[2]) for r in recs] == [
        ("embedded_service_error", "multiple_service_packet_exception"),
        ("success", "get_attribute_single"),
        ("attribute_not_supported", "get_attribute_single_exception")]
    assert recs[2][0]["class_name"] == "tcp_ip_interface"


# --- common services ----------------------------------------------------------------------

def test_reset_identity_with_type() -> None:
    f, an, kind, _ = one_req(h("05 02 20 01 24 01 | 01"))
    assert (kind, f["class_name"], f["reset_type"], f["reset"], an) == \
        ("reset", "identity", 1, "factory_defaults", [])


def test_attribute_lists() -> None:
    f, an, _, _ = one_req(h("03 02 20 01 24 01 | 0300 | 0100 0600 0700"))
    assert (f["attribute_count"], f["attributes"], an) == (3, [1, 6, 7], [])
    f, an, _, _ = one_req(h("03 02 20 01 24 01 | 0300 | 0100 0600"))
    assert an == ["cip.invalid_length"] and f["attributes"] == [1, 6]
    f, an, _, _ = one_req(h("04 02 20 8b 24 01 | 0100 | 0600 | 0102030405060708"))
    assert (f["attribute_count"], f["attributes"], f["class_name"], an) == \
        (1, [6], "wall_clock_time", [])


def test_identity_from_attribute_list_reply() -> None:
    f, an, kind, ident = pair(
        h("03 02 20 01 24 01 | 0400 | 0100 0500 0600 0700"),
        h("83 00 00 00 | 0400 | 0100 0000 0100 | 0500 0900"    # attribute 5 in error
          "| 0600 0000 8e4d5200 | 0700 0000 04 41424344"))
    assert ident == {"vendor_id": 1, "vendor": "Rockwell Automation/Allen-Bradley",
                     "serial": "0x00524d8e", "product": "ABCD"}
    assert "device_status" not in f and an == []


def test_set_attribute_single_keeps_the_value() -> None:
    f, an, _, _ = one_req(h("10 03 20 f5 24 01 30 05 | c0a8010a"))
    assert (f["attribute_id"], f["data"], f["data_length"], an) == (5, "c0a8010a", 4, [])


# --- Logix tag services -------------------------------------------------------------------

def test_logix_tag_services() -> None:
    read = h("4c 03 | 91 04 54616731 | 0100")                  # read_tag "Tag1", 1 element
    f, an, kind, _ = one_req(read)
    assert (kind, f["symbol"], f["elements"], an) == ("read_tag", "Tag1", 1, [])
    f, an, kind, _ = pair(read, h("cc 00 00 00 | c400 | 2a000000"))
    assert (f["symbol"], f["data_type"], f["data_length"], an) == ("Tag1", "dint", 4, [])
    f, an, kind, _ = one_req(h("4d 03 | 91 04 54616731 | c400 | 0100 | 2a000000"))
    assert (kind, f["data_type"], f["elements"], f["data"]) == ("write_tag", "dint", 1,
                                                               "2a000000")
    f, an, kind, _ = one_req(h("4d 03 | 91 04 54616731 | a002 | 3412 | 0100 | 00112233"))
    assert (f["data_type"], f["structure_handle"], f["elements"]) == ("structure", 0x1234, 1)
    frag = h("52 03 | 91 04 54616731 | 0a00 | 00010000")
    f, an, kind, _ = one_req(frag)
    assert (kind, f["elements"], f["offset"], an) == ("read_tag_fragmented", 10, 256, [])
    f, an, kind, _ = pair(frag, h("d2 00 06 00 | c300 | 01000200"))
    assert (f["status"], kind) == ("partial_transfer", "read_tag_fragmented")
    f, an, kind, _ = one_req(h("53 03 | 91 04 54616731 | c300 | 0a00 | 00010000 | 0100"))
    assert (kind, f["offset"], f["data_length"]) == ("write_tag_fragmented", 256, 2)


def test_tag_codes_on_numbered_objects_are_named_but_not_parsed() -> None:
    # RSLogix uses 0x4C on its own objects with an undocumented body (EIP-RebootorRestart)
    f, an, kind, _ = one_req(h("4c 02 20 72 24 00 | cc02 0000 0000"))
    assert (kind, f["data_length"], an) == ("read_tag", 6, [])


# --- PCCC ---------------------------------------------------------------------------------

def test_execute_pccc() -> None:
    request = h("4b 02 20 67 24 01"                  # execute_pccc on the PCCC object
                "| 07 | 3501 | e108b060"             # requestor id: length, vendor, serial
                "| 0f 00 2a58 | a2"                  # CMD 0x0F, STS, TNS, FNC 0xA2
                "| 02 07 89 00 00")                  # 2 bytes of N7:0
    f, an, kind, _ = one_req(request)
    assert (kind, f["class_name"], f["requestor_vendor_id"], f["requestor_serial"]) == \
        ("execute_pccc", "pccc", 0x135, "0x60b008e1")
    assert (f["pccc_cmd_code"], f["pccc_fnc_code"], f["pccc_func"], f["pccc_tns"]) == \
        (0x0F, 0xA2, "protected_typed_logical_read_3_address", 0x582A)
    f, an, kind, _ = pair(request, h("cb 00 00 00 | 07 3501 e108b060 | 4f 00 2a58 | 0100"))
    assert (f["pccc_cmd_code"], f["pccc_status_code"], f["pccc_func"], f["data_length"], an) \
        == (0x0F, 0, "protected_typed_logical_read_3_address", 2, [])
    f, an, _, _ = pair(request, h("cb 00 00 00 | 07 3501 e108b060 | 4f f0 2a58 | 05"))
    assert f["pccc_extended_status_code"] == 5


# --- statuses and pairing -----------------------------------------------------------------

def test_statuses() -> None:
    f, an, kind, _ = pair(h("0e 03 20 01 24 01 30 07"), h("8e 00 77 00"))
    assert (f["status"], an, kind) == ("unknown", ["cip.unknown_status"],
                                      "get_attribute_single_exception")
    f, an, _, _ = pair(h("0e 03 20 01 24 01 30 07"), h("8e 00 1f 02 | 3412 | 7856"))
    assert (f["extended_status_code"], f["additional_status"]) == (0x1234, [0x5678])
    assert "extended_status" not in f          # only connection failures have CM names


def test_service_mismatch() -> None:
    f, an, _, _ = pair(h("0e 03 20 01 24 01 30 07"), h("90 00 00 00"))
    assert an == ["cip.service_mismatch"] and "class_id" not in f


def test_every_status_and_service_name_is_snake_case() -> None:
    snake = re.compile(r"^[a-z][a-z0-9_]*$")
    for table in (cip.CIP_SERVICES, cip.CIP_CM_SERVICES, cip.CIP_LOGIX_SERVICES,
                  cip.CIP_PCCC_SERVICES, cip.CIP_FILE_SERVICES, cip.CIP_CLASSES, cip.CIP_STATUS,
                  cip.CIP_EXTENDED_STATUS, cip.CIP_DEVICE_TYPES, cip.CIP_DATA_TYPES,
                  cip.CIP_RESET_TYPES, cip.PCCC_COMMANDS, cip.PCCC_FUNCTIONS):
        assert all(snake.match(v) for v in table.values()), table


def test_every_truncation_decodes() -> None:
    """Cut anywhere in the fixed part of a body, a record still comes out, with an anomaly
    (opaque trailing data — PCCC function data, a tag value — may end anywhere)."""
    vectors = [
        h("54 02 20 06 24 01 07 f9 14000080 1300fe80 1400 4d00 f32b9532 00 000000"
          "00127a00 f443 00127a00 f443 a3 03 0100 2002 2401"),
        h("52 02 20 06 24 01 07 f9 0600 01 02 20 01 24 01 01 00 01 00"),
        h("0a 02 20 02 24 01 0200 0600 0e00 0e 03 20 01 24 01 30 01 0e 03 20 f5 24 01 30 01"),
        h("4b 02 20 67 24 01 07 3501 e108b060 0f 00 2a58 a2 02 07 89 00 00"),
        h("4d 03 91 04 54616731 a002 3412 0100 00112233"),
    ]
    fixed = [len(vectors[0]), len(vectors[1]), len(vectors[2]), 18, len(vectors[4]) - 4]
    for vec, stop in zip(vectors, fixed):
        full, _ = req(vec)
        assert all(r[1] == [] for r in full), (vec.hex(), full)
        for cut in range(stop):
            recs, _ = cip.decode_request(vec, 0, cut)
            assert any(r[1] for r in recs), (vec.hex(), cut)


def test_fuzz_parsers_directly() -> None:
    rng = random.Random(0xC1B)
    seeds = [h("54 02 20 06 24 01 07 f9 14000080 1300fe80 1400 4d00 f32b9532 00 000000"
               "00127a00 f443 00127a00 f443 a3 03 0100 2002 2401"),
             h("52 02 20 06 24 01 07 f9 0600 01 02 20 01 24 01 01 00 01 00"),
             h("0a 02 20 02 24 01 0200 0600 0e00 0e 03 20 01 24 01 30 01 0e 03 20 f5 24 01 30 01"),
             h("4b 02 20 67 24 01 07 3501 e108b060 0f 00 2a58 a2 02 07 89 00 00"),
             h("4c 0e 91 0c 50726f6772616d3a4d61696e 91 03 417272 00 28 03 28 04 91 01 78 00"),
             h("83 00 00 00 0400 0100 0000 0100 0700 0000 04 41424344"),
             h("8a 00 1e 00 0200 0600 0a00 8e 00 00 00 8e 00 14 00")]
    _, ctx_msp = req(seeds[2])
    _, ctx_id = req(h("03 02 20 01 24 01 0100 0700"))
    for _ in range(30_000):
        buf = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(buf))
            buf[i] = rng.randrange(256) if rng.random() < 0.7 else rng.choice((0, 1, 0xFF))
        if rng.random() < 0.3:
            del buf[rng.randrange(len(buf)):]
        data = bytes(buf)
        cip.decode_request(data, 0, len(data))
        for ctx in (None, ctx_msp, ctx_id):
            cip.decode_response(data, 0, len(data), ctx)


# --- the vendor table against Wireshark's -------------------------------------------------

def test_vendor_table_has_the_common_ids() -> None:
    v = cip.CIP_VENDORS
    assert (v[1], v[47], v[243], v[1251], v[562], v[991]) == (
        "Rockwell Automation/Allen-Bradley", "Omron Corporation", "Schneider Automation, Inc.",
        "Siemens AG", "Phoenix Contact", "Moxa Networking Co., Ltd.")
    assert cip.vendor_name(0xFFFF) == "unknown"


@pytest.mark.skipif(TSHARK is None, reason="tshark not installed (apt-get install tshark)")
def test_vendor_and_device_type_names_agree_with_wireshark(tmp_path: Path) -> None:
    """A ListIdentity reply per table entry, read back by tshark. Wireshark 4.0's copy of the
    ODVA list predates ids past 1250 and a few it still calls Reserved; those are skipped."""
    pcap = tmp_path / "vendors.pcap"
    entries = [(vid, 12) for vid in sorted(cip.CIP_VENDORS)] + \
              [(1, dt) for dt in sorted(cip.CIP_DEVICE_TYPES)]
    with pcap.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, (vid, dtype) in enumerate(entries):
            item = (struct.pack("<H", 1) + struct.pack(">HH4s8x", 2, 44818, b"\x0a\x00\x00\x02")
                    + struct.pack("<HHHBBHI", vid, dtype, 1, 1, 1, 0, 1) + b"\x01A\x03")
            body = struct.pack("<HHH", 1, 0x0C, len(item)) + item
            enc = struct.pack("<HHII8sI", 0x63, len(body), 0, 0, bytes(8), 0) + body
            udp = dpkt.udp.UDP(sport=44818, dport=5000, data=enc, ulen=8 + len(enc))
            ip = dpkt.ip.IP(src=socket.inet_aton("10.0.0.2"), dst=socket.inet_aton("10.0.0.1"),
                            p=17, data=udp, len=28 + len(enc))
            w.writepkt(bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6,
                                                    data=ip)), ts=i)
    out = subprocess.run([TSHARK, "-r", str(pcap), "-T", "fields", "-E", "separator=|",
                          "-e", "enip.lir.vendor", "-e", "enip.lir.devtype"],
                         capture_output=True, text=True, check=True).stdout
    assert len(out.splitlines()) == len(entries)
    pdml = subprocess.run([TSHARK, "-r", str(pcap), "-T", "pdml"], capture_output=True,
                          text=True, check=True).stdout
    vendors = re.findall(r'name="enip.lir.vendor" showname="Vendor ID: (.*?) \(0x([0-9a-f]+)\)"',
                         pdml)
    checked = 0
    for name, hexid in vendors[:len(cip.CIP_VENDORS)]:
        name = html.unescape(name)
        if name in ("Unknown", "Reserved"):
            continue
        assert name.casefold() == cip.CIP_VENDORS[int(hexid, 16)].casefold()
        checked += 1
    assert checked >= 90
    types = re.findall(r'name="enip.lir.devtype" showname="Device Type: (.*?) \(0x([0-9a-f]+)\)"',
                       pdml)[len(cip.CIP_VENDORS):]
    agree = 0
    for name, hexid in types:
        ours = cip.CIP_DEVICE_TYPES[int(hexid, 16)]
        theirs = re.sub(r"[^a-z0-9]+", "_", html.unescape(name).lower()).strip("_")
        agree += ours == theirs or ours.replace("_", "") in theirs.replace("_", "")
    assert agree >= 0.8 * len(types)
