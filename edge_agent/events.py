"""Per-message records: the JSON contract of ``edge-agent decode --format jsonl``.

Envelope (ARCHITECTURE.md): ``ts, flow_id, src_ip, src_port, dest_ip, dest_port, transport,
proto, is_request``, then one object keyed by the protocol name, then ``anomalies``. ``src`` and
``dest`` are the direction of this message. Protocols carried straight on Ethernet have MAC
addresses in place of IPs and no ports.
"""
from __future__ import annotations

from typing import Any

from edge_agent.flows.table import MessageEvent


def to_record(ev: MessageEvent) -> dict[str, Any]:
    flow, msg = ev.flow, ev.message
    if ev.from_client:
        src, sport, dst, dport = flow.client_ip, flow.cport, flow.server_ip, flow.sport
    else:
        src, sport, dst, dport = flow.server_ip, flow.sport, flow.client_ip, flow.cport
    rec: dict[str, Any] = {
        "ts": round(ev.ts, 6),
        "flow_id": flow.flow_id,
        "src_ip": src,
        "src_port": sport if flow.transport != "ether" else None,
        "dest_ip": dst,
        "dest_port": dport if flow.transport != "ether" else None,
        "transport": flow.transport,
        "proto": msg.proto,
        "is_request": msg.is_request,
    }
    if flow.vlan is not None:
        rec["vlan"] = flow.vlan
    rec[msg.proto] = msg.fields
    rec["anomalies"] = list(msg.anomalies)
    return rec
