"""The asset inventory: roles, identity with its source, changes, bounds and persistence."""
from __future__ import annotations

import json

from edge_agent import cli
from edge_agent.decode import Message
from edge_agent.flows.assets import Inventory, is_host, mac_vendor
from edge_agent.flows.table import Flow, MessageEvent
from edge_agent.summary.sign import claims
from edge_agent.transport.spool import Spool
from tests.conftest import fixture_pcaps

PLC, HMI = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])
SIEMENS_MAC = bytes.fromhex("001b1b010203")


def modbus_flow(client: bytes = HMI, cport: int = 40000, client_mac: bytes = b"\x02" * 6) -> Flow:
    f = Flow("tcp", client, cport, PLC, 502, 1.0)
    f.client_mac, f.server_mac = client_mac, SIEMENS_MAC
    f.proto, f.messages, f.decoder = "modbus", 2, object()
    return f


def identity(flow: Flow, ts: float, **ident) -> MessageEvent:
    msg = Message("modbus", {}, False, (), "encap_interface_transport", ident)
    return MessageEvent(ts, flow, False, msg)


def test_roles_services_and_mac_vendor_from_flows() -> None:
    inv = Inventory()
    inv.observe_flows([modbus_flow()], 1.0)
    plc = inv.assets["ip:10.0.0.2"]
    assert plc.roles == {"modbus:server"} and plc.services == {"tcp/502"}
    assert plc.mac == "00:1b:1b:01:02:03" and plc.mac_vendor == mac_vendor(plc.mac)
    assert "siemens" in plc.mac_vendor.lower()
    assert inv.assets["ip:10.0.0.1"].roles == {"modbus:client"}
    assert {c.change for c in inv.drain_changes()} == {"new"}
    assert inv.drain_changes() == []


def test_identity_remembers_its_source_and_a_firmware_change_is_a_change() -> None:
    inv = Inventory()
    flow = modbus_flow()
    inv.observe_flows([flow], 1.0)
    inv.observe_identity(identity(flow, 2.0, vendor="Acme", firmware="V1.0", bogus="x"))
    inv.drain_changes()
    plc = inv.assets["ip:10.0.0.2"]
    assert plc.identity == {"vendor": "Acme", "firmware": "V1.0"}
    assert plc.learned_from["firmware"].startswith("modbus encap_interface_transport @2.0")
    inv.observe_identity(identity(flow, 3.0, vendor="Acme", firmware="V0.9"))
    (change,) = inv.drain_changes()
    assert change.change == "changed"
    assert change.changes == ({"attr": "firmware", "old": "V1.0", "new": "V0.9"},)


def test_router_mac_is_not_attributed_to_remote_hosts() -> None:
    inv = Inventory()
    router = bytes.fromhex("0000bc0a0b0c")
    flows = [modbus_flow(bytes([192, 168, 9, i]), 40000 + i, router) for i in range(1, 8)]
    inv.observe_flows(flows, 1.0)
    macs = {inv.assets[f"ip:192.168.9.{i}"].mac for i in range(1, 8)}
    assert macs == {None} or (len(macs) <= 2 and None in macs)
    assert inv.assets["ip:192.168.9.7"].mac is None


def test_broadcast_and_multicast_are_not_devices() -> None:
    assert not is_host(bytes([10, 0, 0, 255]), b"\xff" * 6)
    assert not is_host(bytes([224, 0, 0, 1]), bytes.fromhex("01005e000001"))
    assert not is_host(bytes([255] * 4), b"")
    assert is_host(bytes([127, 0, 0, 1]), bytes(6))


def test_inventory_is_bounded() -> None:
    inv = Inventory(max_assets=16)
    inv.observe_flows([modbus_flow(bytes([10, 1, i // 256, i % 256]), 1000 + i) for i in range(40)], 1.0)
    assert len(inv.assets) == 16 and inv.evicted > 0


def test_inventory_persists_and_summaries_carry_changes(tmp_path, capsys) -> None:
    pcap = [p for p in fixture_pcaps("modbus") if p.name == "modbus_example.pcap"][0]
    state = str(tmp_path)
    assert cli.main(["run", "-q", "--pcap", str(pcap), "--state-dir", state]) == 0
    docs = [claims(d) for _, d in Spool(tmp_path / "spool.sqlite").documents()]
    new = [a for d in docs for a in d["assets"] if a["change"] == "new"]
    ident = [a["asset"] for a in new if a["asset"]["identity"]]
    assert ident and ident[0]["identity"]["vendor"] == "Zeek Modbus Test"
    assert cli.main(["assets", "--json", "--state-dir", state]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {a["key"] for a in listed} >= {a["asset"]["key"] for a in new}
    # A second run over the same capture knows these devices already.
    assert cli.main(["run", "-q", "--pcap", str(pcap), "--state-dir", state]) == 0
    docs = [claims(d) for s, d in Spool(tmp_path / "spool.sqlite").documents(since=len(docs))]
    assert not [a for d in docs for a in d["assets"] if a["change"] == "new"]


def test_identity_learned_after_the_first_window_is_a_change() -> None:
    inv = Inventory()
    flow = modbus_flow()
    inv.observe_flows([flow], 1.0)
    assert {c.change for c in inv.drain_changes()} == {"new"}
    inv.observe_identity(identity(flow, 70.0, vendor="Acme"))
    (change,) = inv.drain_changes()
    assert change.change == "changed"
    assert change.changes == ({"attr": "vendor", "old": None, "new": "Acme"},)
    assert {a["key"] for a in inv.drain_touched()} >= {"ip:10.0.0.2"}
