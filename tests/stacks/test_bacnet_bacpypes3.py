"""bacpypes3 device and client (BACnet/IP on UDP 47808), the agent on the mirror port.

The controller (device 1000) announces its vendor, model, firmware, location and description
in its device object and has a writable analog value. The workstation (device 9999, its own
bacpypes3 application) broadcasts a Who-Is for 1000, reads the device's identity properties
one by one, writes the analog value's present value and reads it back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.capture.netns import Plant

from .conftest import Capture, Watch, last_json, require, run_py, start_server

BACNET_PORT = 47808
DEVICE = 1000
VENDOR_ID = 999
DEVICE_PROPS = {
    "object-name": "AHU-3 Controller",
    "vendor-name": "Edge Test Controls",
    "vendor-identifier": VENDOR_ID,
    "model-name": "ETC-BAC-42",
    "firmware-revision": "7.3.1",
    "location": "Plant room 2",
    "description": "air handling unit 3",
}
SETPOINT = 23.5

SERVER = r"""
import asyncio, sys
from bacpypes3.app import Application
from bacpypes3.argparse import SimpleArgumentParser
from bacpypes3.local.analog import AnalogValueObject

host, port, instance, props = sys.argv[1], int(sys.argv[2]), sys.argv[3], eval(sys.argv[4])

async def main():
    args = SimpleArgumentParser().parse_args([
        "--address", f"{host}/24:{port}", "--instance", instance,
        "--name", props["object-name"], "--vendoridentifier", str(props["vendor-identifier"])])
    app = Application.from_args(args)
    dev = app.device_object
    dev.vendorName = props["vendor-name"]
    dev.modelName = props["model-name"]
    dev.firmwareRevision = props["firmware-revision"]
    dev.location = props["location"]
    dev.description = props["description"]
    app.add_object(AnalogValueObject(objectIdentifier=("analog-value", 1),
                                     objectName="supply-temp-sp", presentValue=21.0,
                                     units="degreesCelsius"))
    await asyncio.Future()

asyncio.run(main())
"""

CLIENT = r"""
import asyncio, json, sys
from bacpypes3.app import Application
from bacpypes3.argparse import SimpleArgumentParser
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier, Real

me, server, port, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
props, value = sys.argv[5].split(","), float(sys.argv[6])

async def main():
    args = SimpleArgumentParser().parse_args([
        "--address", f"{me}/24:{port}", "--instance", "9999", "--name", "HMI",
        "--vendoridentifier", "999"])
    app = Application.from_args(args)
    out = {}
    i_ams = await app.who_is(device, device)
    out["i_am"] = [[str(i.iAmDeviceIdentifier), i.vendorID, str(i.pduSource)] for i in i_ams]
    addr = Address(server)
    dev = ObjectIdentifier(f"device,{device}")
    for prop in props:
        v = await app.read_property(addr, dev, prop)
        out[prop] = v if isinstance(v, int) else str(v)
    av = ObjectIdentifier("analog-value,1")
    out["write"] = await app.write_property(addr, av, "present-value", Real(value))
    out["present-value"] = await app.read_property(addr, av, "present-value")
    app.close()
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def exchange(plant: Plant, workdir: Path) -> dict[str, Any]:
    require("bacpypes3")
    start_server(plant, SERVER, plant.plc_ip, BACNET_PORT, DEVICE, repr(DEVICE_PROPS),
                 log=workdir / "server.log", port=BACNET_PORT, udp=True)
    with Watch(plant, workdir) as watch:
        done = last_json(run_py(plant, plant.hmi, CLIENT, plant.hmi_ip, plant.plc_ip,
                                BACNET_PORT, DEVICE, ",".join(DEVICE_PROPS), SETPOINT))
    assert watch.result is not None
    return {"cap": watch.result, "client": done}


def test_stack_did_what_we_think(exchange: dict[str, Any], plant: Plant) -> None:
    done = exchange["client"]
    assert done["i_am"] == [[f"device,{DEVICE}", VENDOR_ID, plant.plc_ip]]
    assert {k: done[k] for k in DEVICE_PROPS} == DEVICE_PROPS
    assert done["write"] is None and done["present-value"] == SETPOINT


def test_records_match_the_exchange(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    recs = cap.of("bacnet")
    assert all(not r["anomalies"] for r in recs), [r for r in recs if r["anomalies"]]
    hmi, plc = plant.hmi_ip, plant.plc_ip
    assert all(r["dest_port"] == r["src_port"] == BACNET_PORT for r in recs)
    b = [r["bacnet"] for r in recs]

    who_is, i_am = b[0], b[1]
    assert (recs[0]["src_ip"], recs[0]["dest_ip"]) == (hmi, plant.hmi_ip.rsplit(".", 1)[0] + ".255")
    assert (who_is["bvlc_function"], who_is["pdu_service"], who_is["range_low"],
            who_is["range_high"]) == ("original_broadcast_npdu", "who_is", DEVICE, DEVICE)
    assert who_is["dnet"] == 0xFFFF                     # a global broadcast
    assert recs[1]["src_ip"] == plc
    assert (i_am["pdu_service"], i_am["object_type"], i_am["instance_number"],
            i_am["vendor_id"]) == ("i_am", "device", DEVICE, VENDOR_ID)

    rest = recs[2:]
    assert len(rest) == 2 * (len(DEVICE_PROPS) + 2)
    req = [r["bacnet"] for r in rest if r["is_request"]]
    rsp = [r["bacnet"] for r in rest if r["is_request"] is False]
    assert all(r["src_ip"] == (hmi if r["is_request"] else plc) for r in rest)
    assert [m["invoke_id"] for m in req] == [m["invoke_id"] for m in rsp] == list(range(len(req)))

    reads = [(m["object_type"], m["instance_number"], m["property"], m["value"])
             for m in rsp[:len(DEVICE_PROPS)]]
    assert reads == [("device", DEVICE, p.replace("-", "_"), v) for p, v in DEVICE_PROPS.items()]
    assert all(m["pdu_type"] == "complex_ack" for m in rsp[:len(DEVICE_PROPS)])

    write, write_ack = req[-2], rsp[-2]
    assert (write["pdu_type"], write["pdu_service"], write["object_type"],
            write["instance_number"], write["property"], write["value"]) == (
        "confirmed_request", "write_property", "analog_value", 1, "present_value", SETPOINT)
    assert (write_ack["pdu_type"], write_ack["pdu_service"], write_ack["object_type"],
            write_ack["property"]) == ("simple_ack", "write_property", "analog_value",
                                       "present_value")
    assert (rsp[-1]["property"], rsp[-1]["value"]) == ("present_value", SETPOINT)


def test_inventory_identity_is_what_the_device_announced(exchange: dict[str, Any],
                                                         plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    plc = cap.asset(plant.plc_ip)
    assert plc["identity"] == {
        "vendor_id": VENDOR_ID, "vendor": DEVICE_PROPS["vendor-name"],
        "model": DEVICE_PROPS["model-name"], "firmware": DEVICE_PROPS["firmware-revision"],
        "name": DEVICE_PROPS["object-name"], "location": DEVICE_PROPS["location"],
        "description": DEVICE_PROPS["description"]}
    assert plc["learned_from"]["vendor_id"].startswith("bacnet i_am @")
    assert plc["learned_from"]["model"].startswith("bacnet read_property @")
    # The workstation's own device object was never read: it has no identity.
    assert not cap.asset(plant.hmi_ip)["identity"]


def test_live_agent_counts_every_message(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    assert cap.messages("bacnet") == len(cap.of("bacnet"))
    flows = cap.live_flows("bacnet")
    # The broadcast Who-Is, and the unicast conversation between the two devices.
    assert {frozenset((f["src_ip"], f["dest_ip"])) for f in flows} == {
        frozenset((plant.hmi_ip, plant.hmi_ip.rsplit(".", 1)[0] + ".255")),
        frozenset((plant.hmi_ip, plant.plc_ip))}


def test_inventory_roles_follow_who_asked(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    assert cap.asset(plant.plc_ip)["roles"] == ["bacnet:server"]
    assert cap.asset(plant.hmi_ip)["roles"] == ["bacnet:client"]
