"""PROFINET: DCP frames laid out block by block, RT frame counting, PNIO-CM over DCE/RPC,
anomalies, fuzz runs, and the fixture captures against tshark and the ICSNPP baselines."""
from __future__ import annotations

import random
import struct
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from edge_agent.agent import Pipeline
from edge_agent.capture.source import FileSource
from edge_agent.config import load
from edge_agent.decode import Decoder, Limits, Message, discover
from edge_agent.decode.profinet import DECODER, DCPBlock, DCPHeader
from edge_agent.decode.profinet_cm import DECODER as CM, DCERPCHeader
from tests.conftest import BASELINES, fixture_pcaps
from tests.decode import fuzz
from tests.test_agreement import agent_records, agreement, needs_tshark, tshark_rows

PCAPS = fixture_pcaps("profinet")
needs_fixtures = pytest.mark.skipif(not PCAPS, reason="no PROFINET fixture captures in shared/")


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


def dcp(frame_id: int, sid: int, stype: int, blocks: bytes, xid: int = 0x1234,
        delay: int = 0) -> bytes:
    return bytes(DCPHeader(frame_id=frame_id, service_id=sid, service_type=stype, xid=xid,
                           response_delay=delay, data_length=len(blocks), data=blocks))


def block(opt: int, sub: int, value: bytes) -> bytes:
    raw = bytes(DCPBlock(option=opt, suboption=sub, length=len(value), data=value))
    return raw + b"\0" * (len(value) & 1)


def one(pdu: bytes, dec=DECODER) -> Message:
    msgs = dec.safe_feed(dec.session(Limits()), pdu, True, 0.0)
    assert len(msgs) == 1
    return msgs[0]


# PROFINET-RT.pcap frame 1, after the Ethertype 0x8892
IDENTIFY_REQUEST = h(
    "fefe |"                                     # FrameID: identify multicast request
    "05 | 00 |"                                  # ServiceID identify, ServiceType request
    "0300bf9a |"                                 # Xid
    "0001 |"                                     # ResponseDelay factor 1
    "000c |"                                     # DCPDataLength 12
    "02 02 0007 73776974636833 00 |"             # NameOfStation "switch3" + padding
    "69656d656e732c2053494d415449 00000000")     # Ethernet padding (stale buffer bytes)
IDENTIFY_RESPONSE = dcp(0xFEFF, 5, 1, (
    block(2, 5, h("0000 | 0202 0203 0102"))      # DeviceOptions: name, id, IP parameter
    + block(2, 1, h("0000") + b"S7-1500")        # manufacturer specific: type of station
    + block(2, 2, h("0000") + b"plc-1")          # NameOfStation
    + block(2, 3, h("0000 | 002a | 0e0b"))       # DeviceID: vendor 0x002a, device 0x0e0b
    + block(2, 4, h("0000 | 02 00"))             # DeviceRole: IO controller
    + block(1, 2, h("0001 | c0a80001 | ffffff00 | c0a800fe"))))   # IP set: ip, mask, gw


def test_round_trip_identify_request() -> None:
    hdr = DCPHeader(IDENTIFY_REQUEST)
    assert (hdr.frame_id, hdr.service_id, hdr.service_type, hdr.xid, hdr.response_delay,
            hdr.data_length) == (0xFEFE, 5, 0, 0x0300BF9A, 1, 12)
    assert dcp(0xFEFE, 5, 0, block(2, 2, b"switch3"), xid=0x0300BF9A,
               delay=1) == IDENTIFY_REQUEST[:24]
    m = one(IDENTIFY_REQUEST)
    assert m.proto == "profinet_dcp" and m.kind == "dcp_identify" and m.is_request is True
    assert m.anomalies == () and m.identity is None          # a filter, not the sender
    assert m.fields == {
        "frame_id": 0xFEFE, "frame": "dcp_identify_multicast_request", "service_id": 5,
        "service": "identify", "service_type_id": 0, "service_type": "request",
        "xid": 0x0300BF9A, "response_delay": 1, "data_length": 12,
        "blocks": [{"option": 2, "suboption": 2, "block": "device_name_of_station"}],
        "station_name": "switch3"}


def test_identify_response_reveals_the_device() -> None:
    m = one(IDENTIFY_RESPONSE)
    assert m.anomalies == () and m.is_request is False and m.kind == "dcp_identify"
    f = m.fields
    assert (f["service_type"], f["station_name"], f["type_of_station"]) == (
        "response_success", "plc-1", "S7-1500")
    assert (f["vendor_id"], f["device_id"], f["vendor"]) == (0x2A, 0x0E0B, "Siemens")
    assert (f["ip"], f["subnet_mask"], f["gateway"]) == ("192.168.0.1", "255.255.255.0",
                                                         "192.168.0.254")
    assert f["device_roles"] == ["io_controller"]
    assert f["device_options"] == ["device_name_of_station", "device_id", "ip_parameter"]
    assert [b["block"] for b in f["blocks"]] == [
        "device_options", "device_manufacturer_specific", "device_name_of_station",
        "device_id", "device_role", "ip_parameter"]
    assert f["blocks"][-1]["info"] == 1                      # BlockInfo: IP set
    assert m.identity == {"name": "plc-1", "vendor_id": 0x2A, "product_code": "0x0e0b",
                          "vendor": "Siemens", "model": "S7-1500",
                          "device_type": "io_controller"}


@pytest.mark.parametrize("blocks,kind,check", [
    (block(2, 2, h("0001") + b"pump-7"), "dcp_set_name", {"station_name": "pump-7"}),
    (block(1, 2, h("0001 0a000005 ffff0000 0a000001")), "dcp_set_ip",
     {"ip": "10.0.0.5", "gateway": "10.0.0.1"}),
    (block(1, 3, h("0000 0a000005 ffff0000 0a000001") + bytes(16)), "dcp_set_ip",
     {"dns": ["0.0.0.0"] * 4}),
    (block(5, 6, h("0004")), "dcp_factory_reset", {"reset_mode": 4}),
    (block(5, 5, h("0000")), "dcp_factory_reset", {"reset_mode": 0}),
    (block(5, 1, h("0000")) + block(2, 2, h("0001") + b"x") + block(5, 6, h("0002"))
     + block(5, 2, h("0000")), "dcp_factory_reset", {"station_name": "x"}),
    (block(5, 3, h("0000 0100")), "dcp_set", {"signal": 0x100}),     # flash the LED
])
def test_set_requests_that_matter(blocks: bytes, kind: str, check: dict) -> None:
    m = one(dcp(0xFEFD, 4, 0, blocks))
    assert m.kind == kind and m.is_request is True and m.anomalies == ()
    assert {k: m.fields[k] for k in check} == check


def test_set_response_names_what_was_set() -> None:
    resp = dcp(0xFEFD, 4, 1, block(5, 4, h("02 02 | 00")))  # reply to NameOfStation: ok
    m = one(resp)
    assert m.kind == "dcp_set_name" and m.is_request is False and m.anomalies == ()
    assert m.fields["blocks"] == [{"option": 5, "suboption": 4, "block": "control_response",
                                   "response_to": "device_name_of_station", "error_code": 0,
                                   "error": "ok"}]
    refused = one(dcp(0xFEFD, 4, 1, block(5, 4, h("01 02 | 06"))))
    assert refused.kind == "dcp_set_ip"
    assert refused.fields["blocks"][0]["error"] == "in_operation_set_not_possible"


def test_get_and_hello() -> None:
    get = one(dcp(0xFEFD, 3, 0, h("0202 0203")))           # Get: option pairs, no lengths
    assert get.kind == "dcp_get" and get.anomalies == ()
    assert [b["block"] for b in get.fields["blocks"]] == ["device_name_of_station", "device_id"]
    hello = one(dcp(0xFEFC, 6, 0, block(2, 2, h("0000") + b"io-1")
                    + block(6, 1, h("0000 0001"))))
    assert hello.kind == "dcp_hello" and hello.fields["device_initiative"] == 1
    assert hello.identity == {"name": "io-1"}


def test_rt_frames_are_counted() -> None:
    for frame_id, kind, rt_class in [(0x8001, "rt_cyclic", "rt_class_2"),
                                     (0xC001, "rt_cyclic", "rt_class_1"),
                                     (0x0100, "rt_cyclic", "rt_class_3"),
                                     (0xFC01, "rt_alarm_high", "alarm"),
                                     (0xFE01, "rt_alarm_low", "alarm"),
                                     (0xFF40, "ptcp", "ptcp"), (0xFE02, "rt_other", "other")]:
        m = one(struct.pack(">H", frame_id) + bytes(40) + h("1234 35 00"))
        assert m.proto == "profinet_rt" and m.kind == kind and m.anomalies == ()
        assert m.fields == {"frame_id": frame_id, "rt_class": rt_class}


@pytest.mark.parametrize("pdu,anomaly", [
    (h("fefe 05 00 00000001"), "profinet_dcp.truncated"),            # header cut
    (h("fe"), "profinet_dcp.truncated"),
    (dcp(0xFEFE, 9, 0, b""), "profinet_dcp.unknown_service"),          # ServiceID 9
    (dcp(0xFEFE, 5, 7, b""), "profinet_dcp.unknown_service"),          # ServiceType 7
    (IDENTIFY_REQUEST[:10] + h("00ff") + IDENTIFY_REQUEST[12:24], "profinet_dcp.invalid_length"),
    (dcp(0xFEFD, 4, 0, h("0202 0040 0001 41")), "profinet_dcp.invalid_length"),  # block 64
    (dcp(0xFEFD, 4, 0, h("02")), "profinet_dcp.invalid_length"),     # half a block header
])
def test_malformed(pdu: bytes, anomaly: str) -> None:
    m = DECODER.session(Limits()).feed(pdu, True, 0.0)[0]
    assert anomaly in m.anomalies and m.proto == "profinet_dcp", m


def test_every_truncation_decodes() -> None:
    sess = DECODER.session(Limits())
    for pdu in (IDENTIFY_REQUEST[:24], IDENTIFY_RESPONSE):
        for cut in range(len(pdu)):
            m = sess.feed(pdu[:cut], True, 0.0)[0]
            assert m.anomalies or m.proto == "profinet_rt", (pdu.hex(), cut)


def test_probe_and_registration() -> None:
    assert DECODER.probe(IDENTIFY_REQUEST) and DECODER.probe(IDENTIFY_RESPONSE)
    assert not DECODER.probe(h("8001") + bytes(40))
    assert DECODER.name == "profinet" and DECODER.ethertypes == frozenset({0x8892})
    reg = discover()
    assert reg.ether[0x8892] is DECODER and reg.udp[34964] is CM


# --- PNIO-CM (DCE/RPC connectionless) ------------------------------------------------------

DEVICE_IF = uuid.UUID("dea00001-6c97-11d1-8271-00a02442df7d")
OBJECT = uuid.UUID("dea00000-6c97-11d1-8271-00010003015a")   # instance 1, device 3, vendor 0x15a
ACTIVITY = uuid.UUID("13142f90-0000-1000-a994-d2106890ca5a")


def rpc(ptype: int, opnum: int, body: bytes, seq: int = 3, little: bool = False) -> bytes:
    hdr = DCERPCHeader(ptype=ptype, opnum=opnum, seqnum=seq, len=len(body),
                       object=OBJECT.bytes, if_id=DEVICE_IF.bytes, act_id=ACTIVITY.bytes)
    raw = bytes(hdr)
    if little:
        fields = struct.unpack(">IIIHHHHHBB", raw[56:80])
        raw = (raw[:4] + b"\x10" + raw[5:8] + OBJECT.bytes_le + DEVICE_IF.bytes_le
               + ACTIVITY.bytes_le + struct.pack("<IIIHHHHHBB", *fields))
    return raw + body


READ_HEADER = h("0009 003c 0100 |"               # IODReadReqHeader, length 60, version 1.0
                "0003 |" + "00" * 16 + "|"       # seq number 3, AR UUID
                "00000000 | 0000 | 0001 | 0000 |"  # API 0, slot 0, subslot 1, padding
                "f840 | 00008000" + "00" * 24)   # index I&M0FilterData, 32768 bytes
READ_REQUEST = rpc(0, 2, h("00001000 | 00000040 | 00001000 | 00000000 | 00000040") + READ_HEADER)
READ_RESPONSE = rpc(2, 2, h("00000000 | 00000040 | 00001000 | 00000000 | 00000040")
                    + h("8009") + READ_HEADER[2:], little=True)


def test_round_trip_rpc_read() -> None:
    hdr = DCERPCHeader(READ_REQUEST)
    assert (hdr.rpc_vers, hdr.ptype, hdr.opnum, hdr.seqnum) == (4, 0, 2, 3)
    assert uuid.UUID(bytes=hdr.if_id) == DEVICE_IF
    m = one(READ_REQUEST, CM)
    assert m.proto == "profinet_io_cm" and m.kind == "read" and m.is_request is True
    assert m.anomalies == () and m.identity is None
    f = m.fields
    assert (f["operation"], f["interface"], f["seq_num"], f["byte_order"]) == (
        "read", "pnio_device", 3, "big")
    assert (f["slot"], f["subslot"], f["index"], f["record_data_length"]) == (0, 1, 0xF840,
                                                                              32768)
    assert f["object_uuid"] == str(OBJECT) and f["activity_uuid"] == str(ACTIVITY)
    r = one(READ_RESPONSE, CM)
    assert r.kind == "read" and r.is_request is False and r.anomalies == ()
    assert r.fields["byte_order"] == "little" and r.fields["object_uuid"] == str(OBJECT)
    assert (r.fields["pnio_status"], r.fields["status"]) == ("0x00000000", "ok")
    assert r.identity == {"vendor_id": 0x15A, "product_code": "0x0003"}


def test_rpc_error_response_and_operations() -> None:
    err = one(rpc(2, 3, h("de 80 b6 00") + bytes(16)), CM)    # write refused: access denied
    assert err.kind == "write_exception" and err.fields["pnio_status"] == "0xde80b600"
    for opnum, name in enumerate(["connect", "release", "read", "write", "control",
                                  "read_implicit"]):
        assert one(rpc(0, opnum, bytes(20)), CM).kind == name


def test_connect_request_names_the_controller() -> None:
    ar = (h("0101 0040 0100 | 0006") + bytes(16) + h("0001 | 080006010203")  # type, AR, key, MAC
          + OBJECT.bytes + h("00000011 | 0064 | 8892 | 0008") + b"plc-ctrl")  # ..., name len 8
    m = one(rpc(0, 0, bytes(20) + ar), CM)
    assert m.kind == "connect" and m.fields["station_name"] == "plc-ctrl"
    assert m.identity == {"name": "plc-ctrl", "device_type": "io_controller"}


@pytest.mark.parametrize("pdu,anomaly", [
    (READ_REQUEST[:60], "profinet_io_cm.truncated"),
    (READ_REQUEST[:100], "profinet_io_cm.invalid_length"),
    (b"\x05" + READ_REQUEST[1:], "profinet_io_cm.invalid_version"),
    (rpc(0, 9, bytes(20)), "profinet_io_cm.unknown_operation"),
    (rpc(0, 2, bytes(8)), "profinet_io_cm.truncated"),
])
def test_rpc_malformed(pdu: bytes, anomaly: str) -> None:
    m = CM.session(Limits()).feed(pdu, True, 0.0)[0]
    assert anomaly in m.anomalies and m.proto == "profinet_io_cm", m


def test_rpc_probe() -> None:
    assert CM.probe(READ_REQUEST) and CM.probe(READ_RESPONSE)
    epm = READ_REQUEST[:24] + uuid.UUID("e1af8308-5d1f-11c9-91a4-08002b14a0fa").bytes \
        + READ_REQUEST[40:]
    assert not CM.probe(epm) and not CM.probe(READ_REQUEST[:79])
    assert not CM.probe(b"\x04" + bytes(100))


# --- fuzz -------------------------------------------------------------------------------------

def _length(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 16:                                     # a length field gone wild
        pos = rng.randrange(len(buf) - 2)
        buf[pos:pos + 2] = rng.choice((b"\xff\xff", b"\x00\x00", b"\x00\x01", b"\x01\x00"))


MUTATE = fuzz.Mutator((fuzz.overwrite, fuzz.truncate, fuzz.insert(6), _length))


@pytest.mark.parametrize("dec,seeds", [
    (DECODER, [IDENTIFY_REQUEST, IDENTIFY_RESPONSE, dcp(0xFEFD, 4, 1, block(5, 4, h("020200"))),
               dcp(0xFEFD, 3, 0, h("0202 0203")), dcp(0xFEFC, 6, 0, block(2, 2, h("0000") + b"a")),
               dcp(0xFEFD, 4, 0, block(1, 3, bytes(30)) + block(5, 6, h("0004")))]),
    (CM, [READ_REQUEST, READ_RESPONSE]),
], ids=["dcp", "pnio_cm"])
def test_fuzz_no_exception_escapes(dec: Decoder, seeds: list[bytes]) -> None:
    fuzz.run(dec, seeds, MUTATE, seed=0x8892, session=lambda: dec.session(Limits()),
             from_client=True)


# --- real captures ----------------------------------------------------------------------------

def _int(v: str) -> int:
    return int(v, 0)


@needs_tshark
@needs_fixtures
@pytest.mark.parametrize("path", PCAPS, ids=[p.name for p in PCAPS])
def test_pcap_agrees_with_tshark(path: Path) -> None:
    ours: dict = defaultdict(list)
    theirs: dict = defaultdict(list)
    if path.suffix == ".pcap":
        for r in agent_records(path, "profinet_dcp"):
            d = r["profinet_dcp"]
            ours[r["src_ip"]].append((d["frame_id"], d.get("service_id"),
                                      d.get("service_type_id"), d.get("xid")))
        for row in tshark_rows(path, "pn_rt", ["eth.src", "pn_rt.frame_id", "pn_dcp.service_id",
                                               "pn_dcp.service_type", "pn_dcp.xid"]):
            src, fid, sid, stype, xid = (c[0] if c else None for c in row[4:9])
            theirs[src].append((_int(fid), _int(sid) if sid else None,
                                _int(stype) if stype else None, _int(xid) if xid else None))
    else:
        for r in agent_records(path, "profinet_io_cm"):
            c = r["profinet_io_cm"]
            ours[(r["src_ip"], r["src_port"])].append((c["packet_type_code"], c["opnum"],
                                                      c["seq_num"]))
        for row in tshark_rows(path, "dcerpc", ["dcerpc.pkt_type", "dcerpc.opnum",
                                                "dcerpc.dg_seqnum"]):
            src, port = row[0][0], _int((row[2] or row[3])[0])
            theirs[(src, port)].append(tuple(_int(c[0]) for c in row[4:7]))
    matched, total, diffs = agreement(ours, theirs)
    print(f"{path.name}: {matched}/{total} = {matched / max(total, 1):.2%} agreement with tshark")
    assert total and matched / total >= 0.99, diffs[:5]


@needs_fixtures
@pytest.mark.parametrize("path", [p for p in PCAPS if p.suffix == ".pcapng"],
                         ids=[p.name for p in PCAPS if p.suffix == ".pcapng"])
def test_pcap_matches_icsnpp_log(path: Path) -> None:
    """ICSNPP profinet_io_cm.log: one line per DCE/RPC packet, in capture order."""
    rows = [line.split("\t") for line in
            (BASELINES / "profinet" / path.stem / "profinet_io_cm.log").read_text().splitlines()
            if line and not line.startswith("#")]
    theirs = [(r[4], int(r[5]), r[10].lower(), r[31].lower().replace(" ", "_"), int(r[30]),
               int(r[27]), r[20].split()[0].lower()) for r in rows]
    recs = sorted(agent_records(path, "profinet_io_cm"), key=lambda r: r["ts"])
    ours = [(r["src_ip"], r["src_port"], c["packet_type"], c["operation"], c["seq_num"],
             c["server_boot"], c["byte_order"]) for r in recs for c in [r["profinet_io_cm"]]]
    assert ours == theirs
    print(f"{path.name}: {len(theirs)} ICSNPP lines equal")


@needs_fixtures
def test_pcap_identity_from_pnio_object_uuid() -> None:
    path = next(p for p in PCAPS if p.stem == "profinet_io_cm_read")
    idents: set = set()

    def grab(ev) -> None:
        if ev.message.identity:
            idents.add((ev.flow.server_ip if not ev.from_client else ev.flow.client_ip,
                        tuple(sorted(ev.message.identity.items()))))
    Pipeline(load(), on_event=grab).run(FileSource([str(path)]))
    assert ("192.168.0.2", (("product_code", "0x00fa"), ("vendor", "Siemens"),
                            ("vendor_id", 0x2A))) in idents
