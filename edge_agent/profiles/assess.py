"""The profile stage: inventory changes and messages in, findings and asset attributes out.

Sans-I/O like every stage between capture and transport: values in, values out, time passed in.

- :meth:`ProfileAssessor.on_identity` takes an asset (``Asset.as_dict()``) and its changes (the
  ``AssetChange.changes`` of a window) and returns finding dicts: ``vulnerable_firmware`` once
  per asset, profile, firmware and advisory set, and ``firmware_changed`` (a downgrade is high).
- :meth:`ProfileAssessor.on_message` takes one request to a device whose profile is known (keyed
  by the server's IP) and returns an ``unexpected_function`` finding when the profile says the
  device never serves that protocol, or must not be programmed in production.
- :meth:`ProfileAssessor.attributes` is what the asset gets: ``profile``, ``firmware_status``
  and ``vulnerabilities``.

Finding dicts carry exactly the fields of ``edge_agent.detect.rules.Finding``, so
``Finding(**d)`` turns one into a finding the detector folds and alerts like any other.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from edge_agent.profiles import versions
from edge_agent.profiles.match import STATUS_RANK, Match, ProfileSet, expected, serves

# Identity attributes whose change means the device may now match other advisories.
IDENTITY_ATTRS = frozenset({"firmware", "order_number", "product", "product_code", "model",
                            "vendor", "vendor_id", "hardware"})
MAX_ASSETS = 4096       # assets remembered (profile by IP, last report), like limits.max_assets

# MITRE ATT&CK for ICS. A vulnerable firmware is exposure, not an attack seen: the closest
# technique is what the advisories enable. T0866 Exploitation of Remote Services fits them: most
# are flaws in services the device offers on the control network (S7, CIP, PROFINET, web),
# reachable from inside it; T0819 Exploit Public-Facing Application assumes an Internet-facing
# service, which a sensor on a mirror port cannot assert.
TECHNIQUE_VULNERABLE = "T0866"
TECHNIQUE_FIRMWARE = "T0857"          # System Firmware
TECHNIQUE_BY_FAMILY = {
    "program_download": "T0843", "program_upload": "T0845", "firmware": "T0857",
    "stop": "T0858", "start": "T0858", "restart": "T0816", "write": "T0855",
}
TECHNIQUE_UNEXPECTED = "T0855"        # Unauthorized Command Message

RULES: dict[str, dict[str, str]] = {
    "vulnerable_firmware": {
        "title": "Device firmware with known vulnerabilities",
        "technique": TECHNIQUE_VULNERABLE,
        "reason": "The device's identity and firmware match published ICS advisories; an "
                  "attacker on the network can exploit them until the firmware is updated.",
    },
    "firmware_changed": {
        "title": "Device firmware changed",
        "technique": TECHNIQUE_FIRMWARE,
        "reason": "The firmware a device reports changed: an update, or a replaced device or "
                  "firmware; a downgrade can bring back fixed vulnerabilities.",
    },
    "unexpected_function": {
        "title": "Function not expected for this device",
        "technique": TECHNIQUE_UNEXPECTED,
        "reason": "The device profile says this device does not serve this protocol, or is not "
                  "programmed in production.",
    },
}


def severity_of(cvss: float | None) -> str:
    """CVSS v3 base score -> finding severity (>= 9 critical, >= 7 high, >= 4 medium)."""
    if cvss is None:
        return "medium"
    if cvss >= 9.0:
        return "critical"
    if cvss >= 7.0:
        return "high"
    if cvss >= 4.0:
        return "medium"
    return "low"


def _finding(rule: str, severity: str, detail: str, ts: float, src: str | None,
             dst: str | None, proto: str | None, explanation: list[dict[str, Any]] | None = None,
             title: str | None = None) -> dict[str, Any]:
    meta = RULES[rule]
    return {"rule": rule, "title": title or meta["title"], "severity": severity,
            "technique": meta["technique"],
            "reason": meta["reason"], "detail": detail, "first_ts": ts, "last_ts": ts,
            "count": 1, "src_ip": src, "dest_ip": dst, "proto": proto, "flow_ids": [],
            "messages": [], "explanation": explanation}


class ProfileAssessor:
    """Findings and asset attributes from firmware profiles (a stage: values in, values out)."""

    def __init__(self, profiles: ProfileSet, max_assets: int = MAX_ASSETS) -> None:
        self.profiles = profiles
        self.max_assets = max_assets
        self.by_ip: OrderedDict[str, str] = OrderedDict()          # server IP -> profile id
        self.reported: OrderedDict[str, tuple] = OrderedDict()     # asset key -> last report
        self.matches: OrderedDict[str, list[Match]] = OrderedDict()

    def _remember(self, table: OrderedDict, key: str, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.max_assets:
            table.popitem(last=False)

    # -- identities --------------------------------------------------------------------------

    def on_identity(self, asset: dict[str, Any], changes: Any = (),
                    now: float | None = None) -> list[dict[str, Any]]:
        """Findings for a new or changed asset (``AssetChange.asset`` and ``.changes``)."""
        ts = float(now if now is not None else asset.get("last_seen") or 0.0)
        key = asset.get("key") or asset.get("ip") or ""
        ip = asset.get("ip")
        matches = self.profiles.match_asset(asset)
        self._remember(self.matches, key, matches)
        if ip and matches:
            self._remember(self.by_ip, ip, matches[0].profile)
        elif ip and ip in self.by_ip:
            del self.by_ip[ip]
        out: list[dict[str, Any]] = []
        for c in changes or ():
            if c.get("attr") == "firmware" and c.get("old") not in (None, "") and \
                    c.get("new") not in (None, ""):
                out.append(self._firmware_changed(asset, str(c["old"]), str(c["new"]), ts))
        for m in matches:
            if m.status != "vulnerable":
                continue
            vuln = [a for a in m.advisories if a.status == "vulnerable"]
            mark = (m.profile, m.firmware, tuple(sorted({a.id for a in vuln})))
            if self.reported.get(f"{key}|{m.profile}") == mark:
                continue
            self._remember(self.reported, f"{key}|{m.profile}", mark)
            ids = ", ".join(dict.fromkeys(a.id for a in vuln))
            fix = f"; fixed in {m.fixed}" if m.fixed else ""
            detail = (f"{ip or key} {m.family} firmware {m.firmware}: {len(set(a.id for a in vuln))}"
                      f" advisories ({ids}), max CVSS {m.cvss_max if m.cvss_max is not None else '?'}"
                      f"{fix}")
            expl = [{"advisory": a.id, "cves": list(a.cves), "cvss_base": a.cvss_base,
                     "fixed": a.fixed, "remediation": a.remediation, "url": a.url,
                     "profile": m.profile} for a in vuln]
            out.append(_finding("vulnerable_firmware", severity_of(m.cvss_max), detail, ts, None,
                                ip, m.proto, expl))
        return out

    def _firmware_changed(self, asset: dict[str, Any], old: str, new: str,
                          ts: float) -> dict[str, Any]:
        c = versions.compare(new, old)
        if c is None:
            sev, what = "medium", "changed (versions not comparable)"
        elif c < 0:
            sev, what = "high", "DOWNGRADED"
        else:
            sev, what = "medium", "upgraded" if c > 0 else "rewritten"
        ip = asset.get("ip")
        src = (asset.get("learned_from") or {}).get("firmware", "")
        return _finding("firmware_changed", sev, f"{ip or asset.get('key')} firmware {what}: "
                        f"{old} -> {new}", ts, None, ip, src.split(" ", 1)[0] or None,
                        title="Device firmware downgraded" if c is not None and c < 0 else None)

    def attributes(self, asset: dict[str, Any]) -> dict[str, Any]:
        """What the inventory shows for an asset: profile, firmware_status, vulnerabilities."""
        key = asset.get("key") or asset.get("ip") or ""
        matches = self.matches.get(key)
        if matches is None:
            matches = self.profiles.match_asset(asset)
        return attributes_of(matches)

    # -- messages ----------------------------------------------------------------------------

    def on_message(self, server_ip: str, client_ip: str, proto: str, family: str, kind: str,
                   ts: float) -> dict[str, Any] | None:
        """An ``unexpected_function`` finding for one request to a profiled device, or None.

        ``family`` is the function family of the request (detect/functions.toml); call it only
        for requests (``Message.is_request`` true), keyed by the flow's server IP.
        """
        pid = self.by_ip.get(server_ip)
        if pid is None:
            return None
        profile = self.profiles.get(pid)
        if profile is None or expected(profile, proto, family):
            return None
        if not serves(profile, proto):
            detail = f"{proto} to {server_ip}: {profile.family} does not serve {proto}"
            sev = "medium"
        elif family in ("program_download", "firmware"):
            detail = f"{proto} {family} ({kind}) to {server_ip}: programming in production"
            sev = "high"
        else:
            detail = f"{proto} {family} ({kind}) to {server_ip}: not a function {profile.family} " \
                     "uses in production"
            sev = "medium"
        f = _finding("unexpected_function", sev, detail, ts, client_ip, server_ip, proto,
                     [{"profile": pid, "family": family, "kind": kind}])
        f["technique"] = TECHNIQUE_BY_FAMILY.get(family, TECHNIQUE_UNEXPECTED)
        return f


def attributes_of(matches: list[Match]) -> dict[str, Any]:
    if not matches:
        return {"profile": None, "firmware_status": None, "vulnerabilities": []}
    top = max(matches, key=lambda m: (STATUS_RANK[m.status], m.profile == matches[0].profile))
    vulns = [{"advisory": a.id, "status": a.status, "cves": list(a.cves),
              "cvss_base": a.cvss_base, "fixed": a.fixed, "remediation": a.remediation,
              "url": a.url}
             for a in top.advisories if a.status in ("vulnerable", "unknown")]
    return {"profile": top.profile, "firmware_status": top.status, "vulnerabilities": vulns}
