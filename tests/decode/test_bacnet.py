"""BACnet/IP decoder (ASHRAE 135 Annex J, clauses 6, 20, 21): BVLL, NPDU routing and network
messages, every APDU type, the property services, segmentation, pairing, identity and
anomalies; whole captures checked against tshark and the ICSNPP baselines."""
from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from edge_agent.decode import IDENTITY_KEYS, Limits, Message
from edge_agent.decode.bacnet import (
    BVLC,
    DECODER,
    NPDU,
    BACnetSession,
    ComplexAck,
    ConfirmedRequest,
    UnconfirmedRequest,
)
from edge_agent.decode.bacnet_tags import (
    BACNET_CONFIRMED_SERVICES,
    BACNET_UNCONFIRMED_SERVICES,
    BACNET_VENDORS,
)
from tests.conftest import fixture_pcaps
from tests.decode import fuzz
from tests.test_agreement import agent_records, agreement, needs_tshark, tshark_rows

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("EDGE_AGENT_SHARED", ROOT.parent / "shared")) / "fixtures"
PCAPS = FIXTURES / "pcaps" / "bacnet"
BASELINES = FIXTURES / "baselines" / "bacnet"
needs_fixtures = pytest.mark.skipif(not PCAPS.is_dir(), reason=f"no fixture captures at {PCAPS}")


def h(text: str) -> bytes:
    """Hex with spaces and ``|`` separators allowed, so vectors can be laid out field by field."""
    return bytes.fromhex(text.replace("|", " "))


def bip(npdu_apdu: str, func: int = 0x0A) -> bytes:
    """A BVLL message (Original-Unicast-NPDU unless told) around hex NPDU + APDU bytes."""
    body = h(npdu_apdu)
    return bytes(BVLC(function=func, length=4 + len(body))) + body


def one(sess: BACnetSession, msg: bytes, from_client: bool = True) -> Message:
    out = DECODER.safe_feed(sess, msg, from_client, 0.0)
    assert len(out) == 1
    return out[0]


def new() -> BACnetSession:
    return DECODER.session(Limits())


# Vectors used across the module. NPDU: version 1 | control; APDU header; service data.
READ_VENDOR_NAME = bip("01 04"              # NPDU: expecting reply
                       "| 00 05 01 0c"      # confirmed req, max APDU 1476, invoke 1, read_property
                       "| 0c 02000005"      # [0] object id: device (8) << 22 | 5
                       "| 19 79")           # [1] property 121 vendor_name
VENDOR_NAME_ACK = bip("01 00"
                      "| 30 01 0c"          # complex ack, invoke 1, read_property
                      "| 0c 02000005 | 19 79"
                      "| 3e"                # [3] opening
                      "| 75 05 00 41636d65"  # character string, length 5: UTF-8 "Acme"
                      "| 3f")               # [3] closing
WRITE_PV = bip("01 04"
               "| 00 05 02 0f"              # confirmed req, invoke 2, write_property
               "| 0c 00400000"              # analog_output (1), instance 0
               "| 19 55"                    # property 85 present_value
               "| 3e 44 42a00000 3f"        # [3] real 80.0
               "| 49 08")                   # [4] priority 8
SIMPLE_ACK = bip("01 00 | 20 02 0f")        # simple ack, invoke 2, write_property
I_AM = bip("01 00"
           "| 10 00"                        # unconfirmed request, i_am
           "| c4 0200007b"                  # object id: device 123
           "| 22 05c4"                      # unsigned 1476 (max APDU)
           "| 91 00"                        # enumerated 0 segmented_both
           "| 21 05", 0x0B)                 # unsigned 5: Johnson Controls; broadcast
WHO_IS = bip("01 00 | 10 08 | 09 00 | 1a 0fa0", 0x0B)   # [0] 0, [1] 4000


# --- round trip through the dpkt header classes -----------------------------------------------

def test_round_trip_headers() -> None:
    apdu = bytes(ConfirmedRequest(invoke_id=1, service=12)) + h("0c 02000005 19 79")
    npdu = bytes(NPDU(control=0x04)) + apdu
    msg = bytes(BVLC(function=0x0A, length=4 + len(npdu))) + npdu
    assert msg == READ_VENDOR_NAME
    hdr = BVLC(msg)
    assert (hdr.type, hdr.function, hdr.length) == (0x81, 0x0A, len(msg))
    n = NPDU(hdr.data)
    assert (n.version, n.control) == (1, 0x04)
    req = ConfirmedRequest(n.data)
    assert (req.pdu_flags, req.max_resp, req.invoke_id, req.service) == (0, 5, 1, 12)
    assert bytes(UnconfirmedRequest(service=8)) == h("10 08")
    assert bytes(ComplexAck(invoke_id=1, service=12)) == h("30 01 0c")
    m = one(new(), msg)
    assert m.fields == {
        "bvlc_function_code": 10, "bvlc_function": "original_unicast_npdu", "npdu_control": 4,
        "expecting_reply": True, "pdu_type_code": 0, "pdu_type": "confirmed_request",
        "max_segments": None, "max_apdu": 1476, "invoke_id": 1, "pdu_service_code": 12,
        "pdu_service": "read_property", "object_type_code": 8, "object_type": "device",
        "instance_number": 5, "property_code": 121, "property": "vendor_name"}
    assert m.is_request is True and m.kind == "read_property" and m.anomalies == ()


# --- services ---------------------------------------------------------------------------------

def test_read_property_pairs_and_reveals_identity() -> None:
    sess = new()
    q = one(sess, READ_VENDOR_NAME, True)
    r = one(sess, VENDOR_NAME_ACK, False)
    assert q.identity is None
    assert r.anomalies == () and r.is_request is False and r.kind == "read_property"
    assert r.fields["pdu_type"] == "complex_ack" and r.fields["value"] == "Acme"
    assert r.identity == {"vendor": "Acme"}
    assert sess.pending == {}


def test_write_property_value_and_priority() -> None:
    sess = new()
    q = one(sess, WRITE_PV)
    assert q.fields["object_type"] == "analog_output" and q.fields["instance_number"] == 0
    assert q.fields["property"] == "present_value" and q.fields["value"] == 80.0
    assert q.fields["priority"] == 8 and q.kind == "write_property"
    r = one(sess, SIMPLE_ACK, False)
    assert r.anomalies == () and r.fields["pdu_type"] == "simple_ack"
    # the ack takes the object and property of its request
    assert (r.fields["object_type"], r.fields["property"]) == ("analog_output", "present_value")


@pytest.mark.parametrize("data,value", [
    ("00", None),                           # null
    ("11", True),                           # boolean true: the value is in the tag
    ("21 2a", 42),                          # unsigned
    ("31 ff", -1),                          # signed
    ("44 3fc00000", 1.5),                   # real
    ("55 08 3ff8000000000000", 1.5),        # double (extended length 8)
    ("62 beef", "beef"),                    # octet string
    ("75 06 00 4865 6c6c 6f", "Hello"),     # character string, UTF-8
    ("74 00 e9 74 e9", "\\xe9t\\xe9"),      # UTF-8 charset, Latin-1 octets: kept escaped
    ("72 00 4a", "J"),                      # the shortest string: charset + one octet
    ("73 05 e9 74", "\xe9t"),               # charset 5 ISO 8859-1
    ("82 05 a0", "101"),                    # bit string: 5 unused bits of 10100000
    ("91 03", 3),                           # enumerated
    ("a4 7c 07 10 02", "2024-07-16"),       # date: year-1900, month, day, weekday
    ("a4 ff 07 ff ff", "*-07-*"),           # date with wildcards
    ("b4 0d 1e 05 32", "13:30:05.50"),      # time: hour, minute, second, hundredths
    ("c4 00c00007", "binary_input:7"),      # object identifier
])
def test_application_tagged_values(data: str, value: Any) -> None:
    msg = bip(f"01 04 | 00 05 03 0f | 0c 00400001 | 19 55 | 3e {data} 3f")
    m = one(new(), msg)
    assert m.anomalies == (), m
    assert m.fields["value"] == value


def test_constructed_and_multiple_values() -> None:
    # [3] { real 1.0, { [0] context primitive 2a }, unsigned 7 }
    m = one(new(), bip("01 04 | 00 05 03 0f | 0c 00400001 | 19 55 "
                       "| 3e 44 3f800000 | 1e 09 2a 1f | 21 07 3f"))
    assert m.fields["value"] == [1.0, [{"context_tag": 0, "data": "2a"}], 7]
    assert m.anomalies == ()


def test_read_property_multiple_request_and_ack_identity() -> None:
    sess = new()
    q = one(sess, bip("01 04 | 00 05 07 0e"           # invoke 7, read_property_multiple
                      "| 0c 02000065"                 # device 101
                      # [1] { model_name, firmware_revision, object_name }
                      "| 1e 09 46 09 2c 09 4d 1f"))
    assert [p["property"] for p in q.fields["properties"]] == [
        "model_name", "firmware_revision", "object_name"]
    assert q.fields["object_type"] == "device" and q.fields["property"] == "model_name"
    r = one(sess, bip("01 00 | 30 07 0e"
                      "| 0c 02000065 | 1e"            # device 101, [1] list of results
                      "| 29 46 | 4e 75 04 00 4d3130 4f"     # [2] model_name [4] "M10"
                      "| 29 2c | 4e 74 00 332e31 4f"        # firmware_revision "3.1"
                      "| 29 4d | 5e 91 02 91 20 5f"         # object_name: [5] error, unknown
                      "| 29 3a | 4e 75 05 00 48616c6c 4f"   # location "Hall"
                      "| 1f"), False)
    assert r.anomalies == ()
    props = r.fields["properties"]
    assert props[2]["error"] == "unknown_property" and props[2]["error_class"] == "property"
    assert r.identity == {"model": "M10", "firmware": "3.1", "location": "Hall"}
    assert set(r.identity) <= IDENTITY_KEYS


def test_write_property_multiple() -> None:
    m = one(new(), bip("01 04 | 00 05 08 10"                  # invoke 8, write_property_multiple
                       "| 0c 01000003"                        # binary_output 3
                       "| 1e 09 55 2e 91 01 2f 39 0a 1f"))    # present_value := active @ 10
    assert m.fields["properties"] == [{
        "object_type_code": 4, "object_type": "binary_output", "instance_number": 3,
        "property_code": 85, "property": "present_value", "value": 1, "priority": 10}]
    assert m.anomalies == ()


def test_i_am_identity_and_vendor_table() -> None:
    m = one(new(), I_AM)
    assert m.fields["pdu_service"] == "i_am" and m.fields["instance_number"] == 123
    assert (m.fields["max_apdu"], m.fields["segmentation"]) == (1476, "segmented_both")
    assert (m.fields["vendor_id"], m.fields["vendor"]) == (5, "Johnson Controls, Inc.")
    assert m.identity == {"vendor_id": 5, "vendor": "Johnson Controls, Inc."}
    assert m.fields["bvlc_function"] == "original_broadcast_npdu"
    # vendor ids checked against ASHRAE's registry (Wireshark, VOLTTRON and ICSNPP agree)
    assert (BACNET_VENDORS[0], BACNET_VENDORS[7 + 1], BACNET_VENDORS[154]) == (
        "ASHRAE", "Delta Controls", "Unitec Corporation")


def test_routed_i_am_reveals_no_identity() -> None:
    # NPDU control 0x08: SNET 13, SLEN 1, SADR 0x3d: the I-Am comes from behind a router
    m = one(new(), bip("01 08 | 000d 01 3d | 10 00 | c4 0200003d | 21 32 | 91 03 | 21 07"))
    assert (m.fields["snet"], m.fields["sadr"]) == (13, "3d")
    assert m.fields["vendor_id"] == 7 and m.identity is None


def test_who_is_who_has_i_have_time_sync() -> None:
    sess = new()
    m = one(sess, WHO_IS)
    assert (m.fields["range_low"], m.fields["range_high"]) == (0, 4000) and m.kind == "who_is"
    assert one(sess, bip("01 00 | 10 08", 0x0B)).anomalies == ()      # unbounded who_is
    m = one(sess, bip("01 00 | 10 07 | 3d 04 00 414855"))   # who_has [3] name "AHU"
    assert m.fields["object_name"] == "AHU"
    m = one(sess, bip("01 00 | 10 01 | c4 0200007b | c4 00000002 | 75 04 00 4f4154"))
    assert (m.fields["device_instance"], m.fields["object_type"], m.fields["object_name"]) == (
        123, "analog_input", "OAT")
    m = one(sess, bip("01 00 | 10 06 | a4 7c 07 10 02 | b4 09 03 37 00"))
    assert m.fields["time"] == "2024-07-16T09:03:55.00"


def test_device_control_services_keep_passwords_off_the_record() -> None:
    m = one(new(), bip("01 04 | 00 05 09 11"                      # device_communication_control
                       "| 09 3c | 19 01 | 2d 07 00 736563726574"))  # 60 min, disable, "secret"
    assert m.fields["enable_disable"] == "disable" and m.fields["time_duration"] == 60
    assert m.fields["password_present"] is True
    assert "secret" not in repr(m.fields)
    m = one(new(), bip("01 04 | 00 05 0a 14 | 09 01"))            # reinitialize_device warmstart
    assert m.fields["reinitialized_state"] == "warmstart" and m.kind == "reinitialize_device"
    assert m.fields["password_present"] is False


def test_every_service_is_named() -> None:
    sess = new()
    for code, name in BACNET_CONFIRMED_SERVICES.items():
        m = one(sess, bip(f"01 04 | 00 05 {code:02x} {code:02x}"))
        assert (m.fields["pdu_service"], m.kind) == (name, name)
        assert "bacnet.unknown_service" not in m.anomalies
    for code, name in BACNET_UNCONFIRMED_SERVICES.items():
        m = one(sess, bip(f"01 00 | 10 {code:02x}"))
        assert (m.fields["pdu_service"], m.kind) == (name, name)
    assert len(BACNET_CONFIRMED_SERVICES) == 34 and len(BACNET_UNCONFIRMED_SERVICES) == 15


# --- error, reject, abort ---------------------------------------------------------------------

def test_error_reject_abort() -> None:
    sess = new()
    one(sess, WRITE_PV)
    m = one(sess, bip("01 00 | 50 02 0f"          # error, invoke 2, write_property
                      "| 91 02 | 91 28"), False)  # class property, code 40 write_access_denied
    assert m.fields["error_class"] == "property" and m.fields["error"] == "write_access_denied"
    assert m.fields["error_code"] == 40 and m.kind == "write_property_exception"
    assert m.anomalies == () and m.fields["property"] == "present_value"
    # an error wrapped in [0] (e.g. CreateObject-Error) still yields class and code
    one(sess, bip("01 04 | 00 05 03 0a | 0e 09 00 0f"))
    m = one(sess, bip("01 00 | 50 03 0a | 0e 91 03 91 12 0f | 19 00"), False)
    assert (m.fields["error_class"], m.fields["error"]) == ("resources", "no_space_for_object")
    one(sess, READ_VENDOR_NAME)
    m = one(sess, bip("01 00 | 60 01 09"), False)     # reject, invoke 1, unrecognized_service
    assert (m.fields["reject_reason_code"], m.fields["reject_reason"]) == (9,
                                                                             "unrecognized_service")
    # a reject fails its request: the kind is that request's exception
    assert m.kind == "read_property_exception" and m.anomalies == () and m.is_request is False
    one(sess, READ_VENDOR_NAME)
    m = one(sess, bip("01 00 | 71 01 04"), False)     # abort by the server: segmentation
    assert m.fields["abort_reason"] == "segmentation_not_supported" and m.fields["server"]
    assert m.kind == "read_property_exception"
    assert m.anomalies == () and sess.pending == {}
    one(sess, READ_VENDOR_NAME)
    m = one(sess, bip("01 00 | 70 01 41"), True)      # the client aborts, proprietary 65
    assert m.fields["abort_reason"] == "proprietary" and m.is_request is True
    assert m.kind == "abort"
    m = one(sess, bip("01 00 | 60 63 09"), False)     # reject of a request never seen
    assert m.kind == "reject_exception" and m.anomalies == ("bacnet.unsolicited_response",)
    assert sess.pending == {}


# --- segmentation -----------------------------------------------------------------------------

def test_segmented_complex_ack_is_reassembled() -> None:
    sess = new()
    one(sess, bip("01 04 | 02 75 05 0c | 0c 02000005 | 19 4c"))   # object_list, invoke 5
    first = one(sess, bip("01 00 | 3c 05 00 02 0c"       # segmented, more follows, seq 0, window 2
                          "| 0c 02000005 | 19 4c | 3e | c4 00000001"), False)
    assert first.fields["segmented"] and first.fields["more_follows"]
    assert "value" not in first.fields and first.anomalies == ()
    sack = one(sess, bip("01 00 | 40 05 00 02"), True)   # segment ack by the client
    assert sack.is_request is True and sack.kind == "segment_ack"
    assert (sack.fields["sequence_number"], sack.fields["window_size"]) == (0, 2)
    last = one(sess, bip("01 00 | 38 05 01 02 0c"        # seq 1, last segment
                         "| c4 00400002 | 3f"), False)
    assert last.anomalies == () and last.fields["segment_count"] == 2
    assert last.fields["value"] == ["analog_input:1", "analog_output:2"]
    assert sess.pending == {} and sess.segments == {}


def test_lost_segment_is_not_decoded() -> None:
    sess = new()
    one(sess, bip("01 00 | 3c 05 00 02 0c | 0c 02000005 | 19 4c | 3e | c4 00000001"), False)
    dup = one(sess, bip("01 00 | 3c 05 00 02 0c | 0c 02000005 | 19 4c | 3e | c4 00000001"),
              False)                                      # retransmitted first segment
    assert dup.fields["segment_count"] == 1
    one(sess, bip("01 00 | 3c 05 01 02 0c | c4 00000002"), False)
    m = one(sess, bip("01 00 | 38 05 03 02 0c | c4 00400002 | 3f"), False)   # seq 2 lost
    assert m.fields["segment_lost"] is True and "value" not in m.fields
    assert m.anomalies == ("bacnet.unsolicited_response",)      # its request was not seen


def test_segments_are_bounded() -> None:
    sess = DECODER.session(Limits(max_pdu=8))
    one(sess, bip("01 00 | 3c 09 00 02 0c | 0c 02000005 | 19 4c | 3e c4 00000001"), False)
    m = one(sess, bip("01 00 | 38 09 01 02 0c | 3f"), False)
    assert "value" not in m.fields and m.fields["segment_count"] == 2
    sess = DECODER.session(Limits(max_pending=2))
    for invoke in range(10):
        one(sess, bip(f"01 00 | 3c {invoke:02x} 00 02 0c | 0c 02000005"), False)
    assert len(sess.segments) <= 2


# --- network layer and BVLL -------------------------------------------------------------------

def test_network_layer_messages() -> None:
    m = one(new(), bip("01 80 | 00", 0x0B))                       # who_is_router_to_network
    assert m.fields["network_message"] == "who_is_router_to_network" and m.is_request is True
    m = one(new(), bip("01 80 | 01 | 000a 000b", 0x0B))           # i_am_router: networks 10, 11
    assert m.fields["networks"] == [10, 11] and m.kind == "i_am_router_to_network"
    assert m.is_request is False and m.anomalies == ()
    m = one(new(), bip("01 a0 | ffff 00 ff | 12", 0x0B))          # DNET broadcast, hop count 255
    assert (m.fields["dnet"], m.fields["hop_count"]) == (0xFFFF, 255)
    assert m.kind == "what_is_network_number"
    m = one(new(), bip("01 80 | 03 | 01 0007"))                   # reject: not directly connected
    assert (m.fields["reject_reason"], m.fields["networks"]) == ("not_directly_connected", [7])
    m = one(new(), bip("01 80 | 9a | 0104"))                      # proprietary, vendor 260
    assert m.fields["network_message"] == "proprietary" and m.fields["vendor_id"] == 260


def test_bvll_functions() -> None:
    m = one(new(), h("81 05 0006 | 003c"))                        # register_foreign_device, TTL 60
    assert (m.fields["bvlc_function"], m.fields["ttl"], m.is_request) == (
        "register_foreign_device", 60, True)
    m = one(new(), h("81 00 0006 | 0030"))                        # result: register FD NAK
    assert m.fields["result"] == "register_foreign_device_nak" and m.is_request is False
    m = one(new(), h("81 03 000e | c0a80101 bac0 ffffffff"))      # read BDT ack: one entry
    assert m.fields["entries"] == 1 and m.anomalies == ()
    # Forwarded-NPDU from 192.168.1.10:47808: a Who-Is for devices 1-5
    fwd = one(new(), h("81 04 0012 | c0a8010a bac0 | 01 00 | 10 08 | 09 01 19 05"))
    assert (fwd.fields["originating_ip"], fwd.fields["originating_port"]) == ("192.168.1.10",
                                                                              47808)
    assert fwd.fields["pdu_service"] == "who_is" and fwd.anomalies == ()
    m = one(new(), h("81 09 0008 | 01 00 | 10 08"))               # distribute broadcast
    assert m.fields["bvlc_function"] == "distribute_broadcast_to_network"


# --- malformed input: each anomaly by name ----------------------------------------------------

@pytest.mark.parametrize("msg,anomaly", [
    (h("82 0a 0008 | 01 00 | 10 08"), "bacnet.invalid_bvlc"),     # BACnet/IPv6 type on 47808
    (h("81 0f 0004"), "bacnet.invalid_bvlc"),                      # BVLC function 0x0f
    (h("81 0a 0006 | 01 00 | 10 08"), "bacnet.invalid_length"),   # BVLC length 6, 8 octets
    (h("81 0a 0020 | 01 00 | 10 08"), "bacnet.truncated"),        # BVLC length 32, 8 octets
    (h("81 0a"), "bacnet.truncated"),                              # no BVLC length
    (h("81 05 0005 | 00"), "bacnet.truncated"),                    # register FD: TTL cut
    (h("81 0a 0008 | 02 00 | 10 08"), "bacnet.invalid_npdu"),     # NPDU version 2
    (h("81 0a 0008 | 01 40 | 10 08"), "bacnet.invalid_npdu"),     # reserved control bit 6
    (h("81 0a 000b | 01 08 | 000d 00 | 10 08"), "bacnet.invalid_npdu"),   # SLEN 0
    (h("81 0a 0007 | 01 80 | 55"), "bacnet.invalid_npdu"),        # reserved network message
    (h("81 0a 0007 | 01 20 | 00"), "bacnet.truncated"),           # DNET cut
    (h("81 0a 0007 | 01 00 | 90"), "bacnet.invalid_apdu"),        # PDU type 9
    (h("81 0a 0008 | 01 00 | 10 30"), "bacnet.unknown_service"),  # unconfirmed service 48
    (h("81 0a 000a | 01 04 | 00 05 01 7f"), "bacnet.unknown_service"),
    (h("81 0a 000d | 01 04 | 00 05 01 0c | 0c 0200"), "bacnet.truncated"),  # object id cut
    (h("81 0a 000c | 01 04 | 00 05 01 0c | 19 79"), "bacnet.invalid_length"),  # [0] missing
    (h("81 0a 0009 | 01 04 | 00 05 01"), "bacnet.truncated"),     # no service choice
    (h("81 0a 0009 | 01 00 | 30 01 0c"), "bacnet.unsolicited_response"),
    (h("81 0a 000a | 01 00 | 20 01 0f 00"), "bacnet.invalid_length"),   # simple ack + 1 octet
])
def test_malformed(msg: bytes, anomaly: str) -> None:
    m = new().feed(msg, True, 0.0)[0]         # not safe_feed: the decoder must not raise
    assert anomaly in m.anomalies, m
    assert m.proto == "bacnet" and "bacnet.malformed" not in m.anomalies


def test_long_integer_is_invalid_not_unprintable() -> None:
    # an unsigned of 2000 octets would print as ~4800 digits, past Python's int-to-str limit
    body = "01 04 | 00 05 03 0f | 0c 00400001 | 19 55 | 3e 25 fe 07d0" + " ff" * 2000 + " 3f"
    m = new().feed(bip(body), True, 0.0)[0]
    assert "bacnet.invalid_length" in m.anomalies and "value" not in m.fields
    json.dumps(m.fields)


def test_too_many_pending() -> None:
    sess = DECODER.session(Limits(max_pending=3))
    for invoke in range(3):
        m = one(sess, bip(f"01 04 | 00 05 {invoke:02x} 0c | 0c 02000005 | 19 79"))
        assert m.anomalies == ()
    m = one(sess, bip("01 04 | 00 05 03 0c | 0c 02000005 | 19 79"))
    assert m.anomalies == ("bacnet.too_many_pending",) and len(sess.pending) == 3
    # invoke 0 was dropped; a reused invoke id replaces its request
    assert one(sess, bip("01 00 | 20 00 0c"), False).anomalies == ("bacnet.unsolicited_response",)
    for _ in range(5):
        one(sess, bip("01 04 | 00 05 03 0c | 0c 02000005 | 19 79"))
    assert len(sess.pending) == 3
    assert sess.close(1.0) == [] and sess.pending == {}


def test_every_truncation_decodes() -> None:
    for msg in (READ_VENDOR_NAME, VENDOR_NAME_ACK, WRITE_PV, I_AM, WHO_IS):
        for cut in range(len(msg)):
            m = new().feed(msg[:cut], False, 0.0)[0]
            assert m.anomalies, (msg.hex(), cut)


# --- probe ------------------------------------------------------------------------------------

def test_probe() -> None:
    for msg in (READ_VENDOR_NAME, VENDOR_NAME_ACK, I_AM, WHO_IS, h("81 05 0006 003c")):
        assert DECODER.probe(msg)
    assert not DECODER.probe(h("81 0a 0010 | 01 00 | 10 08"))          # length disagrees
    assert not DECODER.probe(h("81 0a 0008 | 02 00 | 10 08"))          # NPDU version 2
    assert not DECODER.probe(h("80 0a 0008 | 01 00 | 10 08"))
    assert not DECODER.probe(b"GET / HTTP/1.1\r\n")
    assert not DECODER.probe(h("81 05 0008 | 003c 0000"))              # TTL is two octets
    big = bip("01 00 | 10 08" + " 00" * 400)
    assert DECODER.probe(big[:256])                                    # probe sees 256 bytes
    assert DECODER.name == "bacnet" and DECODER.udp_ports == frozenset({47808})


# --- fuzz -------------------------------------------------------------------------------------

SEEDS = [READ_VENDOR_NAME, VENDOR_NAME_ACK, WRITE_PV, SIMPLE_ACK, I_AM, WHO_IS,
         bip("01 00 | 3c 05 00 02 0c | 0c 02000005 | 19 4c | 3e c4 00000001"),
         bip("01 00 | 38 05 01 02 0c | c4 00400002 | 3f"),
         bip("01 04 | 00 05 07 0e | 0c 02000065 | 1e 09 46 09 2c 09 4d 1f"),
         bip("01 00 | 30 07 0e | 0c 02000065 | 1e 29 46 4e 75 04 00 4d3130 4f"
             "| 29 4d 5e 91 02 91 20 5f 1f"),
         bip("01 00 | 50 02 0f | 91 02 | 91 28"), bip("01 00 | 60 01 09"),
         bip("01 08 | 000d 01 3d | 10 00 | c4 0200003d | 21 32 | 91 03 | 21 07"),
         bip("01 80 | 01 | 000a 000b", 0x0B),
         h("81 04 0012 | c0a8010a bac0 | 01 00 | 10 08 | 09 01 19 05"),
         h("81 00 0006 0030"), bip("01 04 | 00 05 03 0f | 0c 00400001 | 19 55 "
                                   "| 3e 44 3f800000 | 1e 09 2a 1f | 21 07 3f")]


def _tag(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 6:
        # tag octets: lengths 5 (extended), opening/closing, extended tag numbers
        buf[rng.randrange(6, len(buf))] = rng.choice((0x05, 0x0D, 0x0E, 0x0F, 0x3E, 0x3F,
                                                      0xF5, 0x75, 0xC4, 0x1E, 0x1F))


def _pdu_type(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 7:
        buf[6] = rng.randrange(256)                   # any PDU type and flags


def _npdu_control(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 5:
        buf[5] = rng.choice((0x00, 0x04, 0x08, 0x20, 0x28, 0x80, 0xFF))


MUTATE = fuzz.Mutator((fuzz.overwrite, fuzz.truncate, fuzz.insert(8), _tag, _pdu_type,
                       _npdu_control), fix=fuzz.length_field(2, 2, chance=0.7))   # BVLC length


def _datagram(rng: random.Random, i: int, buf: bytes) -> list[bytes]:
    assert DECODER.split(buf) == ([buf], len(buf))
    return [buf]


def test_fuzz_no_exception_escapes() -> None:
    decoded = fuzz.run(DECODER, SEEDS, MUTATE, seed=0xBAC0, units=_datagram,
                       session=lambda: DECODER.session(Limits(max_pending=8, max_pdu=4096)),
                       check=fuzz.writable,
                       bounded=lambda s: len(s.pending) <= 8 and len(s.segments) <= 8)
    assert decoded == 100_000


# --- real captures ----------------------------------------------------------------------------

def _code(v: str | None) -> int | None:
    return int(v, 0) if v else None


@needs_tshark
@needs_fixtures
def test_pipeline_agrees_with_tshark() -> None:
    grand = [0, 0]
    for path in fixture_pcaps("bacnet"):
        ours: dict = defaultdict(list)
        for r in agent_records(path, "bacnet"):
            b = r["bacnet"]
            ours[(r["src_ip"], r["src_port"])].append(
                (b.get("bvlc_function_code"), b.get("pdu_type_code"), b.get("pdu_service_code"),
                 b.get("invoke_id")))
        theirs: dict = defaultdict(list)
        for row in tshark_rows(path, "bvlc", ["bvlc.function", "bacapp.type",
                                              "bacapp.confirmed_service",
                                              "bacapp.unconfirmed_service", "bacapp.invoke_id"]):
            src, port = (row[0] or row[1])[0], int((row[2] or row[3])[0])
            func, ptype, conf, unconf, invoke = (c[0] if c else None for c in row[4:9])
            theirs[(src, port)].append((_code(func), _code(ptype), _code(conf) if conf else
                                        _code(unconf), _code(invoke)))
        matched, total, diffs = agreement(ours, theirs)
        print(f"{path.name}: {matched}/{total} messages agree with tshark")
        assert total and matched / total >= 0.99, (path.name, diffs[:5])
        grand[0] += matched
        grand[1] += total
    print(f"bacnet overall: {grand[0]}/{grand[1]}")


def _zeek(path: Path) -> list[dict[str, str]]:
    fields: list[str] = []
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            rows.append(dict(zip(fields, line.split("\t"))))
    return rows


def _icsnpp_name(v: Any) -> str:
    return "-" if v is None else str(v).replace("_", "-")


@needs_fixtures
@pytest.mark.parametrize("name", ["bacnet_error_reject_abort", "bacnet_segmented_data"])
def test_pipeline_matches_icsnpp_bacnet_log(name: str) -> None:
    """bacnet.log: one line per APDU; a segmented ComplexACK once, with its last segment."""
    recs = [r for r in agent_records(PCAPS / f"{name}.pcap", "bacnet")
            if not r["bacnet"].get("more_follows")]
    ours = []
    for r in recs:
        b = r["bacnet"]
        service = b.get("pdu_service") or {"reject_pdu": "reject", "abort_pdu": "abort"}.get(
            b["pdu_type"], "-")
        result = b.get("error") or b.get("reject_reason") or b.get("abort_reason")
        ours.append((b["bvlc_function"], b["pdu_type"], service,
                     str(b.get("invoke_id", "-")), _icsnpp_name(result)))
    theirs = [(z["bvlc_function"].lower(), z["pdu_type"].lower(), z["pdu_service"],
               z["invoke_id"], z["result_code"])
              for z in _zeek(BASELINES / name / "bacnet.log")]
    assert ours == theirs


@needs_fixtures
@pytest.mark.parametrize("name", ["bacnet_error_reject_abort", "bacnet_segmented_data"])
def test_pipeline_matches_icsnpp_discovery_log(name: str) -> None:
    """bacnet_discovery.log: I-Am identities (vendor names), I-Have and Who-Has objects."""
    recs = [r["bacnet"] for r in agent_records(PCAPS / f"{name}.pcap", "bacnet")
            if r["bacnet"].get("pdu_service") in ("i_am", "i_have", "who_has", "who_is")]
    rows = _zeek(BASELINES / name / "bacnet_discovery.log")
    assert [b["pdu_service"].replace("_", "-") for b in recs] == [z["pdu_service"] for z in rows]
    checked = 0
    for b, z in zip(recs, rows):
        if b["pdu_service"] == "i_am":
            # ICSNPP names an unregistered vendor id "Unknown Vendor-0x539"; we say "unknown"
            vendor = b["vendor"] if b["vendor"] != "unknown" else (
                f"Unknown Vendor-{b['vendor_id']:#x}")
            assert (b["object_type"], str(b["instance_number"]), vendor) == (
                z["object_type"], z["instance_number"], z["vendor"])
            checked += 1
        elif b["pdu_service"] == "i_have":
            assert (str(b["device_instance"]), b["object_type"].replace("_", "-"),
                    str(b["instance_number"])) == (z["device_id_number"], z["object_type"],
                                                   z["instance_number"])
            if z["object_name"] != "(empty)":     # ICSNPP leaves the Shift-JIS name empty
                assert b["object_name"] == z["object_name"]
            checked += 1
        elif b["pdu_service"] == "who_has":
            if z["object_type"] != "-":
                assert (b["object_type"], str(b["instance_number"])) == (z["object_type"],
                                                                         z["instance_number"])
            else:
                assert b["object_name"] == z["object_name"]
            checked += 1
    assert checked >= 3


@needs_fixtures
@pytest.mark.parametrize("name", ["bacnet_error_reject_abort", "bacnet_segmented_data"])
def test_pipeline_matches_icsnpp_property_log(name: str) -> None:
    """bacnet_property.log: object, property and array index of every property access, and
    the values of acknowledgements (the first 64 of a long list)."""
    services = {12: "read-property", 14: "read-property-multiple", 15: "write-property",
                26: "read-range"}
    ours: list[tuple] = []
    values: list[tuple] = []
    for r in agent_records(PCAPS / f"{name}.pcap", "bacnet"):
        b = r["bacnet"]
        if b.get("pdu_service_code") not in services or b.get("more_follows"):
            continue
        if b["pdu_type"] not in ("confirmed_request", "complex_ack"):
            continue
        svc = services[b["pdu_service_code"]]
        svc += "" if svc == "write-property" else (
            "-request" if b["pdu_type"] == "confirmed_request" else "-ack")
        for p in b.get("properties") or [b]:
            row = (str(b["invoke_id"]), svc, _icsnpp_name(p["object_type"]),
                   str(p["instance_number"]), _icsnpp_name(p["property"]),
                   str(p.get("array_index", "-")))
            if svc.endswith("-ack"):
                vals = p["value"] if isinstance(p["value"], list) else [p["value"]]
                values += [(row, str(v)) for v in vals]
            if not ours or ours[-1] != row:
                ours.append(row)
    theirs: list[tuple] = []
    their_values: list[tuple] = []
    for z in _zeek(BASELINES / name / "bacnet_property.log"):
        row = (z["invoke_id"], z["pdu_service"], z["object_type"], z["instance_number"],
               z["property"], z["array_index"])
        if z["pdu_service"].endswith("-ack"):
            their_values.append((row, z["value"].replace("-", "_").replace(": ", ":")))
        if not theirs or theirs[-1] != row:
            theirs.append(row)
    # ICSNPP gives ReadRange, which has no array index here, array index 0
    theirs = [t[:5] + ("-",) if t[1] == "read-range-request" else t for t in theirs]
    assert ours == theirs
    # our value lists stop at BACNET_MAX_VALUES; compare what both have, in order
    per_row: dict[tuple, list[str]] = defaultdict(list)
    for row, v in their_values:
        per_row[row].append(v)
    mine: dict[tuple, list[str]] = defaultdict(list)
    for row, v in values:
        mine[row].append(v)
    for row, vals in mine.items():
        assert vals == per_row[row][:len(vals)], row
    assert bool(values) is (name == "bacnet_segmented_data")


@needs_fixtures
def test_pipeline_inventory_learns_i_am_vendor() -> None:
    recs = agent_records(PCAPS / "bacnet_segmented_data.pcap", "bacnet")
    assert all(not r["anomalies"] for r in recs)
    i_am = [r for r in recs if r["bacnet"].get("pdu_service") == "i_am"]
    assert {(r["src_ip"], r["bacnet"]["instance_number"], r["bacnet"]["vendor"]) for r in i_am} == {
        ("10.0.0.1", 0, "Unitec Corporation"), ("10.0.0.2", 254, "Unitec Corporation")}
