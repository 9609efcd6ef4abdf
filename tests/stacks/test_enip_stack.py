"""cpppo's EtherNet/IP Logix simulator, pycomm3 and cpppo clients, the agent on the mirror port.

The server (``cpppo.server.enip``) has three tags (REAL, INT[10], DINT) and an Identity object
configured the way cpppo documents it (an ``[Identity]`` section in its config file). Two
independent clients talk to it:

- pycomm3 asks who the device is: ListIdentity over TCP, then a Get_Attributes_All of the
  Identity object (class 1, instance 1) in a SendRRData;
- cpppo's client writes the three tags and reads them back (Logix Write Tag / Read Tag,
  wrapped in an Unconnected Send through backplane port 1, slot 0).

Checked: each encapsulation command and CIP service against what the clients did, tag symbols,
types, element counts and written values, and the inventory identity against what the server
announced (and what pycomm3 made of it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.capture.netns import Plant

from .conftest import Capture, Watch, last_json, require, run_py, start_server

ENIP_PORT = 44818

# The Identity object the server announces (CIP Vol 1 5A-2); the revision is major 7, minor 12
# (attribute 4 is two USINTs; cpppo stores it as an INT, major in the low octet).
VENDOR_ID = 1
DEVICE_TYPE = 14
PRODUCT_CODE = 93
REVISION = (7, 12)
SERIAL = 0x0C0FFEE5
PRODUCT_NAME = "1756-L85E/B ETA Line 3"
IDENTITY_CFG = f"""\
[Identity]
Vendor Number = {VENDOR_ID}
Device Type = {DEVICE_TYPE}
Product Code Number = {PRODUCT_CODE}
Product Revision = {REVISION[0] | REVISION[1] << 8}
Serial Number = {SERIAL}
Product Name = {PRODUCT_NAME}
"""

SERVER = r"""
import sys
from cpppo.server.enip.main import main

host, port, config = sys.argv[1], sys.argv[2], sys.argv[3]
sys.exit(main(["--address", f"{host}:{port}", "--config", config,
               "Temp=REAL", "Counter=INT[10]", "Total=DINT"]))
"""

CLIENT = r"""
import json, sys
from pycomm3 import CIPDriver
from cpppo.server.enip import client

host, port = sys.argv[1], int(sys.argv[2])
out = {}
ident = CIPDriver.list_identity(host)
out["identity"] = {k: ident[k] for k in ("vendor", "product_code", "serial", "product_name",
                                         "ip_address")}
out["identity"]["revision"] = [ident["revision"]["major"], ident["revision"]["minor"]]
with CIPDriver(host) as drv:
    rsp = drv.generic_message(service=0x01, class_code=0x01, instance=1, connected=False,
                              name="identity")
    out["get_attributes_all"] = [rsp.value.hex(), rsp.error]
with client.connector(host=host, port=port, timeout=3) as conn:
    ops = client.parse_operations(["Temp=(REAL)21.5", "Counter[1-3]=(INT)7,8,9",
                                   "Total=(DINT)123456", "Temp", "Counter[0-3]", "Total"])
    out["tags"] = [[dsc, sts, val] for _, dsc, _, _, sts, val
                   in conn.pipeline(operations=ops, depth=1)]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exchange(plant: Plant, workdir: Path) -> dict[str, Any]:
    require("cpppo", "pycomm3")
    cfg = workdir / "cpppo.cfg"
    cfg.write_text(IDENTITY_CFG)
    start_server(plant, SERVER, plant.plc_ip, ENIP_PORT, cfg, log=workdir / "server.log",
                 port=ENIP_PORT)
    with Watch(plant, workdir) as watch:
        done = last_json(run_py(plant, plant.hmi, CLIENT, plant.plc_ip, ENIP_PORT))
    assert watch.result is not None
    return {"cap": watch.result, "client": done}


def test_stack_did_what_we_think(exchange: dict[str, Any]) -> None:
    done = exchange["client"]
    assert done["identity"] == {"vendor": "Rockwell Automation/Allen-Bradley",
                                "product_code": PRODUCT_CODE, "serial": f"{SERIAL:08x}",
                                "product_name": PRODUCT_NAME, "ip_address": "0.0.0.0",
                                "revision": list(REVISION)}
    value, error = done["get_attributes_all"]
    assert error is None and PRODUCT_NAME.encode().hex() in value
    assert done["tags"] == [
        ["Single Write Tag  Temp", 0, True], ["Single Write Tag  Counter[1-3]", 0, True],
        ["Single Write Tag  Total", 0, True], ["Single Read  Tag  Temp", 0, [21.5]],
        ["Single Read  Tag  Counter[0-3]", 0, [0, 7, 8, 9]],
        ["Single Read  Tag  Total", 0, [123456]]]


def _flows(cap: Capture) -> list[list[dict[str, Any]]]:
    """ENIP and CIP records by TCP connection, in the order the connections opened."""
    by: dict[int, list[dict[str, Any]]] = {}
    for r in cap.records:
        if r["proto"] in ("enip", "cip"):
            by.setdefault(r["flow_id"], []).append(r)
    return sorted(by.values(), key=lambda rs: rs[0]["ts"])


def _identity_fields(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in ("vendor_id", "device_type_code", "product_code", "revision",
                                  "serial_number", "product_name")}


ANNOUNCED = {"vendor_id": VENDOR_ID, "device_type_code": DEVICE_TYPE,
             "product_code": PRODUCT_CODE, "revision": "{}.{}".format(*REVISION),
             "serial_number": f"0x{SERIAL:08x}", "product_name": PRODUCT_NAME}


def test_list_identity_and_identity_object(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    recs = cap.of("enip") + cap.of("cip")
    assert all(not r["anomalies"] for r in recs), [r for r in recs if r["anomalies"]]
    listing, gaa, _ = _flows(cap)
    assert [(r["src_ip"], r["proto"], r[r["proto"]].get("command") or r["cip"]["service"])
            for r in listing] == [
        (plant.hmi_ip, "enip", "register_session"), (plant.plc_ip, "enip", "register_session"),
        (plant.hmi_ip, "enip", "list_identity"), (plant.plc_ip, "enip", "list_identity"),
        (plant.hmi_ip, "enip", "unregister_session")]
    reply = listing[3]["enip"]
    assert _identity_fields(reply) == ANNOUNCED
    assert (reply["socket_address"], reply["socket_port"]) == ("0.0.0.0", ENIP_PORT)
    handle = listing[1]["enip"]["session_handle"]
    assert all(r["enip"]["session_handle"] == handle for r in listing[2:])

    cip = [r for r in gaa if r["proto"] == "cip"]
    assert [(r["src_ip"], r["cip"]["service"], r["cip"]["class_name"], r["cip"]["instance_id"])
            for r in cip] == [(plant.hmi_ip, "get_attributes_all", "identity", 1),
                              (plant.plc_ip, "get_attributes_all", "identity", 1)]
    assert cip[1]["cip"]["status"] == "success"
    assert _identity_fields(cip[1]["cip"]) == ANNOUNCED


def test_tag_reads_and_writes(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    *_, tags = _flows(cap)
    cip = [r for r in tags if r["proto"] == "cip"]
    req = [r["cip"] for r in cip if r["is_request"]]
    rsp = [r["cip"] for r in cip if r["is_request"] is False]
    assert all(r["src_ip"] == plant.hmi_ip for r in cip if r["is_request"])
    assert [(m["service"], m["symbol"], m.get("data_type"), m["elements"], m.get("data"))
            for m in req] == [
        ("write_tag", "Temp", "real", 1, "0000ac41"),                  # 21.5
        ("write_tag", "Counter[1]", "int", 3, "070008000900"),        # 7, 8, 9
        ("write_tag", "Total", "dint", 1, "40e20100"),                # 123456
        ("read_tag", "Temp", None, 1, None),
        ("read_tag", "Counter[0]", None, 4, None),
        ("read_tag", "Total", None, 1, None)]
    assert all(m["unconnected_send"] and m["route_path"] == "port 1 link 0" for m in req)
    # Replies take the symbol of their request; reads say what type and how much came back.
    assert [(m["service"], m["symbol"], m["status"], m.get("data_type"), m.get("data_length"))
            for m in rsp] == [
        ("write_tag", "Temp", "success", None, None),
        ("write_tag", "Counter[1]", "success", None, None),
        ("write_tag", "Total", "success", None, None),
        ("read_tag", "Temp", "success", "real", 4),
        ("read_tag", "Counter[0]", "success", "int", 8),
        ("read_tag", "Total", "success", "dint", 4)]
    enip = [r["enip"]["command"] for r in tags if r["proto"] == "enip"]
    assert enip == ["register_session", "register_session"] + ["send_rr_data"] * 12


def test_inventory_identity_is_what_the_server_announced(exchange: dict[str, Any],
                                                         plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    plc = cap.asset(plant.plc_ip)
    assert plc["identity"] == {
        "vendor_id": VENDOR_ID, "vendor": exchange["client"]["identity"]["vendor"],
        "device_type": "programmable_logic_controller", "product_code": PRODUCT_CODE,
        "firmware": "{}.{}".format(*REVISION), "serial": f"0x{SERIAL:08x}",
        "product": PRODUCT_NAME}
    assert set(plc["roles"]) == {"enip:server", "cip:server"}
    assert plc["services"] == [f"tcp/{ENIP_PORT}"]
    hmi = cap.asset(plant.hmi_ip)
    assert set(hmi["roles"]) == {"enip:client", "cip:client"} and not hmi["identity"]


def test_live_agent_counts_every_message(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    # A flow is named after what it carries (ENIP only, or CIP in ENIP) and counts both.
    assert cap.messages("enip") + cap.messages("cip") == len(cap.of("enip")) + len(cap.of("cip"))
    flows = cap.live_flows("enip") + cap.live_flows("cip")
    assert len({f["flow_id"] for f in flows}) == 3
    assert all((f["src_ip"], f["dest_ip"], f["dest_port"]) ==
               (plant.hmi_ip, plant.plc_ip, ENIP_PORT) for f in flows)
