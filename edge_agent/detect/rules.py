"""The rule engine: decoded traffic and model scores in, findings out.

Rules are data (``rules.toml``); this module only knows the handful of *kinds* of check a rule
can ask for. Per message the engine does a dictionary lookup or two (message rules are indexed
by protocol, family and kind); baseline rules run only when a site baseline exists; window
rules (error storms, rate spikes, the model) run once per window.

Replay detection remembers, per channel, fingerprints of the write requests it saw (decoded
fields, the transaction id among them) and across windows, since a replay re-sends what was
sniffed earlier; its tables are bounded and forget the oldest first.

Repeats fold: a finding is keyed by rule, endpoints and detail, and a repeat within the window
only raises its count, so one finding is reported (and alerted) once per window with a count.
"""
from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Iterable

from edge_agent.detect.profiles import Baseline
from edge_agent.events import to_record
from edge_agent.features.extract import FAMILIES, ChannelVector, address_of, base_kind, unit_of
from edge_agent.flows.table import Flow, MessageEvent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SEVERITIES = ("low", "medium", "high", "critical")
RANK = {s: i for i, s in enumerate(SEVERITIES)}
WHEN = ("message", "first_write", "new_function", "address", "new_talker", "new_device",
        "scan", "error_storm", "anomalies", "rate_spike", "model", "profile", "replay")
# Rules whose severity the finding itself sets (from CVSS, or a downgrade) unless retuned.
OWN_SEVERITY = frozenset({"vulnerable_firmware", "firmware_changed"})
BASELINE_RULES = frozenset({"first_write", "new_function", "address", "new_talker", "new_device"})
RULE_META = frozenset({"id", "title", "when", "severity", "technique", "reason", "protocols",
                       "families", "skip_families", "kinds", "fields", "prefixes", "exclude",
                       "ids"})
MAX_MESSAGES = 3          # messages kept as evidence per finding
MAX_PER_SOURCE = 4096     # servers/ports remembered per source per window for scan detection
MAX_PRINTS = 1024         # request fingerprints remembered (all channels) to recognise replays
ID_SPAN = 32768           # requests on a channel after which a 16-bit id may have come round


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    when: str
    severity: str
    technique: str
    reason: str
    protocols: frozenset[str] = frozenset()
    families: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    fields: tuple[tuple[str, frozenset], ...] = ()
    prefixes: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    params: dict[str, float] = field(default_factory=dict)
    skip_families: frozenset[str] = frozenset()
    ids: tuple[tuple[str, str], ...] = ()      # replay: (protocol, its request id field)

    def covers(self, family: str) -> bool:
        """Whether the rule's families (none listed: all) take in this one."""
        return (not self.families or family in self.families) and family not in self.skip_families


def load_rules(disabled: Iterable[str] = (), severity: dict[str, str] | None = None,
               params: dict[str, float] | None = None) -> list[Rule]:
    """The shipped rules with the configuration's noise controls applied."""
    text = resources.files("edge_agent.detect").joinpath("rules.toml").read_text("utf-8")
    rules = []
    for raw in tomllib.loads(text)["rule"]:
        if raw["when"] not in WHEN or raw["severity"] not in SEVERITIES:
            raise ValueError(f"rules.toml: rule {raw['id']}: bad when or severity")
        ids = raw.get("ids", {})
        if raw["when"] == "replay" and not set(raw.get("protocols", ())) <= set(ids):
            raise ValueError(f"rules.toml: rule {raw['id']}: every protocol needs its id field")
        rules.append(Rule(
            raw["id"], raw["title"], raw["when"], raw["severity"], raw["technique"],
            raw["reason"], frozenset(raw.get("protocols", ())), frozenset(raw.get("families", ())),
            frozenset(raw.get("kinds", ())),
            tuple((k, frozenset(v if isinstance(v, list) else [v]))
                  for k, v in raw.get("fields", {}).items()),
            tuple(raw.get("prefixes", ())), tuple(raw.get("exclude", ())),
            {k: float(v) for k, v in raw.items() if k not in RULE_META},
            frozenset(raw.get("skip_families", ())), tuple(sorted(ids.items()))))
    known = {r.id for r in rules}
    for name in [*disabled, *(severity or {}), *(k.split(".")[0] for k in (params or {}))]:
        if name not in known:
            raise KeyError(name)
    out = []
    for r in rules:
        if r.id in set(disabled):
            continue
        tuned = {k.split(".", 1)[1]: float(v) for k, v in (params or {}).items()
                 if k.split(".")[0] == r.id}
        out.append(replace(r, severity=(severity or {}).get(r.id, r.severity),
                           params={**r.params, **tuned}))
    return out


@dataclass
class Finding:
    rule: str
    title: str
    severity: str
    technique: str
    reason: str
    detail: str
    first_ts: float
    last_ts: float
    count: int = 1
    src_ip: str | None = None
    dest_ip: str | None = None
    proto: str | None = None
    flow_ids: list[int] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    explanation: list[dict[str, Any]] | None = None     # model findings: top features
    score: float | None = None
    threshold: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if v is not None}
        d["attack_technique"] = d.pop("technique")
        return d


class Detector:
    """Findings from messages, new flows and windows (a stage: values in, values out)."""

    def __init__(self, rules: list[Rule], families: dict[tuple[str, str], str],
                 baseline: Baseline | None = None, max_findings: int = 1000,
                 max_known: int = 4096) -> None:
        self.families = families
        self.max_findings = max_findings
        self.set_rules(rules)
        self.findings: dict[tuple, Finding] = {}
        self.suppressed = 0
        self.retuned: frozenset[str] = frozenset()
        # A poller reaching its usual twenty PLCs (or unit ids behind a gateway) is no scan:
        # only peers new to a client count, known from the baseline or earlier windows.
        self.known_servers: OrderedDict[str, set[str]] = OrderedDict()
        self.known_units: OrderedDict[tuple[str, str], set[int]] = OrderedDict()
        self.max_known = max_known      # clients (and pairs) remembered: limits.max_assets
        # Replays: (channel, request fingerprint) -> (flow id, first request id of that flow,
        # channel request count), MAX_PRINTS of them; flow id -> [first request id, requests
        # re-sent] and channel -> requests seen, max_known of each. Kept across windows,
        # oldest forgotten first.
        self.prints: OrderedDict[tuple, tuple[int, int, int]] = OrderedDict()
        self.connections: OrderedDict[int, list[int]] = OrderedDict()
        self.channel_requests: dict[tuple[str, str, str], int] = {}
        self.set_baseline(baseline)
        self.windows_closed = 0
        self._reset_window_state()

    def set_baseline(self, baseline: Baseline | None) -> None:
        """Judge against this baseline from now on (live learning ends, a new one is loaded)."""
        self.baseline = baseline
        self.baseline_pairs = ({(c, s) for c, s, _ in baseline.channels}
                               if baseline is not None else set())

    def set_rules(self, rules: list[Rule]) -> None:
        """Index the rules (again, when the configuration retunes them while running)."""
        self.rules = rules
        self.by_id = {r.id: r for r in rules}
        self.by_family: dict[str, list[Rule]] = {}
        self.by_kind: dict[str, list[Rule]] = {}
        self.kinds: dict[str, list[Rule]] = {w: [] for w in WHEN}
        replay: dict[str, tuple[str, list[Rule]]] = {}
        for r in rules:
            self.kinds[r.when].append(r)
            if r.when == "replay":
                for proto, id_field in r.ids:
                    if proto in r.protocols:
                        replay.setdefault(proto, (id_field, []))[1].append(r)
            if r.when == "message":
                for fam in r.families:
                    self.by_family.setdefault(fam, []).append(r)
                for kind in r.kinds:
                    self.by_kind.setdefault(kind, []).append(r)
        # proto -> (its id field, its replay rules, the families they look at)
        self.replay_ids: dict[str, tuple[str, list[Rule], frozenset[str]]] = {
            proto: (id_field, rs, frozenset(f for f in (*FAMILIES, "other")
                                            if any(r.covers(f) for r in rs)))
            for proto, (id_field, rs) in replay.items()}

    def _reset_window_state(self) -> None:
        self.checked_flows: set[int] = set()
        self.src_servers: dict[str, set[str]] = {}
        self.src_ports: dict[tuple[str, str], set[int]] = {}
        self.units: dict[tuple[str, str], set[int]] = {}
        self.anomaly_counts: dict[tuple[str, int], int] = {}
        self.scan_reported: set[tuple[str, str]] = set()

    # -- findings ----------------------------------------------------------------------------

    def _find(self, rule: Rule, detail: str, ts: float, flow: Flow | None = None,
              ev: MessageEvent | None = None, src: str | None = None, dst: str | None = None,
              proto: str | None = None, flow_ids: list[int] | None = None,
              **extra: Any) -> Finding | None:
        """Record a finding; return it only when it is new in this window (to alert on)."""
        if flow is not None:
            src, dst = src or flow.client_ip, dst or flow.server_ip
            proto = proto or (ev.message.proto if ev else flow.proto)
        key = (rule.id, src, dst, proto, detail)
        f = self.findings.get(key)
        if f is not None:
            f.count += 1
            f.last_ts = max(f.last_ts, ts)
            if ev is not None and len(f.messages) < MAX_MESSAGES:
                f.messages.append(to_record(ev))
            return None
        if len(self.findings) >= self.max_findings:
            self.suppressed += 1
            return None
        if flow_ids is None:
            flow_ids = [flow.flow_id] if flow is not None else []
        f = Finding(rule.id, rule.title, rule.severity, rule.technique, rule.reason, detail, ts,
                    ts, 1, src, dst, proto, flow_ids, [to_record(ev)] if ev is not None else [],
                    **extra)
        self.findings[key] = f
        return f

    def add_external(self, f: Finding) -> Finding | None:
        """A finding made elsewhere (firmware profiles) under one of these rules: dropped when
        the rule is disabled, folded like the others; returned when new in this window."""
        rule = self.by_id.get(f.rule)
        if rule is None:
            return None
        if f.rule not in OWN_SEVERITY or f.rule in self.retuned:
            f.severity = rule.severity
        key = (f.rule, f.src_ip, f.dest_ip, f.proto, f.detail)
        old = self.findings.get(key)
        if old is not None:
            old.count += f.count
            old.last_ts = max(old.last_ts, f.last_ts)
            return None
        if len(self.findings) >= self.max_findings:
            self.suppressed += 1
            return None
        self.findings[key] = f
        return f

    def close_window(self) -> list[Finding]:
        """Every finding of the window (folded), most severe first; the window restarts."""
        out = sorted(self.findings.values(), key=lambda f: (-RANK[f.severity], f.first_ts))
        self.findings = {}
        _remember(self.known_servers, self.src_servers, self.max_known)
        _remember(self.known_units, self.units, self.max_known)
        self.windows_closed += 1
        self._reset_window_state()
        return out

    def _warming_up(self) -> bool:
        """The first window without a baseline: every peer is new, nothing can be told yet."""
        return self.baseline is None and self.windows_closed == 0

    # -- per message -------------------------------------------------------------------------

    def on_message(self, ev: MessageEvent) -> list[Finding]:
        msg = ev.message
        new: list[Finding] = []
        if msg.anomalies and self.kinds["anomalies"]:
            self._anomalies(ev, new)
        kind = msg.kind
        if not kind or msg.is_request is False:
            return new
        proto = msg.proto
        base = base_kind(kind)
        family = self.families.get((proto, base), "other")
        for rule in (*self.by_family.get(family, ()), *self.by_kind.get(base, ())):
            if rule.protocols and proto not in rule.protocols:
                continue
            if rule.fields and not all(msg.fields.get(k) in vals for k, vals in rule.fields):
                continue
            # One program transfer is several messages: fold them by family, not by function.
            what = family if family.startswith("program") and family in rule.families else base
            f = self._find(rule, f"{proto} {what}", ev.ts, ev.flow, ev)
            if f is not None:
                new.append(f)
        if proto in self.replay_ids:
            self._replay(ev, proto, family, new)
        unit = unit_of(msg.fields)
        if unit is not None and self.kinds["scan"]:
            self._unit_scan(ev, unit, new)
        if self.baseline is not None:
            self._baseline_checks(ev, proto, base, family, new)
        return new

    def _anomalies(self, ev: MessageEvent, new: list[Finding]) -> None:
        for rule in self.kinds["anomalies"]:
            hits = sum(1 for a in ev.message.anomalies
                       if a.startswith(rule.prefixes) and not a.startswith(rule.exclude or ("\0",)))
            if not hits:
                continue
            key = (rule.id, ev.flow.flow_id)
            count = self.anomaly_counts.get(key, 0) + hits
            self.anomaly_counts[key] = count
            if count >= rule.params.get("threshold", 1):
                names = ", ".join(sorted(set(ev.message.anomalies)))
                f = self._find(rule, names if rule.params.get("threshold", 1) <= 1
                               else f"{ev.message.proto} anomalies", ev.ts, ev.flow, ev)
                if f is not None:
                    f.count = count
                    new.append(f)

    def _replay(self, ev: MessageEvent, proto: str, family: str, new: list[Finding]) -> None:
        """A request seen before, same id and same content, on another connection of the
        channel. A client numbers its requests as it goes, so that is a copy being re-sent.

        The same connection never counts (a TCP retransmission, a client's own retry), nor a
        connection that began with the same id as the original's: a client that numbers every
        connection from 0 or 1 repeats itself legitimately. A remembered request is dropped
        once the channel has carried ``ID_SPAN`` requests since, as a 16-bit id may come round.
        """
        id_field, rules, families = self.replay_ids[proto]
        flow, fields = ev.flow, ev.message.fields
        rid = fields.get(id_field)
        if rid is None:
            return
        channel = (flow.client_ip, flow.server_ip, proto)
        counts = self.channel_requests
        n = counts[channel] = counts.get(channel, 0) + 1
        if n == 1 and len(counts) > self.max_known:
            del counts[next(iter(counts))]          # (a channel forgotten, its prints expire)
        conn = self.connections.get(flow.flow_id)
        if conn is None:
            conn = self.connections[flow.flow_id] = [rid, 0]
            if len(self.connections) > self.max_known:
                self.connections.popitem(last=False)
        if family not in families:
            return
        key = (channel, hash(repr(fields)))           # the fields hold the id
        old = self.prints.get(key)
        resent = (old is not None and old[0] != flow.flow_id and old[1] != conn[0]
                  and 0 < n - old[2] < ID_SPAN)
        if not resent:
            self.prints.pop(key, None)
            self.prints[key] = (flow.flow_id, conn[0], n)
            if len(self.prints) > MAX_PRINTS:
                self.prints.popitem(last=False)
            return
        conn[1] += 1
        for rule in rules:
            if not rule.covers(family):
                continue
            threshold = int(rule.params.get("threshold", 2))
            if conn[1] >= threshold:
                f = self._find(rule, f"{proto} {family} requests of an earlier connection "
                               f"re-sent (same {id_field})", ev.ts, flow, ev)
                if f is not None:
                    f.count = conn[1] if conn[1] == threshold else 1
                    new.append(f)

    def _unit_scan(self, ev: MessageEvent, unit: int, new: list[Finding]) -> None:
        flow = ev.flow
        pair = (flow.client_ip, flow.server_ip)
        units = self.units.setdefault(pair, set())
        if len(units) >= MAX_PER_SOURCE or unit in units:
            return
        units.add(unit)
        if unit in self.known_units.get(pair, ()) or self._warming_up():
            return
        units_new = units - self.known_units.get(pair, set())
        for rule in self.kinds["scan"]:
            if len(units_new) == int(rule.params.get("units", 16)):
                f = self._find(rule, f"{len(units_new)} new unit ids on {flow.server_ip}",
                               ev.ts, flow, ev)
                if f is not None:
                    new.append(f)

    def _baseline_checks(self, ev: MessageEvent, proto: str, base: str, family: str,
                         new: list[Finding]) -> None:
        flow = ev.flow
        key = (flow.client_ip, flow.server_ip, proto)
        known = self.baseline.channels.get(key)
        if flow.flow_id not in self.checked_flows:
            self.checked_flows.add(flow.flow_id)
            if known is None:
                for rule in self.kinds["new_talker"]:
                    f = self._find(rule, f"{proto} client {flow.client_ip}", ev.ts, flow, ev)
                    if f is not None:
                        new.append(f)
        if family == "write" and (known is None or "write" not in known["families"]):
            for rule in self.kinds["first_write"]:
                f = self._find(rule, f"{proto} {base}", ev.ts, flow, ev)
                if f is not None:
                    new.append(f)
        if known is None:
            return
        if base not in known["funcs"]:
            for rule in self.kinds["new_function"]:
                if not rule.covers(family):
                    continue
                f = self._find(rule, f"{proto} {base}", ev.ts, flow, ev)
                if f is not None:
                    new.append(f)
        addr = address_of(ev.message.fields)
        rng = known["ranges"].get(family)
        if addr is not None and rng is not None and not rng[0] <= addr <= rng[1]:
            for rule in self.kinds["address"]:
                if not rule.covers(family):
                    continue
                f = self._find(rule, f"{proto} {family} address {addr} outside {rng[0]}..{rng[1]}",
                               ev.ts, flow, ev)
                if f is not None:
                    new.append(f)

    # -- per flow ----------------------------------------------------------------------------

    def on_flow(self, flow: Flow, now: float) -> list[Finding]:
        """A new flow: scans and, with a baseline, devices nobody has seen."""
        new: list[Finding] = []
        if flow.transport == "ether":
            return new
        client, server = flow.client_ip, flow.server_ip
        if self.kinds["scan"]:
            servers = self.src_servers.setdefault(client, set())
            ports = self.src_ports.setdefault((client, server), set())
            if len(servers) < MAX_PER_SOURCE:
                servers.add(server)
            if len(ports) < MAX_PER_SOURCE:
                ports.add(flow.sport)
            known = self.known_servers.get(client, set())
            new_servers = 0 if self._warming_up() else sum(
                1 for s in servers if s not in known and (client, s) not in self.baseline_pairs)
            for rule in self.kinds["scan"]:
                for what, n in (("servers", new_servers), ("ports", len(ports))):
                    limit = int(rule.params.get(what, 10))
                    if n >= limit and (client, what) not in self.scan_reported:
                        self.scan_reported.add((client, what))
                        detail = (f"{n} devices new to it reached" if what == "servers"
                                  else f"{n} ports of {server} probed")
                        f = self._find(rule, detail, now, flow, src=client, dst=None
                                       if what == "servers" else server, proto=flow.transport)
                        if f is not None:
                            new.append(f)
        if self.baseline is not None:
            for ip in (client, server):
                if ip not in self.baseline.assets:
                    for rule in self.kinds["new_device"]:
                        f = self._find(rule, f"device {ip}", now, src=ip, proto=flow.proto,
                                       flow_ids=[flow.flow_id])
                        if f is not None:
                            new.append(f)
        return new

    # -- per window --------------------------------------------------------------------------

    def on_window(self, vectors: list[ChannelVector], scores: list[Any] | None,
                  now: float, calibrated: bool = True) -> list[Finding]:
        """Window rules over the channel vectors, and the model's verdicts. A model not yet
        calibrated to the site (its prebuilt scaler and threshold come from other plants: a
        SCADA polling a hundred PLCs is far outside them) only reports, at low severity."""
        new: list[Finding] = []
        for i, v in enumerate(vectors):
            client, server, proto = v.key
            for rule in self.kinds["error_storm"]:
                if (v.errors >= rule.params.get("threshold", 20) and v.replies
                        and v.errors / v.replies >= rule.params.get("ratio", 0.5)):
                    f = self._find(rule, f"{v.errors} of {v.replies} replies are errors", now,
                                   src=client, dst=server, proto=proto, flow_ids=list(v.flow_ids))
                    if f is not None:
                        new.append(f)
            for rule in self.kinds["rate_spike"]:
                if (v.mean_rate is not None and v.history >= rule.params.get("min_history", 3)
                        and v.messages >= rule.params.get("min_messages", 200)
                        and v.rate > rule.params.get("factor", 10.0) * max(v.mean_rate, 1.0)):
                    f = self._find(rule, f"{v.rate:.0f} messages/min against {v.mean_rate:.0f} usual",
                                   now, src=client, dst=server, proto=proto,
                                   flow_ids=list(v.flow_ids))
                    if f is not None:
                        new.append(f)
            if scores is not None and scores[i].anomalous:
                s = scores[i]
                for rule in self.kinds["model"]:
                    top = ", ".join(e["feature"] for e in s.explanation)
                    sev = ("low" if not calibrated else
                           "high" if s.score > 3 * s.threshold else rule.severity)
                    f = self._find(replace(rule, severity=sev), f"score {s.score:.3g} > "
                                   f"{s.threshold:.3g}; top features: {top}", now, src=client,
                                   dst=server, proto=proto, flow_ids=list(v.flow_ids),
                                   explanation=s.explanation, score=s.score,
                                   threshold=s.threshold)
                    if f is not None:
                        new.append(f)
        return new



def _remember(known: OrderedDict, seen: dict, bound: int) -> None:
    """Fold a window's peers into what is known, least recently active forgotten first."""
    for key, peers in seen.items():
        have = known.get(key)
        if have is None:
            if len(known) >= bound:
                known.popitem(last=False)
            have = known[key] = set()
        else:
            known.move_to_end(key)
        if len(have) < MAX_PER_SOURCE:
            have.update(list(peers)[:MAX_PER_SOURCE - len(have)])
