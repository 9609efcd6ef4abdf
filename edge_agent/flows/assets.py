"""The passive asset inventory: every device seen, what it speaks, and who it says it is.

An asset is keyed by its IP address, or by its MAC address for devices seen only on Ethernet
(GOOSE publishers, PROFINET DCP). Behind a router every remote IP arrives with the router's
MAC, so a MAC seen with more than ``ROUTER_MAC_IPS`` addresses is treated as a gateway's and is
not attributed to those hosts (nor is its vendor).

Roles, protocols and ports come from flows (once per flow and window, off the per-packet path);
identity (vendor, model, firmware, serial, name ...) comes from the messages that reveal it,
each attribute remembering which message taught it. Bounded by ``max_assets``: the least
recently seen asset goes first.
"""
from __future__ import annotations

import importlib.util
from array import array
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from edge_agent.decode import IDENTITY_KEYS
from edge_agent.flows.table import Flow, MessageEvent

ROUTER_MAC_IPS = 4


class OUIRegistry:
    """The IEEE MA-L (OUI) registry as netaddr ships it (``oui.txt`` and its ``oui.idx``).

    netaddr's own lookup loads the whole index into a dict (about 13 MiB); here the index is
    two sorted arrays (about 0.3 MiB) and each name is read from the registry file on demand.
    """

    def __init__(self) -> None:
        # The package's data files only: importing netaddr.eui would load its own index.
        spec = importlib.util.find_spec("netaddr")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("netaddr is not installed")
        folder = Path(list(spec.submodule_search_locations)[0]) / "eui"
        self.text = folder / "oui.txt"
        keys, offsets = array("I"), array("I")
        with open(folder / "oui.idx", encoding="ascii") as f:
            for line in f:
                oui, offset, _size = line.split(",")
                keys.append(int(oui))
                offsets.append(int(offset))
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self.keys = array("I", (keys[i] for i in order))
        self.offsets = array("I", (offsets[i] for i in order))

    def lookup(self, oui: int) -> str | None:
        i = bisect_left(self.keys, oui)
        if i == len(self.keys) or self.keys[i] != oui:
            return None
        with open(self.text, "rb") as f:
            f.seek(self.offsets[i])
            first = f.readline().decode("utf-8", "replace")
        # "00-1B-1B   (hex)\t\tSiemens AG"
        return first.split("(hex)", 1)[-1].strip() or None


_REGISTRY: OUIRegistry | None = None


@lru_cache(maxsize=4096)
def mac_vendor(mac: str) -> str | None:
    """The IEEE OUI registrant of a MAC address, or None (unregistered, or locally assigned)."""
    global _REGISTRY
    try:
        oui = int(mac.replace(":", "").replace("-", "")[:6], 16)
    except ValueError:
        return None
    if oui >> 16 & 0x02:          # locally administered: no registrant
        return None
    if _REGISTRY is None:
        try:
            _REGISTRY = OUIRegistry()
        except (ImportError, OSError):
            return None
    return _REGISTRY.lookup(oui)


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def is_host(ip: bytes, mac: bytes) -> bool:
    """False for broadcast, multicast and unspecified addresses: they are not devices."""
    if mac and (mac[0] & 1 or not any(mac)):
        return False if mac[0] & 1 else bool(ip)     # an all-zero MAC (loopback) still has an IP
    if len(ip) == 4:
        return 0 < ip[0] < 224 and ip != b"\xff\xff\xff\xff"
    if len(ip) == 16:
        return ip[0] != 0xFF and any(ip)
    return True


@dataclass
class Asset:
    key: str
    ip: str | None = None
    mac: str | None = None
    mac_vendor: str | None = None
    vlan: int | None = None
    first_seen: float = 0.0
    last_seen: float = 0.0
    roles: set[str] = field(default_factory=set)            # "modbus:server", "dnp3:client" ...
    services: set[str] = field(default_factory=set)         # "tcp/502" offered by this device
    identity: dict[str, Any] = field(default_factory=dict)
    learned_from: dict[str, str] = field(default_factory=dict)   # attribute -> "proto kind @ts"

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "ip": self.ip, "mac": self.mac, "mac_vendor": self.mac_vendor,
                "vlan": self.vlan, "first_seen": self.first_seen, "last_seen": self.last_seen,
                "roles": sorted(self.roles), "services": sorted(self.services),
                "identity": dict(sorted(self.identity.items())),
                "learned_from": dict(sorted(self.learned_from.items()))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Asset":
        return cls(d["key"], d.get("ip"), d.get("mac"), d.get("mac_vendor"), d.get("vlan"),
                   d.get("first_seen", 0.0), d.get("last_seen", 0.0), set(d.get("roles", ())),
                   set(d.get("services", ())), dict(d.get("identity", {})),
                   dict(d.get("learned_from", {})))


@dataclass(frozen=True)
class AssetChange:
    asset: dict[str, Any]
    change: str                          # "new" or "changed"
    changes: tuple[dict[str, Any], ...]  # {"attr", "old", "new"} for a changed asset


class Inventory:
    def __init__(self, max_assets: int = 4096) -> None:
        self.max_assets = max_assets
        self.assets: OrderedDict[str, Asset] = OrderedDict()
        # MAC -> IPs seen with it, to tell a router's MAC; bounded like the assets.
        self.mac_ips: OrderedDict[str, set[str]] = OrderedDict()
        self.evicted = 0
        self._new: set[str] = set()
        self._changed: dict[str, list[dict[str, Any]]] = {}
        self._touched: set[str] = set()      # seen since the last drain_touched()

    def load(self, assets: list[Asset]) -> None:
        for a in sorted(assets, key=lambda a: a.last_seen):
            self.assets[a.key] = a
            if a.mac and a.ip:
                self.mac_ips.setdefault(a.mac, set()).add(a.ip)

    def _get(self, key: str, now: float) -> Asset:
        asset = self.assets.get(key)
        if asset is None:
            if len(self.assets) >= self.max_assets:
                old, _ = self.assets.popitem(last=False)
                self.evicted += 1
                self._new.discard(old)
                self._changed.pop(old, None)
            asset = Asset(key, first_seen=now, last_seen=now)
            self.assets[key] = asset
            self._new.add(key)
        else:
            self.assets.move_to_end(key)
        if len(self._touched) < self.max_assets:
            self._touched.add(key)
        return asset

    def _host(self, ip: str, mac_raw: bytes, vlan: int | None, now: float) -> Asset:
        asset = self._get(f"ip:{ip}", now)
        asset.ip = ip
        asset.last_seen = max(asset.last_seen, now)
        if vlan is not None:
            asset.vlan = vlan
        if mac_raw and any(mac_raw):
            mac = _mac(mac_raw)
            ips = self.mac_ips.get(mac)
            if ips is None:
                if len(self.mac_ips) >= self.max_assets:
                    self.mac_ips.popitem(last=False)
                ips = self.mac_ips[mac] = set()
            else:
                self.mac_ips.move_to_end(mac)
            if len(ips) <= ROUTER_MAC_IPS:
                ips.add(ip)
            if len(ips) <= ROUTER_MAC_IPS and asset.mac != mac:
                if asset.mac is not None:
                    self._note(asset, "mac", asset.mac, mac)
                asset.mac = mac
                asset.mac_vendor = mac_vendor(mac)
            elif len(ips) > ROUTER_MAC_IPS and asset.mac == mac:
                asset.mac = asset.mac_vendor = None      # it was a router's MAC all along
        return asset

    def _note(self, asset: Asset, attr: str, old: Any, new: Any) -> None:
        """A change of a known asset (a first value learned counts: old is None then)."""
        if asset.key not in self._new:
            self._changed.setdefault(asset.key, []).append({"attr": attr, "old": old, "new": new})

    def observe_flows(self, flows: list[Flow], now: float) -> None:
        """Roles and services from the flows active in a window."""
        for f in flows:
            if f.transport == "ether":
                if f.decoder is not None:
                    a = self._get(f"mac:{f.client_ip}", f.last_ts)
                    a.mac = f.client_ip
                    a.mac_vendor = a.mac_vendor or mac_vendor(f.client_ip)
                    a.last_seen = max(a.last_seen, f.last_ts)
                    a.roles.add(f"{f.proto}:publisher")
                continue
            client = server = None
            if is_host(f.client, f.client_mac):
                client = self._host(f.client_ip, f.client_mac, f.vlan, f.last_ts)
            if is_host(f.server, f.server_mac):
                server = self._host(f.server_ip, f.server_mac, f.vlan, f.last_ts)
            if f.decoder is None or not f.messages:
                continue
            # Both ends on the well-known port (BACnet, DNP3 over UDP): who asked is the client.
            asker, answerer = (server, client) if f.requests[1] > f.requests[0] else (client, server)
            for asset, role in ((asker, "client"), (answerer, "server")):
                if asset is None:
                    continue
                tag = f"{f.proto}:{role}"
                if tag not in asset.roles:
                    if asset.roles:
                        self._note(asset, "roles", sorted(asset.roles), sorted(asset.roles | {tag}))
                    asset.roles.add(tag)
            service = f"{f.transport}/{f.sport}"
            server = answerer
            if server is not None and service not in server.services:
                if server.services:
                    self._note(server, "services", sorted(server.services),
                               sorted(server.services | {service}))
                server.services.add(service)

    def observe_identity(self, ev: MessageEvent) -> None:
        """A message that reveals its sender's identity."""
        ident = ev.message.identity
        flow = ev.flow
        if not ident:
            return
        if flow.transport == "ether":
            asset = self._get(f"mac:{flow.client_ip if ev.from_client else flow.server_ip}", ev.ts)
        elif ev.from_client:
            asset = self._host(flow.client_ip, flow.client_mac, flow.vlan, ev.ts)
        else:
            asset = self._host(flow.server_ip, flow.server_mac, flow.vlan, ev.ts)
        source = f"{ev.message.proto} {ev.message.kind or 'message'} @{ev.ts:.6f}"
        for attr, value in ident.items():
            if attr not in IDENTITY_KEYS or value in (None, ""):
                continue
            old = asset.identity.get(attr)
            if old != value:
                self._note(asset, attr, old, value)
                asset.identity[attr] = value
                asset.learned_from[attr] = source

    def drain_touched(self) -> list[dict[str, Any]]:
        """Assets seen since the last call, to persist (their last_seen moved)."""
        out = [self.assets[k].as_dict() for k in self._touched if k in self.assets]
        self._touched = set()
        return out

    def drain_changes(self) -> list[AssetChange]:
        """Assets that appeared or changed since the last call."""
        out = [AssetChange(self.assets[k].as_dict(), "new", ()) for k in sorted(self._new)
               if k in self.assets]
        out += [AssetChange(self.assets[k].as_dict(), "changed", tuple(c))
                for k, c in sorted(self._changed.items()) if k in self.assets and k not in self._new]
        self._new = set()
        self._changed = {}
        return out
