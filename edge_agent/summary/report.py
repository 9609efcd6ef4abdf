"""What ``edge-agent inspect`` shows: one capture (or several) summed up for a person.

Protocols, talkers, transactions by function and anomalies, as a dict (``--json``) or as
aligned text for a terminal.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from edge_agent.detect.rules import RANK
from edge_agent.flows.table import Flow, MessageEvent

TOP_TALKERS = 20


class CaptureReport:
    """Collects decoded messages (as a pipeline event hook) and the flows they came from."""

    def __init__(self) -> None:
        self.flows: dict[int, Flow] = {}
        self.functions: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
        self.anomalies: Counter[str] = Counter()
        self.first_ts: float | None = None
        self.last_ts: float | None = None

    def __call__(self, ev: MessageEvent) -> None:
        msg = ev.message
        self.flows[ev.flow.flow_id] = ev.flow
        if self.first_ts is None:
            self.first_ts = ev.ts
        self.last_ts = ev.ts
        for name in msg.anomalies:
            self.anomalies[name] += 1
        if msg.kind:
            role = {True: "request", False: "response", None: "message"}[msg.is_request]
            if msg.kind.endswith("_exception"):
                role = "exception"
            self.functions[msg.proto][(msg.kind.removesuffix("_exception"), role)] += 1

    def as_dict(self, summaries: list[dict[str, Any]]) -> dict[str, Any]:
        protocols: dict[str, dict[str, int]] = {}
        health: dict[str, int] = Counter()
        for s in summaries:
            for name, p in s["protocols"].items():
                tot = protocols.setdefault(name, {"packets": 0, "bytes": 0, "messages": 0})
                for k in tot:
                    tot[k] += p[k]
            health["packets"] += s["health"]["packets"]
            health["bytes"] += s["health"]["bytes"]
        talkers = sorted(self.flows.values(), key=lambda f: -f.messages)[:TOP_TALKERS]
        functions = {
            proto: [{"func": func, "requests": c[(func, "request")],
                     "responses": c[(func, "response")], "exceptions": c[(func, "exception")],
                     "other": c[(func, "message")]}
                    for func in sorted({k[0] for k in c})]
            for proto, c in sorted(self.functions.items())}
        findings: dict[tuple, dict[str, Any]] = {}
        for s in summaries:
            for f in s.get("findings", ()):
                key = (f["rule"], f.get("src_ip"), f.get("dest_ip"), f["detail"])
                if key in findings:
                    findings[key]["count"] += f["count"]
                    findings[key]["last_ts"] = f["last_ts"]
                else:
                    findings[key] = dict(f)
        return {
            "findings": sorted(findings.values(), key=lambda f: (-RANK[f["severity"]], f["first_ts"])),
            "detection": summaries[-1].get("detection") if summaries else None,
            "packets": health["packets"], "bytes": health["bytes"],
            "first_ts": summaries[0]["window"]["start"] if summaries else None,
            "windows": len(summaries),
            "protocols": dict(sorted(protocols.items(), key=lambda kv: -kv[1]["packets"])),
            "talkers": [{"client": _end(f, f.client_ip, f.cport), "server": _end(f, f.server_ip, f.sport),
                         "proto": f.proto, "packets": sum(f.pkts), "messages": f.messages}
                        for f in talkers],
            "functions": functions,
            "anomalies": dict(self.anomalies.most_common()),
        }


def _end(flow: Flow, addr: str, port: int) -> str:
    """An endpoint: address and port, or a MAC alone for protocols on Ethernet."""
    return addr if flow.transport == "ether" else f"{addr}:{port}"


def render(rep: dict[str, Any]) -> str:
    lines = [f"{rep['packets']} packets, {rep['bytes']} bytes in {rep['windows']} window(s)", ""]
    lines.append("Protocols")
    lines += _table(["protocol", "packets", "bytes", "messages"],
                    [[n, p["packets"], p["bytes"], p["messages"]] for n, p in rep["protocols"].items()])
    if rep["talkers"]:
        lines += ["", "Talkers (client -> server)"]
        lines += _table(["client", "server", "protocol", "packets", "messages"],
                        [[t["client"], t["server"], t["proto"], t["packets"], t["messages"]]
                         for t in rep["talkers"]])
    for proto, funcs in rep["functions"].items():
        lines += ["", f"Transactions: {proto}"]
        other = any(f["other"] for f in funcs)      # messages with no direction (cyclic I/O)
        lines += _table(["function", "requests", "responses", "exceptions"] + ["other"] * other,
                        [[f["func"], f["requests"], f["responses"], f["exceptions"]]
                         + [f["other"]] * other for f in funcs])
    lines += ["", "Findings" if rep["findings"] else "Findings: none"]
    for f in rep["findings"]:
        where = " -> ".join(x for x in (f.get("src_ip"), f.get("dest_ip")) if x)
        lines.append(f"  {f['severity'].upper():8} {f['title']} [{f['attack_technique']}] "
                     f"{where} x{f['count']}")
        lines.append(f"           {f['detail']}")
        lines.append(f"           why: {f['reason']}")
        for e in (f.get("explanation") or ())[:5]:
            if "feature" in e:          # a model finding: what it did not expect
                lines.append(f"           {e['feature']}: observed {e['observed']:.3g}, "
                             f"expected {e['expected']:.3g}")
            elif "advisory" in e:       # a firmware-profile finding: which advisories
                cves = ", ".join(e.get("cves") or ())
                lines.append(f"           {e['advisory']} (CVSS {e.get('cvss_base')}; {cves})"
                             f"{'; fixed in ' + e['fixed'] if e.get('fixed') else ''}")
    det = rep.get("detection") or {}
    if det and det.get("baseline_rules", "").startswith("off"):
        lines.append(f"  (baseline rules {det['baseline_rules']})")
    lines += ["", "Anomalies" if rep["anomalies"] else "Anomalies: none"]
    if rep["anomalies"]:
        lines += _table(["anomaly", "count"], [[k, v] for k, v in rep["anomalies"].items()])
    return "\n".join(lines) + "\n"


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [head] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    out = []
    for r in cells:
        out.append("  " + "  ".join(c.ljust(w) if i == 0 or not c.isdigit() else c.rjust(w)
                                    for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return out
