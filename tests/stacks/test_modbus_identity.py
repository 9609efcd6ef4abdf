"""pymodbus server with a device identity, pymodbus clients, the agent on the mirror port.

The HMI reads the server's device identification (MEI 0x2B/0x0E, basic and regular), polls
and writes holding registers while the agent learns the site baseline live; then an
engineering host on the same switch writes a register and a coil. Checked: every record
against what the clients did, the inventory identity against what the server announced, and
findings for the engineering host's writes (and none for the HMI's learned ones).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.capture.netns import MODBUS_PORT, Plant

from .conftest import Capture, Watch, add_host, last_json, require, run_py, start_server

# What the server announces (Modbus App Spec 6.21 objects 0x00-0x06).
IDENTITY = {
    "VendorName": "Edge Test Automation",
    "ProductCode": "ETA-PLC-502",
    "MajorMinorRevision": "4.2.17",
    "VendorUrl": "https://example.invalid/eta",
    "ProductName": "ETA Line Controller",
    "ModelName": "LC-9000",
    "UserApplicationName": "bottling line 3",
}

SERVER = r"""
import sys
from pymodbus.pdu.device import ModbusDeviceIdentification
from pymodbus.server import StartTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

host, port, ident = sys.argv[1], int(sys.argv[2]), eval(sys.argv[3])
device = SimDevice(id=1, simdata=(
    [SimData(0, count=32, values=False, datatype=DataType.BITS)],             # coils
    [SimData(0, count=16, values=False, datatype=DataType.BITS)],             # discrete inputs
    [SimData(0, values=list(range(100, 164)), datatype=DataType.REGISTERS)],  # holding
    [SimData(0, values=list(range(16)), datatype=DataType.REGISTERS)],        # input
))
StartTcpServer(device, address=(host, port),
               identity=ModbusDeviceIdentification(info_name=ident))
"""

# The HMI: device identification (basic, then regular), a poll of holding registers and a
# setpoint write, paced so the learning period sees them in more than one window.
HMI = r"""
import json, sys, time
from pymodbus.client import ModbusTcpClient

host, port, polls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = ModbusTcpClient(host, port=port, timeout=3, retries=0)
assert c.connect(), "cannot connect"
out = {"ident": {}, "reads": 0, "writes": []}
for code in (1, 2):
    rsp = c.read_device_information(read_code=code, object_id=0, device_id=1)
    assert not rsp.isError(), rsp
    out["ident"][code] = {str(k): v.decode() for k, v in rsp.information.items()}
for i in range(polls):
    rsp = c.read_holding_registers(0, count=8, device_id=1)
    assert not rsp.isError() and rsp.registers[:2] == [100, 101], rsp
    out["reads"] += 1
    if i % 3 == 2:
        assert not c.write_register(20, 500 + i, device_id=1).isError()
        out["writes"].append([20, 500 + i])
    time.sleep(0.12)
c.close()
print(json.dumps(out))
"""

# The engineering host: one register write and one coil write the baseline never saw.
ENGINEERING = r"""
import json, sys
from pymodbus.client import ModbusTcpClient

host, port = sys.argv[1], int(sys.argv[2])
c = ModbusTcpClient(host, port=port, timeout=3, retries=0)
assert c.connect(), "cannot connect"
assert not c.write_register(40, 4242, device_id=1).isError()
assert not c.write_coil(7, True, device_id=1).isError()
c.close()
print(json.dumps({"writes": [["write_single_register", 40, 4242],
                             ["write_single_coil", 7, True]]}))
"""

LEARN_S = 2.0
POLLS = 24          # 24 x ~0.13 s: the HMI's traffic spans the whole learning period


@pytest.fixture(scope="module")
def exchange(plant: Plant, workdir: Path) -> dict[str, Any]:
    require("pymodbus")
    start_server(plant, SERVER, plant.plc_ip, MODBUS_PORT, repr(IDENTITY),
                 log=workdir / "server.log", port=MODBUS_PORT)
    eng_ns, eng_ip = add_host(plant, "eng", 3)
    with Watch(plant, workdir, config=f"[learn]\nperiod_s = {LEARN_S}\n") as watch:
        hmi = last_json(run_py(plant, plant.hmi, HMI, plant.plc_ip, MODBUS_PORT, POLLS))
        watch.wait_for(lambda: "learned the site baseline" in watch.stderr(), 8,
                       "learn the site baseline")
        eng = last_json(run_py(plant, eng_ns, ENGINEERING, plant.plc_ip, MODBUS_PORT))
    assert watch.result is not None
    return {"cap": watch.result, "hmi": hmi, "eng": eng, "eng_ip": eng_ip}


def test_stack_did_what_we_think(exchange: dict[str, Any]) -> None:
    hmi = exchange["hmi"]
    # pymodbus answers the basic category with objects 0-2 and the regular with 0-6 (its
    # own numbering: object id -> value).
    assert hmi["ident"]["1"] == {"0": IDENTITY["VendorName"], "1": IDENTITY["ProductCode"],
                                 "2": IDENTITY["MajorMinorRevision"]}
    assert hmi["ident"]["2"] == {str(i): v for i, v in enumerate(IDENTITY.values())}
    assert hmi["reads"] == POLLS and len(hmi["writes"]) == POLLS // 3


def test_records_match_the_clients(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    hmi, eng_ip = exchange["hmi"], exchange["eng_ip"]
    recs = cap.of("modbus")
    assert all(not r["anomalies"] for r in recs), [r for r in recs if r["anomalies"]]
    from_hmi = [r for r in recs if plant.hmi_ip in (r["src_ip"], r["dest_ip"])]
    from_eng = [r for r in recs if eng_ip in (r["src_ip"], r["dest_ip"])]
    assert len(from_hmi) + len(from_eng) == len(recs)

    req = [r for r in from_hmi if r["is_request"]]
    rsp = [r for r in from_hmi if r["is_request"] is False]
    assert all((r["src_ip"], r["dest_ip"], r["dest_port"]) == (plant.hmi_ip, plant.plc_ip,
                                                                MODBUS_PORT) for r in req)
    n_req = 2 + POLLS + len(hmi["writes"])
    assert len(req) == len(rsp) == n_req
    funcs = [r["modbus"]["func"] for r in req]
    assert funcs[:2] == ["encap_interface_transport"] * 2
    assert funcs.count("read_holding_registers") == POLLS
    assert funcs.count("write_single_register") == len(hmi["writes"])

    # Device identification: request codes, then the objects exactly as the server sent them.
    mei_req = [r["modbus"] for r in req[:2]]
    assert [(m["mei"], m["read_dev_id_code"], m["object_id"]) for m in mei_req] == [
        ("read_device_identification", 1, 0), ("read_device_identification", 2, 0)]
    names = ["vendor_name", "product_code", "major_minor_revision", "vendor_url",
             "product_name", "model_name", "user_application_name"]
    mei_rsp = [r["modbus"] for r in rsp[:2]]
    assert mei_rsp[0]["device_id"] == dict(zip(names[:3], list(IDENTITY.values())[:3]))
    assert mei_rsp[1]["device_id"] == dict(zip(names, IDENTITY.values()))
    assert [m["more_follows"] for m in mei_rsp] == [False, False]

    reads = [r["modbus"] for r in rsp if r["modbus"]["func"] == "read_holding_registers"]
    assert all(m["address"] == 0 and m["quantity"] == 8 and m["values"] == list(range(100, 108))
               for m in reads), reads[:2]
    writes = [[r["modbus"]["address"], r["modbus"]["value"]] for r in req
              if r["modbus"]["func"] == "write_single_register"]
    assert writes == hmi["writes"]

    eng_req = [r["modbus"] for r in from_eng if r["is_request"]]
    assert [(m["func"], m["address"], m["value"]) for m in eng_req] == [
        ("write_single_register", 40, 4242), ("write_single_coil", 7, 0xFF00)]   # ON, on the wire
    assert len(from_eng) == 4


def test_live_summaries_count_every_message(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    assert cap.messages("modbus") == len(cap.of("modbus"))
    flows = cap.live_flows("modbus")
    assert {(f["src_ip"], f["dest_ip"], f["dest_port"]) for f in flows} == {
        (plant.hmi_ip, plant.plc_ip, MODBUS_PORT), (exchange["eng_ip"], plant.plc_ip, MODBUS_PORT)}


def test_inventory_identity_is_what_the_server_announced(exchange: dict[str, Any],
                                                         plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    plc = cap.asset(plant.plc_ip)
    assert plc["identity"] == {
        "vendor": IDENTITY["VendorName"], "product_code": IDENTITY["ProductCode"],
        "firmware": IDENTITY["MajorMinorRevision"], "product": IDENTITY["ProductName"],
        "model": IDENTITY["ModelName"], "name": IDENTITY["UserApplicationName"]}
    assert "modbus:server" in plc["roles"] and f"tcp/{MODBUS_PORT}" in plc["services"]
    assert all(v.startswith("modbus encap_interface_transport @")
               for v in plc["learned_from"].values()), plc["learned_from"]
    assert cap.asset(plant.hmi_ip)["roles"] == ["modbus:client"]
    assert cap.asset(exchange["eng_ip"])["roles"] == ["modbus:client"]
    assert not cap.asset(plant.hmi_ip)["identity"]


def test_writes_from_the_engineering_host_are_findings(exchange: dict[str, Any],
                                                       plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    eng_ip = exchange["eng_ip"]
    learned = [s["detection"]["baseline"] for s in cap.summaries if s["detection"]["baseline"]]
    assert learned and learned[-1]["learned_from"] is not None
    rules = {(f["rule"], f["src_ip"], f["detail"]) for f in cap.findings
             if f["rule"] != "model_anomaly"}
    assert ("first_write", eng_ip, "modbus write_single_register") in rules
    assert ("first_write", eng_ip, "modbus write_single_coil") in rules
    assert ("new_talker", eng_ip, f"modbus client {eng_ip}") in rules
    assert ("new_device", eng_ip, f"device {eng_ip}") in rules
    # The HMI's writes were learned: nothing from it is a finding.
    assert not [f for f in cap.findings if f["src_ip"] == plant.hmi_ip
                and f["rule"] != "model_anomaly"], cap.findings
    first = [f for f in cap.findings if f["rule"] == "first_write"]
    assert all(f["severity"] == "high" and f["dest_ip"] == plant.plc_ip for f in first)
    assert {m["modbus"]["address"] for f in first for m in f["messages"]} == {40, 7}
