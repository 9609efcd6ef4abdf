"""asyncua server and client (OPC UA binary on TCP 4840), the agent on the mirror port.

The server offers two endpoints, SecurityPolicy None and Basic256Sha256 SignAndEncrypt (a
self-signed certificate made at start-up), and a namespace with an object ``Line3`` holding
``Temperature`` (Double, writable) and ``Counter`` (Int32). The client

1. connects without security: Hello/Acknowledge, OpenSecureChannel, CreateSession,
   ActivateSession, reads the namespace array, browses the Objects folder, finds the variables
   (TranslateBrowsePathsToNodeIds), reads, writes and reads back the temperature, closes;
2. connects again with Basic256Sha256 SignAndEncrypt (asyncua first fetches the endpoints on a
   None channel to learn the server certificate) and reads the counter.

Checked: the services and node ids of the readable channel, the written value, the
ApplicationDescriptions (server's from CreateSession and GetEndpoints, client's from
CreateSession) in the records and in the inventory, and that the encrypted channel shows its
policy and certificate sizes but no service.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.capture.netns import Plant

from .conftest import Capture, Watch, last_json, require, run_py, start_server

OPCUA_PORT = 4840
PATH = "/eta/line3/"
SERVER_APP = {"application_name": "ETA Line 3 OPC UA Server",
              "application_uri": "urn:eta:line3:opcua",
              "product_uri": "urn:EdgeTestAutomation:LineServer", "application_type": "server"}
CLIENT_APP = {"application_name": "ETA HMI", "application_uri": "urn:eta:hmi",
              "product_uri": "urn:EdgeTestAutomation:HMI", "application_type": "client"}
NAMESPACE = "urn:eta:line3"
WRITTEN = 42.25

SERVER = r"""
import asyncio, json, sys
from pathlib import Path
from asyncua import Server, ua
from asyncua.crypto import cert_gen
from cryptography.x509.oid import ExtendedKeyUsageOID

host, port, path, app, ns, work = (sys.argv[1], int(sys.argv[2]), sys.argv[3],
                                   json.loads(sys.argv[4]), sys.argv[5], Path(sys.argv[6]))

async def main():
    srv = Server()
    srv.set_endpoint(f"opc.tcp://{host}:{port}{path}")
    srv.set_server_name(app["application_name"])
    srv.product_uri = app["product_uri"]
    srv.application_type = ua.ApplicationType.Server
    srv.set_security_policy([ua.SecurityPolicyType.NoSecurity,
                             ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    await srv.init()
    await srv.set_application_uri(app["application_uri"])
    key, cert = work / "server-key.pem", work / "server-cert.der"
    await cert_gen.setup_self_signed_certificate(key, cert, app["application_uri"], host,
                                                 [ExtendedKeyUsageOID.SERVER_AUTH], {})
    await srv.load_certificate(str(cert))
    await srv.load_private_key(str(key))
    idx = await srv.register_namespace(ns)
    line = await srv.nodes.objects.add_object(idx, "Line3")
    temperature = await line.add_variable(idx, "Temperature", 21.5)
    await temperature.set_writable()
    await line.add_variable(idx, "Counter", ua.Variant(7, ua.VariantType.Int32))
    async with srv:
        await asyncio.Future()

asyncio.run(main())
"""

CLIENT = r"""
import asyncio, json, sys
from pathlib import Path
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

url, app, ns, value, work = (sys.argv[1], json.loads(sys.argv[2]), sys.argv[3],
                             float(sys.argv[4]), Path(sys.argv[5]))

def client():
    c = Client(url, timeout=5)
    c.name = c.description = app["application_name"]
    c.application_uri = app["application_uri"]
    c.product_uri = app["product_uri"]
    return c

async def main():
    out = {}
    async with client() as c:
        idx = await c.get_namespace_index(ns)
        out["objects"] = [n.nodeid.to_string() for n in await c.nodes.objects.get_children()]
        temperature = await c.nodes.objects.get_child([f"{idx}:Line3", f"{idx}:Temperature"])
        out["temperature_node"] = temperature.nodeid.to_string()
        out["before"] = await temperature.read_value()
        await temperature.write_value(ua.Variant(value, ua.VariantType.Double))
        out["after"] = await temperature.read_value()
    secure = client()
    cert, key = await secure.setup_self_signed_certificate(work / "client-key.pem",
                                                           work / "client-cert.der")
    await secure.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key),
                              mode=ua.MessageSecurityMode.SignAndEncrypt)
    async with secure:
        counter = await secure.nodes.objects.get_child([f"{idx}:Line3", f"{idx}:Counter"])
        out["counter"] = await counter.read_value()
    out["client_cert_length"] = cert.stat().st_size
    out["server_cert_length"] = (work / "server-cert.der").stat().st_size
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def exchange(plant: Plant, workdir: Path) -> dict[str, Any]:
    require("asyncua")
    url = f"opc.tcp://{plant.plc_ip}:{OPCUA_PORT}{PATH}"
    start_server(plant, SERVER, plant.plc_ip, OPCUA_PORT, PATH, json.dumps(SERVER_APP),
                 NAMESPACE, workdir, log=workdir / "server.log", port=OPCUA_PORT, timeout=30)
    with Watch(plant, workdir) as watch:
        done = last_json(run_py(plant, plant.hmi, CLIENT, url, json.dumps(CLIENT_APP),
                                NAMESPACE, WRITTEN, workdir, timeout=60))
    assert watch.result is not None
    return {"cap": watch.result, "client": done, "url": url}


def test_stack_did_what_we_think(exchange: dict[str, Any]) -> None:
    done = exchange["client"]
    assert done["before"] == 21.5 and done["after"] == WRITTEN and done["counter"] == 7
    # Line3 is among the Objects folder's children, in the server's own namespace (2).
    assert any(n.startswith("ns=2;") for n in done["objects"])
    assert done["temperature_node"].startswith("ns=2;")


def _connections(cap: Capture) -> list[list[dict[str, Any]]]:
    by: dict[int, list[dict[str, Any]]] = {}
    for r in cap.of("opcua"):
        by.setdefault(r["flow_id"], []).append(r)
    return sorted(by.values(), key=lambda rs: rs[0]["ts"])


def test_readable_channel(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    recs = cap.of("opcua")
    assert all(not r["anomalies"] for r in recs), [r for r in recs if r["anomalies"]]
    plain, _, _ = _connections(cap)
    node = exchange["client"]["temperature_node"]
    o = [r["opcua"] for r in plain]
    assert [m["message_type"] for m in o[:4]] == ["HEL", "ACK", "OPN", "OPN"]
    assert o[0]["endpoint_url"] == exchange["url"]
    assert (o[2]["request_type"], o[2]["security_mode"], o[2]["security_policy"]) == (
        "issue", "none", "None")
    assert o[-1]["message_type"] == "CLO" and o[-1]["service"] == "close_secure_channel_request"
    assert all(m["message_type"] == "MSG" and not m["encrypted"] for m in o[4:-1])

    msgs = [r for r in plain[4:-1]]
    assert all(r["is_request"] == (r["src_ip"] == plant.hmi_ip) for r in msgs)
    req = [r["opcua"] for r in msgs if r["is_request"]]
    rsp = [r["opcua"] for r in msgs if r["is_request"] is False]
    # Every request answered, in order, with Good.
    assert [m["request_id"] for m in req] == [m["request_id"] for m in rsp]
    assert [m["service"].removesuffix("_request") for m in req] == [
        m["service"].removesuffix("_response") for m in rsp]
    assert all(m["status"] == "good" for m in rsp)
    services = [m["service"].removesuffix("_request") for m in req]
    assert services[:2] == ["create_session", "activate_session"]
    assert services[-1] == "close_session"
    assert req[1]["user_token_type"] == "anonymous"

    def calls(name: str) -> list[tuple]:
        return [(tuple(m.get("node_ids", ())), tuple(m.get("values", ()))) for m in req
                if m["service"] == f"{name}_request"]

    assert calls("browse") == [(("i=85",), ())]                  # the Objects folder
    assert calls("write") == [((node,), (WRITTEN,))]
    assert calls("read") == [(("i=2255",), ()), ((node,), ()), ((node,), ())]
    assert services.count("translate_browse_paths_to_node_ids") >= 1
    # Read, write, read of the temperature, in that order.
    order = [s for s, m in zip(services, req) if node in m.get("node_ids", ())]
    assert order == ["read", "write", "read"]


def test_application_descriptions(exchange: dict[str, Any], plant: Plant) -> None:
    plain, endpoints, _ = _connections(exchange["cap"])
    create = [r["opcua"] for r in plain if r["opcua"].get("service", "").startswith(
        "create_session")]
    assert create[0]["application"] == CLIENT_APP
    assert create[0]["endpoint_url"] == exchange["url"]
    assert create[1]["application"] == SERVER_APP
    got = [r["opcua"] for r in endpoints if r["opcua"].get("service") == "get_endpoints_response"]
    assert len(got) == 1 and got[0]["application"] == SERVER_APP
    policies = {(e["security_policy"], e["security_mode"]) for e in got[0]["endpoints"]}
    assert policies == {("None", "none"), ("Basic256Sha256", "sign_and_encrypt")}, got[0]


def test_encrypted_channel(exchange: dict[str, Any], plant: Plant) -> None:
    *_, secure = _connections(exchange["cap"])
    done = exchange["client"]
    o = [r["opcua"] for r in secure]
    assert [m["message_type"] for m in o[:4]] == ["HEL", "ACK", "OPN", "OPN"]
    opn_req, opn_rsp = o[2], o[3]
    assert opn_req["security_policy"] == opn_rsp["security_policy"] == "Basic256Sha256"
    # Each side sends its own certificate; the agent sees how big it is, nothing inside.
    assert opn_req["sender_certificate_length"] == done["client_cert_length"]
    assert opn_rsp["sender_certificate_length"] == done["server_cert_length"]
    assert opn_req["receiver_thumbprint"] and opn_rsp["receiver_thumbprint"]
    assert o[-1]["message_type"] == "CLO"
    assert all(m["encrypted"] and "service" not in m for m in o[2:])
    # The server assigns the channel id in its OPN reply; the client asked with 0.
    assert opn_req["secure_channel_id"] == 0
    assert {m["secure_channel_id"] for m in o[3:]} == {opn_rsp["secure_channel_id"]} != {0}


def test_inventory_identity_is_the_application_description(exchange: dict[str, Any],
                                                           plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    plc = cap.asset(plant.plc_ip)
    assert plc["identity"] == {
        "name": SERVER_APP["application_name"], "product": SERVER_APP["product_uri"],
        "vendor": "EdgeTestAutomation", "description": SERVER_APP["application_uri"],
        "device_type": "opcua_server"}
    assert plc["roles"] == ["opcua:server"] and plc["services"] == [f"tcp/{OPCUA_PORT}"]
    hmi = cap.asset(plant.hmi_ip)
    assert hmi["identity"] == {
        "name": CLIENT_APP["application_name"], "product": CLIENT_APP["product_uri"],
        "vendor": "EdgeTestAutomation", "description": CLIENT_APP["application_uri"],
        "device_type": "opcua_client"}
    assert hmi["roles"] == ["opcua:client"]


def test_live_agent_counts_every_chunk(exchange: dict[str, Any], plant: Plant) -> None:
    cap: Capture = exchange["cap"]
    assert cap.messages("opcua") == len(cap.of("opcua"))
    flows = cap.live_flows("opcua")
    assert len({f["flow_id"] for f in flows}) == 3
    assert all((f["src_ip"], f["dest_ip"], f["dest_port"]) ==
               (plant.hmi_ip, plant.plc_ip, OPCUA_PORT) for f in flows)
