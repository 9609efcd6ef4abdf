"""python-snap7 server and client (ISO-on-TCP, S7comm), the agent on the mirror port.

The server (python-snap7's pure-Python ``snap7.server.Server``) has DB1, DB2 and the flag area
registered. The client connects (COTP CR with rack 0 slot 2, setup communication), reads and
writes DBs and flags, reads the module and component identification (SZL W#16#0011 and
W#16#001C), stops the CPU, and hot- and cold-starts it.

python-snap7 3.3's built-in SZL answers do not follow the Siemens layout (W#16#001C has
LENTHDR = N_DR = 0 and no record indexes; W#16#0011 uses 26-octet records, the standard ones
are 28), and no decoder can take an identity from them. The server here answers those two
lists the way an S7-300 does (System Software for S7-300/400, "System Status Lists"), through
the stack's own SZL path, so its announced identity can be held against the inventory; the
stack's client parses the same answers, which shows they are what the stack expects.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.capture.netns import Plant

from .conftest import Capture, Watch, last_json, require, run_py, start_server

S7_PORT = 102

# What the CPU announces: order number, hardware and firmware version (W#16#0011), names,
# serial and module type (W#16#001C).
ORDER = "6ES7 315-2EH14-0AB0"
HARDWARE = 6
FIRMWARE = (3, 2, 17)
AS_NAME = "BOTTLING-LINE-3"
MODULE_NAME = "CPU 315-2 PN/DP"
PLANT = "HALL B"
COPYRIGHT = "Original Siemens Equipment"
SERIAL = "S C-X4U123456789"
MODULE_TYPE = "CPU 315-2 PN/DP"

SERVER = r"""
import struct, sys, time
import snap7
from snap7.type import SrvArea

host, port = sys.argv[1], int(sys.argv[2])
order, hw, fw, names = sys.argv[3], int(sys.argv[4]), eval(sys.argv[5]), eval(sys.argv[6])

def module_id():
    # W#16#0011: LENTHDR 28, N_DR 3; index, MLFB[20], BGTyp, Ausbg, Ausbe
    mlfb = order.encode().ljust(20)
    recs = [struct.pack(">H20sHHH", 1, mlfb, 0x00C0, hw, 0),
            struct.pack(">H20sHHH", 6, mlfb, 0x00C0, hw, 0),
            struct.pack(">H20sHBBBB", 7, b" " * 20, 0x00C0, ord("V"), fw[0], fw[1], fw[2])]
    return struct.pack(">HH", 28, len(recs)) + b"".join(recs)

def component_id():
    # W#16#001C: LENTHDR 34, N_DR 6; index + 32 octets of text, in the order of a real CPU
    recs = [struct.pack(">H32s", i, text.encode()) for i, text in names]
    return struct.pack(">HH", 34, len(recs)) + b"".join(recs)

class CPU(snap7.server.Server):
    def _get_szl_data(self, szl_id, szl_index):
        if szl_id == 0x0011:
            return module_id()
        if szl_id == 0x001C:
            return component_id()
        return super()._get_szl_data(szl_id, szl_index)

srv = CPU(log=False)
db1 = bytearray(range(64))
db2 = bytearray(32)
flags = bytearray(16)
srv.register_area(SrvArea.DB, 1, db1)
srv.register_area(SrvArea.DB, 2, db2)
srv.register_area(SrvArea.MK, 0, flags)
srv.start_to(host, port)
while True:
    time.sleep(1)
"""

CLIENT = r"""
import json, sys
import snap7
from snap7.type import Area

host, port = sys.argv[1], int(sys.argv[2])
c = snap7.client.Client()
c.connect(host, 0, 2, port)
out = {"pdu_length": c.get_pdu_length()}
out["db1"] = c.db_read(1, 4, 8).hex()
c.db_write(2, 10, bytearray(b"\x12\x34\x56\x78"))
out["db2"] = c.db_read(2, 10, 4).hex()
c.write_area(Area.MK, 0, 5, bytearray(b"\xaa"))
out["mb"] = c.read_area(Area.MK, 0, 4, 2).hex()
oc = c.get_order_code()
out["order"] = [oc.OrderCode.decode(), oc.V1, oc.V2, oc.V3]
ci = c.get_cpu_info()
out["cpu"] = {k: getattr(ci, k).decode() for k in
              ("ASName", "ModuleName", "Copyright", "SerialNumber", "ModuleTypeName")}
c.plc_stop()
c.plc_hot_start()
c.plc_cold_start()
c.disconnect()
print(json.dumps(out))
"""

COMPONENTS = [(1, AS_NAME), (2, MODULE_NAME), (3, PLANT), (4, COPYRIGHT), (5, SERIAL),
              (7, MODULE_TYPE)]


@pytest.fixture(scope="module")
def exchange(plant: Plant, workdir: Path) -> dict[str, Any]:
    require("snap7")
    start_server(plant, SERVER, plant.plc_ip, S7_PORT, ORDER, HARDWARE, repr(FIRMWARE),
                 repr(COMPONENTS), log=workdir / "server.log", port=S7_PORT)
    with Watch(plant, workdir) as watch:
        done = last_json(run_py(plant, plant.hmi, CLIENT, plant.plc_ip, S7_PORT))
    assert watch.result is not None
    return {"cap": watch.result, "client": done}


def test_stack_did_what_we_think(exchange: dict[str, Any]) -> None:
    done = exchange["client"]
    assert done["db1"] == bytes(range(4, 12)).hex()
    assert done["db2"] == "12345678"
    assert done["mb"] == "00aa"
    # The stack's own client reads the identity the server announced.
    assert done["order"] == [ORDER, *FIRMWARE]
    assert done["cpu"] == {"ASName": AS_NAME, "ModuleName": MODULE_NAME,
                           "Copyright": COPYRIGHT, "SerialNumber": SERIAL,
                           "ModuleTypeName": MODULE_TYPE}


def _s7(cap: Capture) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    recs = cap.of("s7comm")
    return ([r["s7comm"] for r in recs if r["is_request"]],
            [r["s7comm"] for r in recs if r["is_request"] is False])


def test_cotp_connection(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    cotp = [(r["src_ip"], r["cotp"]["tpdu"]) for r in cap.of("cotp")]
    assert cotp == [(plant.hmi_ip, "connection_request"), (plant.plc_ip, "connection_confirm"),
                    (plant.hmi_ip, "disconnect_request"), (plant.plc_ip, "disconnect_confirm")]
    cr = cap.of("cotp")[0]["cotp"]
    assert (cr["rack"], cr["slot"], cr["connection_type"]) == (0, 2, "pg")
    assert (cr["calling_tsap"], cr["called_tsap"]) == ("0100", "0102")


def test_records_match_the_client(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    recs = cap.of("s7comm")
    assert all(not r["anomalies"] for r in recs), [r for r in recs if r["anomalies"]]
    assert all((r["src_ip"], r["dest_port"]) == (plant.hmi_ip, S7_PORT)
               for r in recs if r["is_request"])
    req, rsp = _s7(cap)
    assert len(req) == len(rsp) == 11
    assert [m["pdu_ref"] for m in req] == [m["pdu_ref"] for m in rsp]
    assert [(m["rosctr"], m.get("func") or m["subfunction"]) for m in req] == [
        ("job", "setup_communication"),
        ("job", "read_var"), ("job", "write_var"), ("job", "read_var"),
        ("job", "write_var"), ("job", "read_var"),
        ("userdata", "read_szl"), ("userdata", "read_szl"),
        ("job", "plc_stop"), ("job", "plc_control"), ("job", "plc_control")]
    assert all(m.get("error", "no_error") == "no_error" for m in rsp), rsp
    assert rsp[0]["pdu_length"] == exchange["client"]["pdu_length"]

    def item(m: dict[str, Any]) -> tuple:
        (it,) = m["items"]
        return it["area"], it["db_number"], it["address"], it.get("length"), it.get("data")

    assert [item(m) for m in req[1:6]] == [
        ("db", 1, "DB1.DBB4", 8, None),
        ("db", 2, "DB2.DBB10", 4, "12345678"),
        ("db", 2, "DB2.DBB10", 4, None),
        ("flags", 0, "MB5", 1, "aa"),
        ("flags", 0, "MB4", 2, None)]
    # Read responses carry the values and the address of their request.
    reads = [rsp[1], rsp[3], rsp[5]]
    assert [(m["items"][0]["address"], m["items"][0]["data"]) for m in reads] == [
        ("DB1.DBB4", bytes(range(4, 12)).hex()), ("DB2.DBB10", "12345678"), ("MB4", "00aa")]
    assert all(m["items"][0]["return"] == "success" for m in rsp[1:6])

    szl = [(m["szl_id"], m["szl_name"]) for m in req[6:8]]
    assert szl == [(0x0011, "module_identification"), (0x001C, "component_identification")]
    assert [(m["pi_service"], m["pi_action"]) for m in req[8:11]] == [
        ("P_PROGRAM", "stop"), ("P_PROGRAM", "start"), ("P_PROGRAM", "cold_start")]


def test_szl_answers_carry_the_identity(exchange: dict[str, Any]) -> None:
    _, rsp = _s7(exchange["cap"])
    module, component = rsp[6], rsp[7]
    assert (module["szl_record_length"], module["szl_record_count"]) == (28, 3)
    assert module["order_number"] == ORDER
    assert module["hardware_version"] == str(HARDWARE)
    assert module["firmware_version"] == "V{}.{}.{}".format(*FIRMWARE)
    assert (component["szl_record_length"], component["szl_record_count"]) == (34, 6)
    assert {k: component[k] for k in ("automation_system_name", "module_name",
                                      "plant_designation", "copyright", "serial_number",
                                      "module_type_name")} == {
        "automation_system_name": AS_NAME, "module_name": MODULE_NAME,
        "plant_designation": PLANT, "copyright": COPYRIGHT, "serial_number": SERIAL,
        "module_type_name": MODULE_TYPE}


def test_inventory_identity_is_what_the_cpu_announced(exchange: dict[str, Any],
                                                      plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    plc = cap.asset(plant.plc_ip)
    assert plc["identity"] == {
        "vendor": "Siemens", "device_type": "plc", "order_number": ORDER,
        "hardware": str(HARDWARE), "firmware": "V{}.{}.{}".format(*FIRMWARE),
        "name": MODULE_NAME, "product": MODULE_TYPE, "serial": SERIAL, "location": PLANT}
    assert plc["roles"] == ["s7comm:server"] and plc["services"] == [f"tcp/{S7_PORT}"]
    hmi = cap.asset(plant.hmi_ip)
    assert hmi["roles"] == ["s7comm:client"] and not hmi["identity"]


def test_live_agent_counts_and_finds(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    # The live summaries count the S7comm and COTP messages of the (one) ISO-on-TCP flow.
    flows = cap.live_flows("s7comm")
    assert {(f["src_ip"], f["dest_ip"], f["dest_port"]) for f in flows} == {
        (plant.hmi_ip, plant.plc_ip, S7_PORT)}
    assert cap.messages("s7comm") == len(cap.of("s7comm")) + len(cap.of("cotp"))
    # Findings fold per window; the exchange may straddle a window boundary.
    stops = [f for f in cap.findings if f["rule"] == "plc_stop"]
    assert [(f["severity"], f["src_ip"], f["dest_ip"], f["count"]) for f in stops] == [
        ("critical", plant.hmi_ip, plant.plc_ip, 1)]
    assert stops[0]["messages"][0]["s7comm"]["func"] == "plc_stop"
    starts = [f for f in cap.findings if f["rule"] == "plc_start"]
    assert {(f["src_ip"], f["dest_ip"], f["detail"]) for f in starts} == {
        (plant.hmi_ip, plant.plc_ip, "s7comm plc_control")}
    assert sum(f["count"] for f in starts) == 2                     # hot and cold start
    assert [m["s7comm"]["pi_action"] for f in starts for m in f["messages"]] == [
        "start", "cold_start"]
