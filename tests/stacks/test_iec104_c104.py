"""c104 (lib60870) server and client, IEC 60870-5-104, the agent on the mirror port.

The outstation (common address 47) has a single point (IOA 100), a measured float (IOA 200),
a select-before-operate single command (IOA 300) and a float setpoint (IOA 400); on a command
it reports the new value spontaneously. The controlling station starts data transfer, runs a
general interrogation, selects and executes the single command and sends the setpoint.

c104 2.2.1's client (``Connection::awaitCommandSuccess``) starts waiting for a confirmation
only after its send call returns and does not check whether it already came: on a veth link
the select confirmation arrives within microseconds, is lost, ``transmit()`` returns False
and the execute is never sent. The client therefore talks through a latency shim in its own
process (server-to-client bytes wait 20 ms before the client library sees them), like a WAN
link would. Nothing changes on the wire between HMI and PLC, where the agent watches.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.capture.netns import Plant

from .conftest import Capture, Watch, last_json, require, run_py, start_server

IEC104_PORT = 2404
CA = 47
ORIGINATOR = 7

SERVER = r"""
import queue, sys, time
import c104

host, port, ca = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = c104.Server(ip=host, port=port, tick_rate_ms=50)
st = srv.add_station(common_address=ca)
sp = st.add_point(io_address=100, type=c104.Type.M_SP_NA_1)
sp.value = False
me = st.add_point(io_address=200, type=c104.Type.M_ME_NC_1)
me.value = 12.5
cmd = st.add_point(io_address=300, type=c104.Type.C_SC_NA_1,
                   command_mode=c104.CommandMode.SELECT_AND_EXECUTE)
setpoint = st.add_point(io_address=400, type=c104.Type.C_SE_NC_1)
todo = queue.Queue()

def on_command(point: c104.Point, previous_info: c104.Information,
               message: c104.IncomingMessage) -> c104.ResponseState:
    todo.put((sp, point.value))
    return c104.ResponseState.SUCCESS

def on_setpoint(point: c104.Point, previous_info: c104.Information,
                message: c104.IncomingMessage) -> c104.ResponseState:
    todo.put((me, point.value))
    return c104.ResponseState.SUCCESS

cmd.on_receive(callable=on_command)
setpoint.on_receive(callable=on_setpoint)
srv.start()
while True:
    point, value = todo.get()
    point.value = value
    assert point.transmit(cause=c104.Cot.SPONTANEOUS)
"""

CLIENT = r"""
import json, socket, sys, threading, time
import c104

host, port, ca, oa = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def latency_shim(delay):
    # Relays one connection to the outstation; replies reach the c104 client ``delay`` late.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)

    def pump(src, dst, wait):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def serve():
        local, _ = lsock.accept()
        remote = socket.create_connection((host, port))
        for s in (local, remote):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(local, remote, 0), daemon=True).start()
        threading.Thread(target=pump, args=(remote, local, delay), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return lsock.getsockname()[1]

client = c104.Client(tick_rate_ms=50, command_timeout_ms=3000)
client.originator_address = oa
conn = client.add_connection(ip="127.0.0.1", port=latency_shim(0.02), init=c104.Init.MUTED)
station = conn.add_station(common_address=ca)
cmd = station.add_point(io_address=300, type=c104.Type.C_SC_NA_1,
                        command_mode=c104.CommandMode.SELECT_AND_EXECUTE)
setpoint = station.add_point(io_address=400, type=c104.Type.C_SE_NC_1)
client.start()
deadline = time.monotonic() + 5
while not conn.is_connected and time.monotonic() < deadline:
    time.sleep(0.02)
out = {"connected": conn.is_connected, "startdt": conn.unmute()}
deadline = time.monotonic() + 5
while conn.is_muted and time.monotonic() < deadline:
    time.sleep(0.02)
out["interrogation"] = conn.interrogation(common_address=ca)
received = station.get_point(100), station.get_point(200)
out["interrogated"] = [p.value if p else None for p in received]
cmd.value = True
out["command"] = cmd.transmit(cause=c104.Cot.ACTIVATION)
setpoint.value = 42.25
out["setpoint"] = setpoint.transmit(cause=c104.Cot.ACTIVATION)
deadline = time.monotonic() + 3
while time.monotonic() < deadline and not (station.get_point(200).value == 42.25
                                            and station.get_point(100).value is True):
    time.sleep(0.02)
out["spontaneous"] = [station.get_point(100).value, station.get_point(200).value]
client.stop()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exchange(plant: Plant, workdir: Path) -> dict[str, Any]:
    require("c104")
    start_server(plant, SERVER, plant.plc_ip, IEC104_PORT, CA, log=workdir / "server.log",
                 port=IEC104_PORT)
    with Watch(plant, workdir) as watch:
        done = last_json(run_py(plant, plant.hmi, CLIENT, plant.plc_ip, IEC104_PORT, CA,
                                ORIGINATOR))
    assert watch.result is not None
    return {"cap": watch.result, "client": done}


def test_stack_did_what_we_think(exchange: dict[str, Any]) -> None:
    assert exchange["client"] == {
        "connected": True, "startdt": True, "interrogation": True,
        "interrogated": [False, 12.5], "command": True, "setpoint": True,
        "spontaneous": [True, 42.25]}


def _i(cap: Capture) -> list[tuple]:
    """I-format APDUs: (sender, type, cot, [(ioa, value, select)]) in wire order."""
    out = []
    for r in cap.of("iec104"):
        m = r["iec104"]
        if m["apci_type"] == "I":
            objs = [(o["ioa"], o.get("value"), o.get("select")) for o in m["objects"]]
            out.append((r["src_ip"], m["type"], m["cot"], objs))
    return out


def test_records_match_the_exchange(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    recs = cap.of("iec104")
    assert recs and all(not r["anomalies"] for r in recs), [r for r in recs if r["anomalies"]]
    hmi, plc = plant.hmi_ip, plant.plc_ip
    u = [(r["src_ip"], r["iec104"]["u_func"], r["is_request"]) for r in recs
         if r["iec104"]["apci_type"] == "U"]
    assert u == [(hmi, "startdt_act", True), (plc, "startdt_con", False)]
    assert recs[0]["iec104"]["u_func"] == "startdt_act"

    act, con, term = "activation", "activation_con", "activation_term"
    gi = [(0, None, None)]
    # Select (S/E = 1), its confirmation, the execute, its confirmation and the termination
    # (c104 echoes the select bit in the termination).
    sel, exe = [(300, 1, True)], [(300, 1, False)]
    seen = _i(cap)
    # The outstation reports the new values spontaneously once it acted; when exactly, next
    # to the command's termination, is its own business.
    spont = [x for x in seen if x[2] == "spontaneous"]
    assert sorted(spont) == [(plc, "m_me_nc_1", "spontaneous", [(200, 42.25, None)]),
                             (plc, "m_sp_na_1", "spontaneous", [(100, 1, None)])]
    assert seen.index(spont[0]) > seen.index((plc, "c_sc_na_1", con, exe))
    assert [x for x in seen if x[2] != "spontaneous"] == [
        (hmi, "c_ic_na_1", act, gi), (plc, "c_ic_na_1", con, gi),
        (plc, "m_sp_na_1", "interrogated_by_station", [(100, 0, None)]),
        (plc, "m_me_nc_1", "interrogated_by_station", [(200, 12.5, None)]),
        (plc, "c_ic_na_1", term, gi),
        (hmi, "c_sc_na_1", act, sel), (plc, "c_sc_na_1", con, sel),
        (hmi, "c_sc_na_1", act, exe), (plc, "c_sc_na_1", con, exe),
        (plc, "c_sc_na_1", term, sel),
        (hmi, "c_se_nc_1", act, [(400, 42.25, False)]),
        (plc, "c_se_nc_1", con, [(400, 42.25, False)]),
    ]
    i_recs = [r for r in recs if r["iec104"]["apci_type"] == "I"]
    assert {r["iec104"]["common_address"] for r in i_recs} == {CA}
    # The controlling station's commands carry its originator address; so do the replies.
    assert {r["iec104"]["originator"] for r in i_recs if r["iec104"]["type"].startswith("c_")
            } == {ORIGINATOR}
    assert next(r for r in i_recs if r["iec104"]["type"] == "c_ic_na_1")["iec104"][
        "objects"][0]["qualifier"] == 20                 # station interrogation
    # Requests are the controlling station's activations; everything else is not.
    assert all(r["is_request"] == (r["src_ip"] == hmi) for r in i_recs)
    for side in (hmi, plc):
        seqs = [r["iec104"]["tx_seq"] for r in i_recs if r["src_ip"] == side]
        assert seqs == list(range(len(seqs))), (side, seqs)
    # Supervisory frames (when the station sends them is its timer's business) acknowledge
    # only what the outstation sent.
    sent = len([r for r in i_recs if r["src_ip"] == plc])
    assert all(r["src_ip"] == hmi and r["iec104"]["rx_seq"] <= sent for r in recs
               if r["iec104"]["apci_type"] == "S")


def test_live_agent_counts_every_apdu(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    assert cap.messages("iec104") == len(cap.of("iec104"))
    flows = cap.live_flows("iec104")
    assert {(f["src_ip"], f["dest_ip"], f["dest_port"]) for f in flows} == {
        (plant.hmi_ip, plant.plc_ip, IEC104_PORT)}
    plc = cap.asset(plant.plc_ip)
    assert plc["roles"] == ["iec104:server"] and plc["services"] == [f"tcp/{IEC104_PORT}"]
    assert cap.asset(plant.hmi_ip)["roles"] == ["iec104:client"]
