"""EtherNet/IP decoder: encapsulation and CPF vectors, CIP pairing, framing, anomalies, and the
fixture captures checked against tshark and the ICSNPP baselines."""
from __future__ import annotations

import difflib
import json
import random
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from edge_agent import config
from edge_agent.agent import Pipeline
from edge_agent.capture.source import FileSource
from edge_agent.decode import Limits, Message, discover
from edge_agent.decode import enip
from edge_agent.decode.enip import DECODER, ENIP, CPFItem, ENIPSession, IdentityItem
from edge_agent.events import to_record
from tests.conftest import BASELINES, PCAPS
from tests.decode import fuzz

ENIP_PCAPS = PCAPS / "enip"
ENIP_BASELINES = BASELINES / "enip"
TSHARK = shutil.which("tshark")


def h(text: str) -> bytes:
    """Hex with spaces and ``|`` separators allowed, so vectors can be laid out field by field."""
    return bytes.fromhex(text.replace("|", " "))


def feed(sess: ENIPSession, pdu: bytes, from_client: bool) -> list[Message]:
    return DECODER.safe_feed(sess, pdu, from_client, 0.0)


def session(**kw: Any) -> ENIPSession:
    return DECODER.session(Limits(**kw))


# --- vectors ----------------------------------------------------------------------------------
# Encapsulation header: command | length | session handle | status | sender context | options

REGISTER_REQ = h("6500 | 0400 | 00000000 | 00000000 | 0000000000000000 | 00000000"
                 "| 0100 | 0000")                   # protocol version 1, option flags 0
REGISTER_RESP = h("6500 | 0400 | 00010211 | 00000000 | 0000000000000000 | 00000000"
                  "| 0100 | 0000")                  # the target assigns handle 0x11020100

# ListIdentity over TCP, from enip_cip_example.pcap (a 1756-ENBT/A answering)
LIST_IDENTITY_REQ = h("6300 | 0000 | 00000000 | 00000000 | c1debed100000000 | 00000000")
LIST_IDENTITY_RESP = h(
    "6300 | 3300 | 00000000 | 00000000 | c1debed100000000 | 00000000"
    "| 0100"                                         # CPF: one item
    "| 0c00 | 2d00"                                  # CIP Identity item, 45 bytes
    "| 0100"                                         # encapsulation protocol version 1
    "| 0002 af12 0a0101a4 0000000000000000"          # sockaddr (big-endian): AF_INET, 44818, ip
    "| 0100 | 0c00 | 3a00"                           # vendor 1, device type 12, product code 58
    "| 04 03 | 3000 | 8e4d5200"                      # revision 4.3, status 0x0030, serial
    "| 0b 313735362d454e42542f41"                    # product name "1756-ENBT/A"
    "| 03")                                          # state

# SendRRData with an Unconnected Send to the Connection Manager carrying Get_Attributes_All on
# the Identity object, and its reply (EIP-RebootorRestart.pcap frames 8 and 10).
UCS_REQ = h(
    "6f00 | 2400 | 00010211 | 00000000 | b39b02002008e100 | 00000000"
    "| 00000000 | 2000"                              # interface handle CIP, timeout 32 s
    "| 0200 | 0000 0000"                             # 2 items: null address
    "| b200 | 1400"                                  # unconnected data, 20 bytes:
    "| 52 02 20 06 24 01"                            #   unconnected send, class 6 instance 1
    "| 07 f9 | 0600"                                 #   tick 7, 249 ticks, embedded 6 bytes:
    "| 01 02 20 01 24 01"                            #     get_attributes_all, class 1 inst 1
    "| 01 00 | 01 00")                               #   route path 1 word: port 1, link 0
UCS_RESP = h(
    "6f00 | 3700 | 00010211 | 00000000 | b39b02002008e100 | 00000000"
    "| 00000000 | 2000 | 0200 | 0000 0000 | b200 | 2700"
    "| 81 00 00 00"                                  # get_attributes_all reply, success
    "| 0100 | 0e00 | 3600"                           # vendor 1, PLC, product code 54
    "| 10 14 | 6030 | 3f825100"                      # revision 16.20, status, serial
    "| 14 313735362d4c36312f42204c4f47495835353631")  # "1756-L61/B LOGIX5561"

# SendUnitData on connection 0x007c0b01, sequence count 1929: a Multiple Service Packet to the
# Message Router with two members; then its reply on the T->O connection.
MSP_REQ = h(
    "7000 | 2800 | 00010211 | 00000000 | 0000000000000000 | 00000000"
    "| 00000000 | 0100 | 0200"                       # interface, timeout 1, 2 items
    "| a100 0400 | 010b7c00"                         # connected address: connection id
    "| b100 | 1c00 | 8907"                           # connected data, 28 bytes; sequence 1929
    "| 0a 02 20 02 24 01"                            # multiple_service_packet, class 2 inst 1
    "| 0200 | 0600 0e00"                             # 2 members at offsets 6 and 14
    "| 0e 03 20 01 24 01 30 07"                      #   get_attribute_single class 1 inst 1 at 7
    "| 01 02 20 f5 24 01")                           #   get_attributes_all TCP/IP interface 1
MSP_REQ = MSP_REQ[:2] + struct.pack("<H", len(MSP_REQ) - 24) + MSP_REQ[4:]
MSP_RESP = h(
    "7000 | 0000 | 00010211 | 00000000 | 0000000000000000 | 00000000"
    "| 00000000 | 0100 | 0200 | a100 0400 | 01037900"
    "| b100 | 1900 | 8907"                           # connected data, 25 bytes, sequence 1929
    "| 8a 00 00 00"                                  # multiple_service_packet reply, success
    "| 0200 | 0600 0f00"                             # 2 replies at offsets 6 and 15
    "| 8e 00 00 00 | 04 41424344"                    #   get_attribute_single: "ABCD"
    "| 81 00 08 00")                                 #   get_attributes_all: not supported
MSP_RESP = MSP_RESP[:2] + struct.pack("<H", len(MSP_RESP) - 24) + MSP_RESP[4:]

# Class 1 cyclic I/O on UDP 2222 (enip_cip_example.pcap): no encapsulation header
IO_DATAGRAM = h("0200"                               # item count 2
                "| 0280 0800 | 03064b00 | db943f00"  # sequenced address: connection, sequence
                "| b100 0600 | a587e80f0300")        # connected data, 6 bytes


def with_len(pdu: bytes) -> bytes:
    """Fix the encapsulation length field after editing a vector."""
    return pdu[:2] + struct.pack("<H", len(pdu) - 24) + pdu[4:]


# --- round trip through the dpkt header classes -----------------------------------------------

def test_round_trip_encapsulation_header() -> None:
    body = h("0100 | 0000")
    pdu = bytes(ENIP(command=0x65, length=len(body), data=body))
    assert pdu == REGISTER_REQ
    hdr = ENIP(REGISTER_RESP)
    assert (hdr.command, hdr.length, hdr.session_handle, hdr.status, hdr.options) == \
        (0x65, 4, 0x11020100, 0, 0)
    assert hdr.data == body
    msg = feed(session(), REGISTER_REQ, True)[0]
    assert msg.fields == {"command_code": 0x65, "command": "register_session", "length": 4,
                          "session_handle": "0x00000000", "status_code": 0, "status": "success",
                          "sender_context": "0x0000000000000000", "options": 0,
                          "protocol_version": 1, "option_flags": 0}
    assert msg.kind == "register_session" and msg.is_request is True and msg.anomalies == ()


def test_round_trip_cpf_and_identity_item() -> None:
    item = bytes(IdentityItem(socket_address=h("0002 af12 0a0101a4 0000000000000000"),
                              vendor_id=1, device_type=12, product_code=58, revision_major=4,
                              revision_minor=3, status=0x30, serial_number=0x00524D8E))
    item += h("0b 313735362d454e42542f41 | 03")
    cpf = h("0100") + bytes(CPFItem(type_id=0x0C, length=len(item))) + item
    pdu = bytes(ENIP(command=0x63, length=len(cpf), sender_context=h("c1debed100000000"),
                     data=cpf))
    assert pdu == LIST_IDENTITY_RESP


# --- commands ---------------------------------------------------------------------------------

def test_list_identity_reply_names_the_device() -> None:
    sess = session()
    req = feed(sess, LIST_IDENTITY_REQ, True)[0]
    assert req.kind == "list_identity" and req.anomalies == () and req.identity is None
    msg = feed(sess, LIST_IDENTITY_RESP, False)[0]
    f = msg.fields
    assert f["items"] == [{"type_id": 0x0C, "type": "list_identity", "length": 45}]
    assert {k: f[k] for k in ("encapsulation_version", "socket_address", "socket_port",
                              "vendor_id", "vendor", "device_type_code", "device_type",
                              "product_code", "revision", "device_status", "serial_number",
                              "product_name", "device_state")} == {
        "encapsulation_version": 1, "socket_address": "10.1.1.164", "socket_port": 44818,
        "vendor_id": 1, "vendor": "Rockwell Automation/Allen-Bradley", "device_type_code": 12,
        "device_type": "communications_adapter", "product_code": 58, "revision": "4.3",
        "device_status": 0x30, "serial_number": "0x00524d8e", "product_name": "1756-ENBT/A",
        "device_state": 3}
    assert msg.identity == {"vendor": "Rockwell Automation/Allen-Bradley", "vendor_id": 1,
                            "device_type": "communications_adapter", "product_code": 58,
                            "firmware": "4.3", "serial": "0x00524d8e", "product": "1756-ENBT/A"}
    assert msg.anomalies == () and msg.is_request is False


def test_list_services_reply() -> None:
    pdu = with_len(h("0400 | 0000 | 00000000 | 00000000 | 0000000000000000 | 00000000"
                     "| 0100 | 0001 1400"                  # one ListServices item, 20 bytes
                     "| 0100 | 2001"                       # version 1, flags: CIP over TCP+UDP
                     "| 436f6d6d756e69636174696f6e730000"))   # "Communications", 16 bytes
    msg = feed(session(), pdu, False)[0]
    assert msg.fields["items"] == [{"type_id": 0x100, "type": "list_services", "length": 20,
                                    "protocol_version": 1, "capability_flags": 0x120,
                                    "service_name": "Communications"}]
    assert msg.anomalies == ()


def test_unregister_and_nop() -> None:
    sess = session()
    msg = feed(sess, h("6600 0000 00010211 00000000 0000000000000000 00000000"), True)[0]
    assert msg.kind == "unregister_session" and msg.anomalies == ()
    nop = feed(sess, h("0000 0300 00000000 00000000 0000000000000000 00000000 | 616263"), True)[0]
    assert nop.kind == "nop" and nop.fields["data_length"] == 3 and nop.anomalies == ()


def test_unconnected_send_is_unwrapped_and_paired() -> None:
    sess = session()
    out = feed(sess, UCS_REQ, True)
    assert [m.proto for m in out] == ["enip", "cip"]
    encap, req = out
    assert encap.kind == "send_rr_data" and encap.fields["timeout"] == 32
    assert encap.fields["items"] == [
        {"type_id": 0, "type": "null_address", "length": 0},
        {"type_id": 0xB2, "type": "unconnected_data", "length": 20}]
    assert req.fields == {"service_code": 1, "service": "get_attributes_all", "class_id": 1,
                          "class_name": "identity", "instance_id": 1, "unconnected_send": True,
                          "priority_time_tick": 7, "timeout_ticks": 249,
                          "route_path": "port 1 link 0"}
    assert req.kind == "get_attributes_all" and req.is_request is True
    _, resp = feed(sess, UCS_RESP, False)
    assert resp.is_request is False and resp.anomalies == ()
    assert resp.fields["class_name"] == "identity" and resp.fields["status"] == "success"
    assert (resp.fields["product_name"], resp.fields["revision"], resp.fields["serial_number"],
            resp.fields["device_type"]) == ("1756-L61/B LOGIX5561", "16.20", "0x0051823f",
                                            "programmable_logic_controller")
    # Routed to backplane slot 0: the controller there answered, through the Ethernet module
    # that sends the reply. That is not the sender's identity, so the inventory gets none.
    assert resp.fields["route_path"] == "port 1 link 0" and resp.identity is None
    assert not sess.pending


def test_identity_reply_addressed_to_the_device_itself() -> None:
    sess = session()
    local = with_len(UCS_REQ[:36] + h("b200 0600 | 01 02 20 01 24 01"))   # no Unconnected Send
    feed(sess, local, True)
    reply = with_len(UCS_RESP[:36] + h("b200") + UCS_RESP[38:])
    _, resp = feed(sess, reply, False)
    assert resp.identity == {"vendor_id": 1, "vendor": "Rockwell Automation/Allen-Bradley",
                             "device_type": "programmable_logic_controller", "product_code": 54,
                             "firmware": "16.20", "serial": "0x0051823f",
                             "product": "1756-L61/B LOGIX5561"}


def test_connection_through_a_port_carries_no_sender_identity() -> None:
    sess = session()
    fo = h("54 02 20 06 24 01 07 f9 14000080 1300fe80 1400 4d00 f32b9532 00 000000"
           "00127a00 f443 00127a00 f443 a3 03 0100 2002 2401")     # via port 1 link 0
    encap = h("6f00 0000 00010211 00000000 0000000000000000 00000000 00000000 0a00 0200"
              "0000 0000 b200")
    feed(sess, with_len(encap + struct.pack("<H", len(fo)) + fo), True)
    ok = h("d4 00 00 00 01037900 1300fe80 1400 4d00 f32b9532 00127a00 00127a00 00 00")
    feed(sess, with_len(encap + struct.pack("<H", len(ok)) + ok), False)
    assert list(sess.routed) == ["0x80fe0013"]
    get = h("7000 0000 00010211 00000000 0000000000000000 00000000 00000000 0000 0200"
            "a100 0400 01037900 b100 0800 0200 | 01 02 20 01 24 01")
    feed(sess, with_len(get), True)
    reply = h("7000 0000 00010211 00000000 0000000000000000 00000000 00000000 0000 0200"
              "a100 0400 1300fe80 b100 2900 0200") + UCS_RESP[40:]
    _, resp = feed(sess, with_len(reply), False)
    assert resp.fields["product_name"] == "1756-L61/B LOGIX5561" and resp.identity is None


def test_multiple_service_packet_gives_a_record_per_member() -> None:
    sess = session()
    encap, msp, m0, m1 = feed(sess, MSP_REQ, True)
    assert encap.fields["items"][0]["connection_id"] == "0x007c0b01"
    assert encap.fields["items"][1]["sequence_count"] == 1929
    assert msp.kind == "multiple_service_packet" and msp.fields["service_count"] == 2
    assert (m0.fields["service"], m0.fields["class_id"], m0.fields["attribute_id"],
            m0.fields["msp_index"]) == ("get_attribute_single", 1, 7, 0)
    assert (m1.fields["class_name"], m1.fields["msp_index"]) == ("tcp_ip_interface", 1)
    for m in (msp, m0, m1):
        assert m.fields["sequence_count"] == 1929 and m.fields["connection_id"] == "0x007c0b01"
        assert m.anomalies == ()
    _, rmsp, r0, r1 = feed(sess, MSP_RESP, False)
    assert rmsp.kind == "multiple_service_packet" and rmsp.fields["status"] == "success"
    # replies carry no path: each member takes its request's
    assert (r0.fields["class_id"], r0.fields["attribute_id"], r0.fields["product_name"]) == \
        (1, 7, "ABCD")
    assert r0.identity == {"product": "ABCD"}
    assert r1.fields["status"] == "service_not_supported"
    assert r1.kind == "get_attributes_all_exception" and r1.fields["class_id"] == 0xF5
    assert all(m.anomalies == () for m in (rmsp, r0, r1))


def test_cyclic_io_is_counted_cheaply() -> None:
    msg = feed(session(), IO_DATAGRAM, True)[0]
    assert msg.proto == "enip" and msg.kind == "io" and msg.is_request is None
    assert msg.fields == {"connection_id": "0x004b0603", "sequence_number": 4166875,
                          "data_length": 6}
    assert msg.anomalies == ()
    # a connected-address (class 0) datagram takes the slower, general path
    cls0 = h("0200 | a100 0400 | 03064b00 | b100 0200 | 0102")
    msg = feed(session(), cls0, False)[0]
    assert msg.kind == "io" and msg.fields["connection_id"] == "0x004b0603"
    assert msg.fields["data_length"] == 2 and msg.anomalies == ()


def test_forward_open_over_send_rr_data() -> None:
    # EIP-RebootorRestart.pcap frame 21 (a Forward Open to the Message Router, class 3)
    fo = h("54 02 20 06 24 01"                      # forward_open to class 6 instance 1
           "| 07 f9"                                # tick, timeout ticks
           "| 14000080 | 1300fe80"                  # O->T, T->O connection ids
           "| 1400 | 4d00 | f32b9532"               # serial, originator vendor 77, serial
           "| 00 000000"                            # timeout multiplier, reserved
           "| 00127a00 | f443"                       # O->T RPI 8 s, params: p2p, 500 bytes
           "| 00127a00 | f443"                       # T->O
           "| a3"                                   # class 3, application triggered
           "| 03 | 0100 2002 2401")                  # path: port 1 link 0, class 2 inst 1
    pdu = with_len(h("6f00 0000 00010211 00000000 0000000000000000 00000000"
                     "| 00000000 0a00 0200 0000 0000 b200") + struct.pack("<H", len(fo)) + fo)
    _, req = feed(session(), pdu, True)
    f = req.fields
    assert req.kind == "forward_open" and req.anomalies == ()
    assert (f["ot_connection_id"], f["to_connection_id"], f["connection_serial"]) == \
        ("0x80000014", "0x80fe0013", "0x0014")
    assert (f["originator_vendor_id"], f["originator_serial"]) == (77, "0x32952bf3")
    assert (f["ot_rpi_us"], f["ot_connection_size"], f["ot_connection_type"]) == \
        (8_000_000, 500, "point_to_point")
    assert (f["transport_class"], f["production_trigger"]) == (3, "application_object")
    assert f["connection_path"] == "port 1 link 0, class 0x02, instance 0x01"
    assert (f["target_class_id"], f["target_class_name"]) == (2, "message_router")


# --- error responses --------------------------------------------------------------------------

def test_encapsulation_error_status() -> None:
    pdu = h("6500 0400 00000000 69000000 0000000000000000 00000000 | 0200 0000")
    msg = feed(session(), pdu, False)[0]
    assert msg.fields["status"] == "unsupported_protocol_version"
    assert msg.kind == "register_session_exception" and msg.anomalies == ()


def test_cip_error_with_extended_status() -> None:
    sess = session()
    feed(sess, UCS_REQ, True)
    reply = with_len(UCS_RESP[:36] + h("b200 0800 | d2 00 01 01 | 0402 | 0000"))
    _, resp = feed(sess, reply, False)
    f = resp.fields
    # the router could not deliver: the Unconnected Send itself answers, with 0x01/0x0204
    assert (f["service"], f["status"], f["extended_status_code"], f["extended_status"]) == \
        ("unconnected_send", "connection_failure", 0x0204, "unconnected_request_timed_out")
    assert resp.kind == "unconnected_send_exception" and resp.anomalies == ()


# --- session state ----------------------------------------------------------------------------

def test_session_handle_is_tracked() -> None:
    sess = session()
    feed(sess, REGISTER_REQ, True)
    feed(sess, REGISTER_RESP, False)
    assert feed(sess, UCS_REQ, True)[0].anomalies == ()
    other = UCS_REQ[:4] + h("22000000") + UCS_REQ[8:]
    assert "enip.session_mismatch" in feed(sess, other, True)[0].anomalies


def test_unsolicited_response() -> None:
    _, resp = feed(session(), UCS_RESP, False)
    assert resp.anomalies == ("cip.unsolicited_response",)
    assert "class_id" not in resp.fields and resp.fields["service"] == "get_attributes_all"


def test_pending_is_bounded() -> None:
    sess = session(max_pending=2)
    flags = []
    for i in range(3):
        pdu = UCS_REQ[:12] + bytes([i]) * 8 + UCS_REQ[20:]
        flags.append(feed(sess, pdu, True)[1].anomalies)
    assert flags == [(), (), ("cip.too_many_pending",)]
    assert len(sess.pending) == 2


# --- malformed input --------------------------------------------------------------------------

HDR = "00010211 00000000 0000000000000000 00000000"
MALFORMED = [
    ("short_header", h("6f00 1000 0001"), True, "enip.truncated"),
    ("length_past_data", h(f"6500 0800 {HDR} 0100 0000"), True, "enip.truncated"),
    ("trailing_bytes", h(f"6500 0400 {HDR} 0100 0000 ff"), True, "enip.invalid_length"),
    ("register_wrong_size", with_len(h(f"6500 0000 {HDR} 0100 0000 0000")), True,
     "enip.invalid_length"),
    ("request_with_data", with_len(h(f"6300 0000 {HDR} 00")), True, "enip.invalid_length"),
    ("unknown_command", h(f"9900 0000 {HDR}"), True, "enip.unknown_command"),
    ("unknown_status", h("6600 0000 00010211 42000000 0000000000000000 00000000"), False,
     "enip.unknown_status"),
    ("nonzero_options", h("6600 0000 00010211 00000000 0000000000000000 01000000"), True,
     "enip.nonzero_options"),
    ("unknown_item", with_len(h(f"6f00 0000 {HDR} 00000000 0000 0100 3412 0000")), True,
     "enip.unknown_item"),
    ("too_many_items", with_len(h(f"6f00 0000 {HDR} 00000000 0000 2800")), True,
     "enip.too_many_items"),
    ("item_past_data", with_len(h(f"6f00 0000 {HDR} 00000000 0000 0100 b200 0900 0e00")), True,
     "enip.invalid_length"),
    ("send_data_too_short", with_len(h(f"6f00 0000 {HDR} 0000")), True, "enip.invalid_length"),
    ("io_wrong_length", IO_DATAGRAM + b"\x00", False, "enip.invalid_length"),
    ("identity_cut", with_len(LIST_IDENTITY_RESP[:-12]), False, "enip.invalid_length"),
]


@pytest.mark.parametrize("name,pdu,from_client,anomaly", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed(name: str, pdu: bytes, from_client: bool, anomaly: str) -> None:
    msgs = feed(session(), pdu, from_client)
    assert anomaly in msgs[0].anomalies, msgs
    assert all(a.startswith(("enip.", "cip.")) for m in msgs for a in m.anomalies)


def test_cip_parser_failure_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: Any) -> None:
        raise struct.error("unpack")
    monkeypatch.setattr(enip.cip, "decode_request", boom)
    encap, bad = feed(session(), UCS_REQ, True)
    assert encap.anomalies == () and bad.anomalies == ("cip.malformed",)


def test_every_truncation_decodes() -> None:
    for pdu in (UCS_REQ, UCS_RESP, MSP_REQ, MSP_RESP, LIST_IDENTITY_RESP, REGISTER_RESP):
        for cut in range(len(pdu)):
            msgs = ENIPSession(Limits()).feed(pdu[:cut], False, 0.0)
            assert msgs and msgs[0].anomalies, (pdu.hex(), cut)


# --- framing ----------------------------------------------------------------------------------

def test_split_partial_frame() -> None:
    assert DECODER.split(UCS_REQ[:10]) == ([], 0)              # header incomplete
    assert DECODER.split(UCS_REQ[:30]) == ([], 0)              # body incomplete
    assert DECODER.split(UCS_REQ) == ([UCS_REQ], len(UCS_REQ))


def test_split_several_pdus() -> None:
    buf = REGISTER_REQ + UCS_REQ + MSP_REQ + UCS_REQ[:7]
    pdus, used = DECODER.split(buf)
    assert pdus == [REGISTER_REQ, UCS_REQ, MSP_REQ]
    assert used == len(buf) - 7


def test_split_lost_framing() -> None:
    junk = h("dead beef") + bytes(16) + h("01000000")            # unknown command, options set
    assert DECODER.split(junk) == ([], -1)
    pdus, used = DECODER.split(REGISTER_REQ + junk)
    assert pdus == [REGISTER_REQ] and used == len(REGISTER_REQ)


def test_probe() -> None:
    for pdu in (REGISTER_REQ, UCS_REQ, MSP_REQ, LIST_IDENTITY_REQ, IO_DATAGRAM):
        assert DECODER.probe(pdu[:256])
    assert not DECODER.probe(bytes(40))                           # NOP of zeros: not evidence
    assert not DECODER.probe(UCS_REQ[:20])
    assert not DECODER.probe(UCS_REQ[:20] + h("01000000"))        # options set
    assert not DECODER.probe(h("6500 0600") + REGISTER_REQ[4:])   # register of the wrong size


def test_decoder_registration() -> None:
    assert DECODER.name == "enip"
    assert DECODER.tcp_ports == frozenset({44818})
    assert DECODER.udp_ports == frozenset({44818, 2222})
    assert discover(["enip"]).by_name["enip"] is DECODER


# --- fuzz -------------------------------------------------------------------------------------

SEEDS = [REGISTER_REQ, REGISTER_RESP, LIST_IDENTITY_RESP, UCS_REQ, UCS_RESP, MSP_REQ, MSP_RESP,
         IO_DATAGRAM]


def _noise(rng: random.Random, buf: bytearray) -> None:
    buf.extend(rng.randbytes(rng.randint(1, 12)))


def _cip_octet(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 44:                                  # CIP service, path size, counts
        buf[rng.randrange(40, min(len(buf), 60))] = rng.choice((0, 1, 2, 0x0A, 0x52, 0x54, 0x80,
                                                                0x8A, 0xFF))


def _cpf_word(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 30:                                  # CPF item count, types, lengths
        i = rng.randrange(28, min(len(buf), 44))
        word = rng.choice((0, 1, 2, 0xA1, 0xB1, 0xB2, 0x8002, 0xFFFF))
        buf[i:i + 2] = word.to_bytes(2, "little")


def _command(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 2:
        buf[0:2] = rng.choice(tuple(enip.ENIP_COMMANDS) + (2, 0x99)).to_bytes(2, "little")


def _word(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 4:
        i = rng.randrange(len(buf) - 1)
        buf[i:i + 2] = rng.randbytes(2)


def _garbage(rng: random.Random, buf: bytearray) -> None:
    buf[:] = rng.randbytes(rng.randint(0, 60))


MUTATE = fuzz.Mutator((fuzz.overwrite, fuzz.truncate, _noise, _cip_octet, _cpf_word, _command,
                       _word, _garbage),
                      fix=fuzz.length_field(2, 2, less=24, order="little", chance=0.6))


def test_fuzz_no_exception_escapes() -> None:
    decoded = fuzz.run(DECODER, SEEDS, MUTATE, seed=0xE41B, prefixes=("enip.", "cip."),
                       session=lambda: session(max_pending=8),
                       bounded=lambda s: len(s.pending) <= 8)
    assert decoded >= 100_000


# --- real captures: the whole pipeline ------------------------------------------------------

PCAP_FILES = sorted(p for p in ENIP_PCAPS.glob("*") if p.suffix in (".pcap", ".pcapng"))
_CACHE: dict[Path, list[dict[str, Any]]] = {}


def records(path: Path) -> list[dict[str, Any]]:
    """Every record ``edge-agent decode`` would print for a capture, in order."""
    if path not in _CACHE:
        events: list[Any] = []
        Pipeline(config.load(), on_event=events.append).run(FileSource([str(path)]))
        _CACHE[path] = [to_record(ev) for ev in events]
    return _CACHE[path]


def _ours(path: Path) -> list[tuple]:
    out = []
    for r in records(path):
        f = r.get(r["proto"], {})
        if r["proto"] == "enip" and "command_code" in f:
            out.append(("enip", f["command_code"], int(f["session_handle"], 16),
                        f["status_code"]))
        elif r["proto"] == "enip" and "sequence_number" in f:
            out.append(("io", int(f["connection_id"], 16), f["sequence_number"],
                        f.get("data_length")))
        elif r["proto"] == "cip" and "service_code" in f:
            if r["is_request"]:
                out.append(("req", f["service_code"], f.get("class_id"), f.get("instance_id"),
                            f.get("attribute_id")))
            else:
                out.append(("resp", f["service_code"], f.get("status_code")))
    return out


def _layers(value: Any) -> Iterator[dict]:
    if isinstance(value, list):
        for v in value:
            yield from _layers(v)
    elif isinstance(value, dict):
        yield value


def _find(node: Any, key: str, skip: tuple[str, ...] = ("cip",)) -> Any:
    """First value of ``key`` under ``node``, not looking into nested CIP messages."""
    if isinstance(node, list):
        for v in node:
            found = _find(v, key, skip)
            if found is not None:
                return found
        return None
    if not isinstance(node, dict):
        return None
    if key in node:
        return node[key]
    for k, v in node.items():
        if k in skip or k.startswith("CIP Embedded"):
            continue
        found = _find(v, key, skip)
        if found is not None:
            return found
    return None


def _cip_nodes(node: Any) -> Iterator[dict]:
    """CIP messages in document order, embedded ones after the one that carries them."""
    if isinstance(node, list):
        for v in node:
            yield from _cip_nodes(v)
    elif isinstance(node, dict):
        if "cip.service" in node:
            yield node
        for v in node.values():
            yield from _cip_nodes(v)


def _num(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0]
    return None if value is None else int(value, 0)


def _tshark(path: Path) -> list[tuple]:
    res = subprocess.run([TSHARK, "-r", str(path), "-Y", "enip", "-T", "json",
                          "--no-duplicate-keys"], capture_output=True, text=True, check=True)
    out: list[tuple] = []
    for pkt in json.loads(res.stdout or "[]"):
        layers = pkt["_source"]["layers"]
        for e in _layers(layers.get("enip")):
            cmd = _find(e, "enip.command")
            if cmd is not None:
                out.append(("enip", int(cmd, 16), int(_find(e, "enip.session"), 16),
                            int(_find(e, "enip.status"), 16)))
            conn = _find(e, "enip.cpf.sai.connid")
            if conn is not None:
                lengths = _find(e, "enip.cpf.typeid_tree")
                out.append(("io", int(conn, 16), int(_find(e, "enip.cpf.sai.seq")),
                            int(lengths[1]["enip.cpf.length"])))
        for name, value in layers.items():
            if not name.startswith("cip") or name == "cipio":
                continue
            for node in _cip_nodes(value):
                sc = int(node["cip.service_tree"]["cip.sc"], 16)
                if node["cip.service_tree"]["cip.rr"] == "0x01":
                    out.append(("resp", sc, _num(_find(node, "cip.genstat"))))
                    continue
                path = next((v for k, v in node.items() if k.startswith("Request Path")
                             and isinstance(v, dict) and "cip.epath" in v), {})
                seg = path.get("cip.path_segment_tree", {})
                cls = _num(_find(seg, "cip.class"))
                if sc == 0x52 and cls == 0x06:
                    continue           # Unconnected Send: we report the request it carries
                out.append(("req", sc, cls, _num(_find(seg, "cip.instance")),
                            _num(_find(seg, "cip.attribute"))))
    return out


def agreement(path: Path) -> tuple[float, list, list]:
    ours, theirs = _ours(path), _tshark(path)
    if not theirs:
        return (100.0 if not ours else 0.0), ours, theirs
    matcher = difflib.SequenceMatcher(None, ours, theirs, autojunk=False)
    same = sum(block.size for block in matcher.get_matching_blocks())
    return 100.0 * same / max(len(ours), len(theirs)), ours, theirs


@pytest.mark.skipif(TSHARK is None, reason="tshark not installed (apt-get install tshark)")
@pytest.mark.parametrize("path", PCAP_FILES, ids=[p.name for p in PCAP_FILES])
def test_pcap_agrees_with_tshark(path: Path) -> None:
    pct, ours, theirs = agreement(path)
    print(f"{path.name}: {pct:.2f}% agreement ({len(ours)} ours, {len(theirs)} tshark)")
    assert pct >= 99.0, list(difflib.unified_diff(list(map(str, theirs)), list(map(str, ours)),
                                                  "tshark", "ours", lineterm=""))[:60]


@pytest.mark.skipif(TSHARK is None, reason="tshark not installed (apt-get install tshark)")
def test_pcap_agreement_overall() -> None:
    same = total = 0.0
    for path in PCAP_FILES:
        pct, ours, theirs = agreement(path)
        n = max(len(ours), len(theirs))
        same += pct * n / 100
        total += n
    print(f"overall: {100 * same / total:.2f}% of {int(total)} messages")
    assert total >= 4000 and 100.0 * same / total >= 99.0


def test_pcaps_decode_without_anomalies() -> None:
    for path in PCAP_FILES:
        for r in records(path):
            if path.name == "set_attribute_single_service_cip.pcapng":
                continue                 # checked in test_pcap_set_attribute_single below
            assert r["anomalies"] == [], r


# --- ICSNPP baselines -------------------------------------------------------------------------

def _zeek_rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()
            if line and not line.startswith("#")]


def _icsnpp_name(name: str) -> str:
    snake = name.lower().replace(" ", "_").replace("/", "_")
    # ICSNPP pluralises two service names the spec (and Wireshark) spell in the singular
    return {"set_attributes_single": "set_attribute_single",
            "get_attributes_single": "get_attribute_single"}.get(snake, snake)


BASELINE_DIRS = sorted(p for p in ENIP_BASELINES.glob("*") if p.is_dir())


@pytest.mark.parametrize("base", BASELINE_DIRS, ids=[p.name for p in BASELINE_DIRS])
def test_enip_log_matches_icsnpp(base: Path) -> None:
    rows = _zeek_rows(base / "enip.log")
    theirs = [(r[6] == "T", r[11], _icsnpp_name(r[12]), int(r[13]), r[14], r[15].lower(), r[16],
               r[17]) for r in rows]
    ours = [(r["is_request"], f"0x{f['command_code']:02x}", f["command"], f["length"],
             f["session_handle"], f["status"], f["sender_context"], f"0x{f['options']:08x}")
            for r in records(ENIP_PCAPS / (base.name + _suffix(base.name)))
            if r["proto"] == "enip" and "command_code" in (f := r["enip"])]
    assert ours == theirs


def _suffix(name: str) -> str:
    return ".pcap" if (ENIP_PCAPS / (name + ".pcap")).exists() else ".pcapng"


def _class_name(f: dict[str, Any]) -> str | None:
    # The Rockwell Logix objects we name (symbol, template, wall clock) are "unknown" to ICSNPP.
    return "unknown" if f.get("class_id") in (0x6B, 0x6C, 0x8B) else f.get("class_name")


@pytest.mark.parametrize("base", BASELINE_DIRS, ids=[p.name for p in BASELINE_DIRS])
def test_cip_log_matches_icsnpp(base: Path) -> None:
    """One ICSNPP cip.log row per CIP service, Multiple Service Packet members included."""
    theirs = []
    for r in _zeek_rows(base / "cip.log"):
        request = r[12] == "request"
        theirs.append((r[6] == "T", int(r[11]), request, int(r[13], 16), _icsnpp_name(r[14]),
                       None if r[15] == "-" else int(r[15], 16),
                       int(r[19], 16) if request else None,
                       _icsnpp_name(r[20]) if request else None,
                       int(r[21], 16) if request else None,
                       None if r[22] == "-" or not request else int(r[22], 16)))
    ours = []
    for rec in records(ENIP_PCAPS / (base.name + _suffix(base.name))):
        if rec["proto"] != "cip":
            continue
        f = rec["cip"]
        req = rec["is_request"]
        ours.append((req, f["sequence_count"], req, f["service_code"], f["service"],
                     f.get("status_code"), f.get("class_id") if req else None,
                     _class_name(f) if req else None, f.get("instance_id") if req else None,
                     f.get("attribute_id") if req else None))
    assert ours == theirs


def test_cip_responses_know_their_request_path() -> None:
    """What ICSNPP leaves blank ("-") on replies, pairing fills in."""
    recs = [r for r in records(ENIP_PCAPS / "enip_cip_example.pcap") if r["proto"] == "cip"]
    replies = [r["cip"] for r in recs if not r["is_request"]]
    assert len(replies) == 573
    assert all("class_id" in f for f in replies)


def test_cip_identity_log_matches_icsnpp() -> None:
    (row,) = _zeek_rows(ENIP_BASELINES / "enip_cip_example" / "cip_identity.log")
    (rec,) = [r for r in records(ENIP_PCAPS / "enip_cip_example.pcap")
              if r["proto"] == "enip" and "vendor_id" in r["enip"]]
    f = rec["enip"]
    assert (rec["src_ip"], str(rec["src_port"])) == (row[7], row[8])
    assert [str(f["encapsulation_version"]), f["socket_address"], str(f["socket_port"]),
            str(f["vendor_id"]), f["vendor"], str(f["device_type_code"]), f["device_type"],
            str(f["product_code"]), f["revision"], f"0x{f['device_status']:04x}",
            f["serial_number"], f["product_name"], f"0x{f['device_state']:04x}"] == \
        row[11:17] + [_icsnpp_name(row[17])] + row[18:]


def test_cip_io_log_matches_icsnpp() -> None:
    rows = _zeek_rows(ENIP_BASELINES / "enip_cip_example" / "cip_io.log")
    theirs = [(r[7], r[9], r[11], int(r[12]), int(r[13])) for r in rows]
    ours = [(r["src_ip"], r["dest_ip"], r["enip"]["connection_id"],
             r["enip"]["sequence_number"], r["enip"]["data_length"])
            for r in records(ENIP_PCAPS / "enip_cip_example.pcap")
            if r["proto"] == "enip" and "sequence_number" in r["enip"]]
    assert ours == theirs
    assert len(ours) == 398


def test_pcap_set_attribute_single() -> None:
    """pycomm's capture: Set_Attribute_Single on the Identity class with no attribute and no
    value; ICSNPP logs it plainly, we flag the path that cannot name an attribute."""
    (encap, req) = records(ENIP_PCAPS / "set_attribute_single_service_cip.pcapng")
    assert encap["enip"]["sender_context"] == "0x5f7079636f6d6d5f"          # "_pycomm_"
    assert (req["cip"]["service"], req["cip"]["class_name"], req["cip"]["instance_id"]) == \
        ("set_attribute_single", "identity", 0)
    assert req["anomalies"] == ["cip.invalid_path"]


# --- the labelled attack captures -------------------------------------------------------------

def test_reboot_capture_shows_stop_reset_start() -> None:
    """EIP-RebootorRestart.pcap (Digital Bond QuickDraw label "reboot or restart"): RSLogix
    stops the controller, resets a Rockwell object and starts it again, all over one class 3
    connection. The records name each operation, paired with its successful reply."""
    recs = [r for r in records(ENIP_PCAPS / "EIP-RebootorRestart.pcap") if r["proto"] == "cip"]
    ops = [(r["is_request"], r["cip"]["service"], r["cip"]["class_id"], r["cip"]["instance_id"],
            r["cip"].get("status"))
           for r in recs if r["cip"]["service"] in ("reset", "start", "stop")]
    assert ops == [(True, "stop", 0x8E, 1, None), (False, "stop", 0x8E, 1, "success"),
                   (True, "reset", 0x72, 1, None), (False, "reset", 0x72, 1, "success"),
                   (True, "start", 0x8E, 1, None), (False, "start", 0x8E, 1, "success")]
    kinds = [r["cip"]["service"] for r in recs if r["is_request"]]
    assert kinds.index("stop") < kinds.index("reset") < kinds.index("start")
    # the controller said who it is before being stopped
    ident = next(r["cip"] for r in recs if r["cip"].get("product_name"))
    assert (ident["vendor"], ident["product_name"], ident["revision"], ident["serial_number"]) == \
        ("Rockwell Automation/Allen-Bradley", "1756-L61/B LOGIX5561", "16.20", "0x0051823f")
    assert ident["device_type"] == "programmable_logic_controller"


def test_software_upload_failure_capture_has_no_enip() -> None:
    """EIP-SoftwareUploadFailure.pcap holds STP, CDP, LLDP, ARP, NetBIOS and IGMP only: the
    labelled upload is not in the capture, so nothing here can show it."""
    recs = records(ENIP_PCAPS / "EIP-SoftwareUploadFailure.pcap")
    assert not [r for r in recs if r["proto"] in ("enip", "cip")]
