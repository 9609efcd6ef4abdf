"""Configuration: TOML, validated in full before anything starts.

``SCHEMA`` is the single list of keys; ``sample.toml`` documents each of them (a test keeps the
two in step). Every error names the dotted key, so ``edge-agent run --config F`` can say exactly
what to fix and exit 2 before touching the network or the state directory.
"""
from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(Exception):
    """Bad configuration; ``key`` is the dotted name of the offending key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Key:
    kind: type | tuple[type, ...]
    default: Any
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None

    def validate(self, name: str, value: Any) -> Any:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            want = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise ConfigError(name, f"must be {want}, not {_TYPE_NAMES.get(type(value), type(value).__name__)} {value!r}")
        if self.lo is not None and value < self.lo or self.hi is not None and value > self.hi:
            raise ConfigError(name, f"must be between {self.lo:g} and {self.hi:g}, not {value!r}")
        if self.choices and value not in self.choices:
            raise ConfigError(name, f"must be one of {', '.join(self.choices)}, not {value!r}")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ConfigError(name, "must be a list of strings")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ConfigError(name, problem)
        return value


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "a table"}


def _protocols(value: list[str]) -> str | None:
    from edge_agent.decode import discover
    known = set(discover().names())
    unknown = sorted(set(value) - known)
    return f"unknown protocol(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}" if unknown else None


def _agent_id(value: str) -> str | None:
    if value and not all(c.isalnum() or c in "-_." for c in value):
        return "may hold only letters, digits, '-', '_' and '.' (it is part of MQTT topics)"
    return None


def _mqtt_url(value: str) -> str | None:
    if not value:
        return None
    from urllib.parse import urlsplit
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        return "must look like mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
    return None if port is None or 0 < port < 65536 else "port out of range"


def _operator_keys(value: list[str]) -> str | None:
    from edge_agent.summary.sign import load_public_keys
    for i, entry in enumerate(value):
        try:
            load_public_keys(entry)
        except (ValueError, OSError) as exc:
            return f"entry {i + 1}: {exc}"
    return None


def _topic_prefix(value: str) -> str | None:
    if not value or any(c in value for c in "#+\0") or value.startswith("$") or value.endswith("/"):
        return "must be a non-empty MQTT topic without wildcards, a leading '$' or a trailing '/'"
    return None


def _rules_check(**tuning: Any) -> str | None:
    from edge_agent.detect.rules import SEVERITIES, load_rules
    for name, value in tuning.get("severity", {}).items():
        if value not in SEVERITIES:
            return f"{name}: severity must be one of {', '.join(SEVERITIES)}, not {value!r}"
    for name, value in tuning.get("params", {}).items():
        if "." not in name or not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{name}: give \"rule.parameter\" = number"
    try:
        load_rules(**tuning)
    except KeyError as exc:
        return f"unknown rule {exc.args[0]!r} (see edge_agent/detect/rules.toml)"
    return None


MIB = 1024 * 1024
SCHEMA: dict[str, dict[str, Key]] = {
    "agent": {
        "id": Key(str, "", check=_agent_id),
        "site": Key(str, "default", check=_agent_id),
        "state_dir": Key(str, "./edge-agent-state"),
        "log_level": Key(str, "info", choices=("debug", "info", "warning", "error")),
        "status_file": Key(str, ""),
    },
    "capture": {
        "interface": Key(str, ""),
        "bpf_filter": Key(str, ""),
        "snaplen": Key(int, 65_535, 64, 262_144),
        "promiscuous": Key(bool, True),
        "buffer_mib": Key(int, 8, 1, 1024),
    },
    "decode": {
        "protocols": Key(list, [], check=_protocols),
    },
    "limits": {
        "max_flows": Key(int, 10_000, 16, 10_000_000),
        "tcp_idle_timeout_s": Key(float, 300.0, 1, 86_400),
        "udp_idle_timeout_s": Key(float, 120.0, 1, 86_400),
        "max_stream_buffer": Key(int, 131_072, 1024, 16 * MIB),
        "max_ooo_segments": Key(int, 16, 1, 4096),
        "max_pending": Key(int, 64, 1, 65_536),
        "max_history": Key(int, 32, 1, 4096),
        "max_summary_flows": Key(int, 500, 1, 1_000_000),
        "max_assets": Key(int, 4096, 16, 1_000_000),
    },
    "summary": {
        "window_s": Key(float, 60.0, 1, 86_400),
    },
    "mqtt": {
        "url": Key(str, "", check=_mqtt_url),
        "topic_prefix": Key(str, "edge-agent", check=_topic_prefix),
        "protocol": Key(str, "5", choices=("5", "3.1.1")),
        "ca_file": Key(str, ""),
        "cert_file": Key(str, ""),
        "key_file": Key(str, ""),
        "username": Key(str, ""),
        "password_file": Key(str, ""),
        "keepalive_s": Key(int, 30, 5, 3600),
        "reconnect_min_s": Key(float, 1.0, 0.1, 3600),
        "reconnect_max_s": Key(float, 120.0, 1, 86_400),
        "max_inflight": Key(int, 20, 1, 1000),
        "alert_severity": Key(str, "high", choices=("low", "medium", "high", "critical")),
        "require_subscriber": Key(bool, True),
    },
    "detect": {
        "disabled": Key(list, [], check=lambda v: _rules_check(disabled=v)),
        "severity": Key(dict, {}, check=lambda v: _rules_check(severity=v)),
        "params": Key(dict, {}, check=lambda v: _rules_check(params=v)),
        "baseline": Key(str, ""),
        "model": Key(str, ""),
        "max_findings": Key(int, 1000, 10, 1_000_000),
    },
    "learn": {
        "period_s": Key(float, 0.0, 0, 90 * 86_400),
    },
    "fleet": {
        "operator_keys": Key(list, [], check=_operator_keys),
        "clock_skew_s": Key(float, 300.0, 0, 86_400),
        "max_ttl_s": Key(float, 604_800.0, 60, 90 * 86_400),
        "replay_entries": Key(int, 10_000, 100, 10_000_000),
        "enabled": Key(bool, True),
    },
    "service": {
        "memory_max_mib": Key(int, 256, 64, 65_536),
        "cpu_quota_percent": Key(int, 50, 5, 400),
        "watchdog_s": Key(int, 30, 5, 3600),
    },
    "spool": {
        "max_bytes": Key(int, 256 * MIB, MIB, 1 << 40),
        "fsync": Key(str, "window", choices=("window", "off")),
    },
}


class Config:
    """Validated configuration: ``cfg["limits"]["max_flows"]`` or ``cfg.get("limits.max_flows")``."""

    def __init__(self, data: dict[str, dict[str, Any]], path: str | None = None) -> None:
        self.data = data
        self.path = path

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.data[section]

    def get(self, dotted: str) -> Any:
        section, key = dotted.split(".", 1)
        return self.data[section][key]

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """A copy with ``{"section.key": value}`` applied and everything validated again."""
        raw = {s: dict(v) for s, v in self.data.items()}
        for dotted, value in overrides.items():
            section, key = dotted.split(".", 1)
            raw.setdefault(section, {})[key] = value
        return validate(raw, self.path)

    @property
    def agent_id(self) -> str:
        return self.data["agent"]["id"] or socket.gethostname().split(".")[0] or "edge-agent"


def validate(raw: dict[str, Any], path: str | None = None) -> Config:
    data: dict[str, dict[str, Any]] = {}
    for section, value in raw.items():
        if section not in SCHEMA:
            raise ConfigError(section, f"unknown section; known: {', '.join(SCHEMA)}")
        if not isinstance(value, dict):
            raise ConfigError(section, "must be a table")
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        for name in given:
            if name not in keys:
                raise ConfigError(f"{section}.{name}", f"unknown key; known in [{section}]: {', '.join(keys)}")
        data[section] = {name: key.validate(f"{section}.{name}", given[name]) if name in given
                         else _copy(key.default) for name, key in keys.items()}
    return Config(data, path)


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def load(path: str | Path | None = None) -> Config:
    """The embedded defaults, or ``path`` validated over them."""
    if path is None:
        return validate({})
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read {path}: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path} is not valid TOML: {exc}") from None
    return validate(raw, str(path))


def sample_text() -> str:
    return resources.files("edge_agent").joinpath("sample.toml").read_text(encoding="utf-8")
