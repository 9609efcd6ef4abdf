"""What a report shows, gathered from any source into one model: the plant.

Sources (``sources.py``) feed :class:`PlantBuilder` one document at a time (summaries, alerts,
inventory records), so a spool of tens of thousands of summaries is folded as it is read and
never held whole. ``build()`` returns the :class:`Plant` the page is drawn from.

Devices and conversations are keyed by site: the same address at two sites is two devices,
while two sensors at one site that both see a PLC describe the same PLC.
"""
from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from edge_agent.detect.rules import RANK, SEVERITIES

# Function families (detect/functions.toml) that change what a controller does or runs: the
# client that sends them is an engineering workstation (or someone acting as one).
ENGINEERING_FAMILIES = frozenset({"stop", "start", "restart", "program_download",
                                  "program_upload", "firmware"})
WRITE_FAMILIES = frozenset({"write"})
ENGINEERING_RULES = frozenset({"plc_stop", "plc_start", "device_restart", "modbus_restart",
                               "modbus_listen_only", "iec104_reset_process", "program_download",
                               "program_upload", "firmware_update"})
WRITE_RULES = frozenset({"first_write"})
# What a rule's finding proves a conversation carried, even when the summaries' sampled
# histories missed it.
RULE_FAMILIES = {"plc_stop": "stop", "plc_start": "start", "device_restart": "restart",
                 "modbus_restart": "restart", "iec104_reset_process": "restart",
                 "program_download": "program_download", "program_upload": "program_upload",
                 "firmware_update": "firmware", "first_write": "write"}
# Folded findings listed in full; the rest (least severe, then oldest) are counted. A noisy
# month must not make a report a Pi cannot write or a laptop cannot open.
MAX_FINDING_ROWS = 500
MAX_EDGE_KINDS = 12         # function names kept per conversation for its hover text
TRUNCATED = "..."           # a flow history's tail once it passed limits.max_history
# Link-layer-only flows carry no OT protocol the map could label.
NON_OT = frozenset({"ether", "tcp", "udp", "unknown", "other"})

SiteKey = str
AgentKey = tuple[str, str]      # (agent_id, site)


@dataclass
class Edge:
    """One conversation on the map: a client speaking one protocol to one server."""

    site: str
    client: str
    server: str
    proto: str
    transport: str
    packets: int = 0
    bytes: int = 0
    messages: int = 0
    anomalies: int = 0
    families: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    unclassified: int = 0        # messages past a truncated history: function unknown
    ports: set[int] = field(default_factory=set)
    first_ts: float | None = None
    last_ts: float | None = None
    windows: int = 0

    @property
    def ot(self) -> bool:
        return self.proto not in NON_OT

    def mix(self) -> list[tuple[str, float]]:
        """Function families with their share of the classified messages, largest first."""
        total = sum(self.families.values())
        return [(fam, n / total) for fam, n in self.families.most_common()] if total else []


@dataclass
class Window:
    """Traffic of one window start, summed over the agents that reported it."""

    start: float
    end: float
    packets: Counter[str] = field(default_factory=Counter)      # per protocol
    messages: Counter[str] = field(default_factory=Counter)
    total_packets: int = 0
    anomalies: int = 0
    threshold: float | None = None    # the model's, when the summary names its model


@dataclass
class Occurrence:
    """One finding in one window: a mark on the timeline."""

    ts: float
    severity: str
    rule: str
    score: float | None = None
    threshold: float | None = None


@dataclass
class FindingRow:
    """A finding folded over the windows it recurred in (same rule, endpoints and detail)."""

    site: str
    agent: str
    rule: str
    title: str
    severity: str
    technique: str | None
    reason: str
    detail: str
    src: str | None
    dst: str | None
    proto: str | None
    first_ts: float
    last_ts: float
    count: int
    windows: int
    messages: list[dict[str, Any]]
    explanation: list[dict[str, Any]] | None = None
    score: float | None = None
    threshold: float | None = None
    details: list[str] = field(default_factory=list)     # other details folded in (model)


@dataclass
class AgentInfo:
    agent_id: str
    site: str
    versions: set[str] = field(default_factory=set)
    summaries: int = 0
    alerts: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    last_seq: int | None = None
    health: dict[str, Any] = field(default_factory=dict)
    detection: dict[str, Any] = field(default_factory=dict)
    dropped_seqs: int = 0
    flows_omitted: int = 0


@dataclass
class Node:
    """A device on the map and in the inventory."""

    site: str
    key: str                          # "ip:10.0.0.1" or "mac:..."
    address: str
    asset: dict[str, Any]
    tier: str = "other"               # engineering, client, controller, other
    writer: bool = False
    programmer: bool = False
    new: bool = False
    vulnerable: bool = False
    in_inventory: bool = True
    agents: set[str] = field(default_factory=set)

    @property
    def subnet(self) -> str:
        try:
            ip = ipaddress.ip_address(self.address)
        except ValueError:
            return "layer 2"
        prefix = 24 if ip.version == 4 else 64
        return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass
class Verification:
    """The verdict of the signature and chain check for one signed stream (or why none)."""

    label: str
    verdict: Any = None               # summary.chain.Verdict
    unavailable: str | None = None    # why it could not be checked


@dataclass
class Plant:
    title: str
    source: str
    kind: str                         # capture, state, bundle, collector
    signed: bool
    agents: dict[AgentKey, AgentInfo]
    nodes: dict[tuple[str, str], Node]
    edges: list[Edge]
    windows: list[Window]
    occurrences: list[Occurrence]
    findings: list[FindingRow]
    findings_total: int
    findings_hidden: int
    scores: list[tuple[float, float, float]]      # (ts, score, threshold), window-level
    verifications: list[Verification]
    notes: list[str]
    exact_mix: bool
    sites: list[str]
    finding_severities: Counter[str] = field(default_factory=Counter)   # of folded findings

    @property
    def severity_counts(self) -> Counter[str]:
        return Counter(o.severity for o in self.occurrences)

    @property
    def has_scores(self) -> bool:
        return bool(self.scores) or any(o.score is not None for o in self.occurrences)


def family_lookup(families: dict[tuple[str, str], str]):
    """``(proto, kind) -> family``, falling back on the kind in any protocol (a flow named for
    CIP also carries its ENIP encapsulation's kinds, and a history does not say which)."""
    by_kind: dict[str, str] = {}
    for (_, kind), fam in sorted(families.items()):
        by_kind.setdefault(kind, fam)
    cache: dict[tuple[str, str], str] = {}

    def lookup(proto: str, kind: str) -> str:
        key = (proto, kind)
        fam = cache.get(key)
        if fam is None:
            base = kind[:-10] if kind.endswith("_exception") else kind
            fam = families.get((proto, base)) or by_kind.get(base) or "other"
            cache[key] = fam
        return fam
    return lookup


def is_device(address: str | None) -> bool:
    """False for broadcast, multicast and unspecified addresses: endpoints, not devices."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        # a MAC: the group bit marks multicast and broadcast
        try:
            return not int(address.split(":")[0], 16) & 1
        except ValueError:
            return False
    return not (ip.is_multicast or ip.is_unspecified or ip.is_reserved
                or (ip.version == 4 and str(ip).endswith(".255")))


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class PlantBuilder:
    """Folds documents into a :class:`Plant`; feed it, then call :meth:`build`."""

    def __init__(self, families: dict[tuple[str, str], str], source: str, kind: str,
                 signed: bool) -> None:
        self.family = family_lookup(families)
        self.source = source
        self.kind = kind
        self.signed = signed
        self.agents: dict[AgentKey, AgentInfo] = {}
        self.assets: dict[tuple[str, str], dict[str, Any]] = {}
        self.asset_agents: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.edges: dict[tuple[str, str, str, str], Edge] = {}
        self.windows: dict[float, Window] = {}
        self.occurrences: list[Occurrence] = []
        self.rows: dict[tuple, FindingRow] = {}
        self.seen_findings: set[tuple] = set()
        self.scores: list[tuple[float, float, float]] = []
        self.verifications: list[Verification] = []
        self.notes: list[str] = []
        self.baseline: dict[str, frozenset[str]] = {}       # site -> devices of its baseline
        self.new_device_findings: set[tuple[str, str]] = set()
        self.exact: dict[int, tuple[Counter[str], Counter[str]]] | None = None
        self.flow_edges: dict[int, tuple[str, str, str, str]] | None = None
        self.first_window: dict[str, float] = {}
        self.active_until: dict[tuple[str, str], float] = {}    # last window start with traffic

    # -- feeding ---------------------------------------------------------------------------

    def agent(self, agent_id: str, site: str) -> AgentInfo:
        key = (agent_id, site)
        info = self.agents.get(key)
        if info is None:
            info = self.agents[key] = AgentInfo(agent_id, site)
        return info

    def summary(self, doc: dict[str, Any]) -> None:
        """One summary's claims (``agent_id``, ``site`` and the window body)."""
        agent_id, site = str(doc.get("agent_id") or "agent"), str(doc.get("site") or "default")
        info = self.agent(agent_id, site)
        win = doc.get("window") or {}
        start, end = _num(win.get("start")), _num(win.get("end"))
        if start is None:
            return
        end = end if end is not None else start
        info.summaries += 1
        if doc.get("agent_version"):
            info.versions.add(str(doc["agent_version"]))
        info.first_ts = start if info.first_ts is None else min(info.first_ts, start)
        info.last_ts = end if info.last_ts is None else max(info.last_ts, end)
        seq = doc.get("seq")
        if isinstance(seq, int) and (info.last_seq is None or seq > info.last_seq):
            info.last_seq = seq
            info.health = doc.get("health") or {}
            info.detection = doc.get("detection") or {}
        info.dropped_seqs += len(doc.get("dropped_seqs") or ())
        info.flows_omitted += int(doc.get("flows_omitted") or 0)
        if seq is None:
            info.health = doc.get("health") or info.health
            info.detection = doc.get("detection") or info.detection
        self.first_window[site] = min(self.first_window.get(site, start), start)

        w = self.windows.get(start)
        if w is None:
            w = self.windows[start] = Window(start, end)
        w.end = max(w.end, end)
        for proto, p in (doc.get("protocols") or {}).items():
            w.packets[proto] += int(p.get("packets") or 0)
            w.messages[proto] += int(p.get("messages") or 0)
        w.total_packets += int((doc.get("health") or {}).get("packets") or 0)
        w.anomalies += sum(int(v) for v in (doc.get("anomalies") or {}).values())
        model = (doc.get("detection") or {}).get("model")
        if isinstance(model, dict) and _num(model.get("threshold")) is not None:
            w.threshold = max(w.threshold or 0.0, _num(model["threshold"]))

        for flow in doc.get("flows") or ():
            self._flow(site, flow, start, end)
        for change in doc.get("assets") or ():
            asset = change.get("asset") if isinstance(change, dict) else None
            if isinstance(asset, dict) and asset.get("key"):
                self.asset(site, agent_id, asset)
        for f in doc.get("findings") or ():
            if isinstance(f, dict):
                self.finding(site, agent_id, f, start)
        for s in _window_scores(doc):
            self.scores.append((start, *s))

    def _flow(self, site: str, flow: dict[str, Any], start: float, end: float) -> None:
        proto = str(flow.get("proto") or "unknown")
        client, server = flow.get("src_ip"), flow.get("dest_ip")
        if not client or not server:
            return
        key = (site, str(client), str(server), proto)
        for address in key[1:3]:
            if self.active_until.get((site, address), 0.0) < start:
                self.active_until[(site, address)] = start
        e = self.edges.get(key)
        if e is None:
            e = self.edges[key] = Edge(site, str(client), str(server), proto,
                                       str(flow.get("transport") or ""))
        e.packets += int(flow.get("packets") or 0)
        e.bytes += int(flow.get("bytes") or 0)
        msgs = int(flow.get("messages") or 0)
        e.messages += msgs
        e.anomalies += int(flow.get("anomalies") or 0)
        e.windows += 1
        if isinstance(flow.get("dest_port"), int):
            e.ports.add(flow["dest_port"])
        if self.flow_edges is not None and isinstance(flow.get("flow_id"), int):
            self.flow_edges[flow["flow_id"]] = key
        e.first_ts = start if e.first_ts is None else min(e.first_ts, start)
        e.last_ts = end if e.last_ts is None else max(e.last_ts, end)
        counted = flow.get("families")
        if isinstance(counted, dict):           # exact per-family counts, when a summary has them
            for fam, n in counted.items():
                e.families[str(fam)] += int(n)
            return
        for entry in flow.get("history") or ():
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                continue
            kind, n = str(entry[0]), int(entry[1])
            if kind == TRUNCATED:
                e.unclassified += n
                continue
            e.families[self.family(proto, kind)] += n
            e.kinds[kind] += n

    def track_flows(self) -> None:
        """Remember which conversation each flow id belongs to (for :meth:`exact_functions`)."""
        self.flow_edges = {}

    def exact_functions(self, counts: dict[int, tuple[Counter[str], Counter[str]]]) -> None:
        """Per-flow family and kind counts of every message (a capture replayed here), which
        replace the summaries' histories: those keep only the first runs of each window."""
        self.exact = counts

    def asset(self, site: str, agent_id: str, asset: dict[str, Any]) -> None:
        key = (site, str(asset["key"]))
        self.asset_agents[key].add(agent_id)
        old = self.assets.get(key)
        if old is None:
            self.assets[key] = dict(asset)
            return
        newer, older = (asset, old) if (asset.get("last_seen") or 0) >= (old.get("last_seen") or 0) \
            else (old, asset)
        merged = {**older, **{k: v for k, v in newer.items() if v not in (None, "", [], {})}}
        merged["roles"] = sorted(set(old.get("roles") or ()) | set(asset.get("roles") or ()))
        merged["services"] = sorted(set(old.get("services") or ()) | set(asset.get("services") or ()))
        merged["identity"] = {**(older.get("identity") or {}), **(newer.get("identity") or {})}
        firsts = [v for v in (old.get("first_seen"), asset.get("first_seen")) if v]
        merged["first_seen"] = min(firsts) if firsts else None
        merged["last_seen"] = max(old.get("last_seen") or 0, asset.get("last_seen") or 0)
        self.assets[key] = merged

    def alert(self, doc: dict[str, Any]) -> None:
        agent_id, site = str(doc.get("agent_id") or "agent"), str(doc.get("site") or "default")
        self.agent(agent_id, site).alerts += 1
        f = doc.get("finding")
        if isinstance(f, dict):
            self.finding(site, agent_id, f, _num(f.get("first_ts")) or _num(doc.get("ts")) or 0.0)

    def finding(self, site: str, agent_id: str, f: dict[str, Any], window: float) -> None:
        """A finding of a summary (or of an alert whose summary this source lacks)."""
        first = _num(f.get("first_ts")) or window
        ident = (site, agent_id, f.get("rule"), f.get("src_ip"), f.get("dest_ip"),
                 f.get("proto"), f.get("detail"), first)
        if ident in self.seen_findings:       # an alert repeats its summary's finding
            return
        self.seen_findings.add(ident)
        sev = f.get("severity") if f.get("severity") in RANK else "low"
        score, threshold = _num(f.get("score")), _num(f.get("threshold"))
        rule = str(f.get("rule") or "finding")
        self.occurrences.append(Occurrence(first, sev, rule, score, threshold))
        if rule == "new_device" and f.get("src_ip"):
            self.new_device_findings.add((site, str(f["src_ip"])))
        # A model finding's detail carries its score, so it folds by rule and endpoints only.
        detail = str(f.get("detail") or "")
        key = (site, agent_id, rule, f.get("src_ip"), f.get("dest_ip"), f.get("proto"),
               None if score is not None else detail)
        count = int(f.get("count") or 1)
        last = _num(f.get("last_ts")) or first
        row = self.rows.get(key)
        if row is None:
            self.rows[key] = FindingRow(
                site, agent_id, rule, str(f.get("title") or rule), sev,
                f.get("attack_technique") or f.get("technique"), str(f.get("reason") or ""),
                detail, f.get("src_ip"), f.get("dest_ip"), f.get("proto"), first, last, count, 1,
                list(f.get("messages") or ())[:3], f.get("explanation"), score, threshold)
            return
        row.first_ts, row.last_ts = min(row.first_ts, first), max(row.last_ts, last)
        row.count += count
        row.windows += 1
        if RANK[sev] > RANK[row.severity]:
            row.severity = sev
        if len(row.messages) < 3:
            row.messages += list(f.get("messages") or ())[:3 - len(row.messages)]
        if score is not None and (row.score is None or score > row.score):
            row.score, row.threshold, row.explanation, row.detail = (
                score, threshold, f.get("explanation"), detail)

    def set_baseline(self, site: str, devices: Iterable[str]) -> None:
        self.baseline[site] = frozenset(devices)

    # -- the plant -------------------------------------------------------------------------

    def build(self, title: str) -> Plant:
        edges = list(self.edges.values())
        if self.exact is not None and self.flow_edges is not None:
            for e in edges:
                e.families, e.kinds, e.unclassified = Counter(), Counter(), 0
            for flow_id, (fams, kinds) in self.exact.items():
                key = self.flow_edges.get(flow_id)
                if key is not None:
                    self.edges[key].families.update(fams)
                    self.edges[key].kinds.update(kinds)
        self._families_from_findings()
        for e in edges:
            e.kinds = Counter(dict(e.kinds.most_common(MAX_EDGE_KINDS)))
        nodes = self._nodes(edges)
        rows = sorted(self.rows.values(), key=lambda r: (-RANK[r.severity], r.first_ts))
        shown = rows[:MAX_FINDING_ROWS]
        windows = [self.windows[k] for k in sorted(self.windows)]
        sites = sorted({s for s, _ in nodes} | {a.site for a in self.agents.values()})
        return Plant(title, self.source, self.kind, self.signed, self.agents, nodes, edges,
                     windows, sorted(self.occurrences, key=lambda o: o.ts), shown, len(rows),
                     len(rows) - len(shown), sorted(self.scores), self.verifications, self.notes,
                     self.exact is not None, sites, Counter(r.severity for r in rows))

    def _families_from_findings(self) -> None:
        """A stop, restart or write a rule saw is on the map even when the conversation's
        history (the first runs of each window only) did not keep it."""
        pairs: dict[tuple[str, str, str], list[Edge]] = defaultdict(list)
        for e in self.edges.values():
            pairs[(e.site, e.client, e.server)].append(e)
        for row in self.rows.values():
            fam = RULE_FAMILIES.get(row.rule)
            if fam is None or not row.src or not row.dst:
                continue
            found = pairs.get((row.site, row.src, row.dst), [])
            match = [e for e in found if e.proto == row.proto] or found[:1]
            for e in match:
                if e.families[fam] < row.count:
                    e.families[fam] = row.count

    def _nodes(self, edges: list[Edge]) -> dict[tuple[str, str], Node]:
        nodes: dict[tuple[str, str], Node] = {}
        by_address: dict[tuple[str, str], Node] = {}
        for (site, key), asset in self.assets.items():
            address = asset.get("ip") or asset.get("mac") or key.split(":", 1)[-1]
            # A stored inventory is written when a device changes, not each time it is seen:
            # the summaries' flows say when it was last active.
            active = self.active_until.get((site, str(address)))
            if active is not None and active > (_num(asset.get("last_seen")) or 0.0):
                asset = {**asset, "last_seen": active}
            node = Node(site, key, str(address), asset, agents=self.asset_agents[(site, key)])
            nodes[(site, key)] = node
            by_address[(site, node.address)] = node
        for e in edges:
            if not e.ot:
                continue
            for address in (e.client, e.server):
                if (e.site, address) not in by_address and is_device(address):
                    kind = "mac" if ":" in address and "." not in address and \
                        address.count(":") == 5 else "ip"
                    key = f"{kind}:{address}"
                    node = Node(e.site, key, address, {"key": key, kind: address, "roles": []},
                                in_inventory=False)
                    nodes[(e.site, key)] = node
                    by_address[(e.site, address)] = node
        acts: dict[tuple[str, str], set[str]] = defaultdict(set)
        for e in edges:
            if not e.ot:
                continue
            fams = set(e.families)
            acts[(e.site, e.client)].add("client")
            acts[(e.site, e.server)].add("server")
            if fams & WRITE_FAMILIES:
                acts[(e.site, e.client)].add("write")
            if fams & ENGINEERING_FAMILIES:
                acts[(e.site, e.client)].add("engineering")
        for row in self.rows.values():
            if row.src and row.rule in ENGINEERING_RULES:
                acts[(row.site, row.src)].add("engineering")
            if row.src and row.rule in WRITE_RULES:
                acts[(row.site, row.src)].add("write")
        for node in nodes.values():
            did = acts.get((node.site, node.address), set())
            roles = [str(r) for r in node.asset.get("roles") or ()]
            serves = "server" in did or any(r.endswith((":server", ":publisher")) for r in roles)
            asks = "client" in did or any(r.endswith(":client") for r in roles)
            node.programmer = "engineering" in did
            node.writer = "write" in did
            node.tier = ("engineering" if node.programmer else "controller" if serves
                         else "client" if asks else "other")
            node.vulnerable = bool(vulnerabilities(node.asset)) or "vuln" in str(
                firmware_status(node.asset) or "").lower()
            node.new = self._is_new(node)
        return nodes

    def _is_new(self, node: Node) -> bool:
        """Unknown to the site baseline, named by a new-device finding, or (with no baseline)
        first seen after the first window the source holds."""
        if (node.site, node.address) in self.new_device_findings:
            return True
        base = self.baseline.get(node.site)
        if base is not None:
            return node.address not in base
        first = _num(node.asset.get("first_seen"))
        start = self.first_window.get(node.site)
        if first is None or start is None:
            return False
        length = min((w.end - w.start for w in self.windows.values() if w.end > w.start),
                     default=60.0)
        return first >= start + 2 * length


def vulnerabilities(asset: dict[str, Any]) -> list[Any]:
    """Advisories matched to a device (firmware profiles), wherever the record keeps them."""
    for holder in (asset, asset.get("identity") or {}, asset.get("firmware") or {}):
        if isinstance(holder, dict) and holder.get("vulnerabilities"):
            v = holder["vulnerabilities"]
            return list(v) if isinstance(v, (list, tuple)) else [v]
    return []


def firmware_status(asset: dict[str, Any]) -> Any:
    for holder in (asset, asset.get("identity") or {}, asset.get("firmware") or {}):
        if isinstance(holder, dict) and holder.get("firmware_status") not in (None, ""):
            return holder["firmware_status"]
    return None


def _window_scores(doc: dict[str, Any]) -> list[tuple[float, float]]:
    """Window-level model scores, when a summary carries them: ``scores`` (or
    ``detection.scores``) as a list of ``{"score", "threshold"}``; the highest is kept."""
    raw = doc.get("scores")
    if raw is None:
        raw = (doc.get("detection") or {}).get("scores")
    best: tuple[float, float] | None = None
    for s in raw if isinstance(raw, list) else ():
        if not isinstance(s, dict):
            continue
        score, threshold = _num(s.get("score")), _num(s.get("threshold"))
        if score is not None and threshold is not None and (best is None or score > best[0]):
            best = (score, threshold)
    return [best] if best else []


def severity_order() -> tuple[str, ...]:
    return tuple(reversed(SEVERITIES))
