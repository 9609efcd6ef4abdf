"""Configuration: the sample documents every key, and every error names its key."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from edge_agent.config import SCHEMA, ConfigError, load, sample_text, validate


def test_sample_documents_exactly_the_schema_with_its_defaults() -> None:
    text = sample_text()
    section = None
    seen: dict[str, object] = {}
    for line in text.splitlines():
        if m := re.match(r"^\[(\w+)\]$", line):
            section = m.group(1)
        elif m := re.match(r"^# (\w+) = (.*)$", line):
            seen[f"{section}.{m.group(1)}"] = m.group(2)
    expected = {f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys}
    assert set(seen) == expected
    # Uncommenting every default line gives a file that validates to the embedded defaults.
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)
    path_cfg = validate(__import__("tomllib").loads(uncommented))
    assert path_cfg.data == load().data


@pytest.mark.parametrize("raw,key", [
    ({"limits": {"max_flows": "many"}}, "limits.max_flows"),
    ({"limits": {"max_flows": 3}}, "limits.max_flows"),
    ({"limits": {"max_flow": 100}}, "limits.max_flow"),
    ({"capture": {"promiscuous": "yes"}}, "capture.promiscuous"),
    ({"capture": {"snaplen": True}}, "capture.snaplen"),
    ({"agent": {"log_level": "loud"}}, "agent.log_level"),
    ({"agent": {"id": "gw/1"}}, "agent.id"),
    ({"decode": {"protocols": ["modbus", "nope"]}}, "decode.protocols"),
    ({"spool": {"fsync": 1}}, "spool.fsync"),
    ({"nosuch": {}}, "nosuch"),
    ({"summary": 5}, "summary"),
])
def test_errors_name_the_dotted_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert err.value.key == key and str(err.value).startswith(key + ":")


def test_integers_are_accepted_for_float_keys() -> None:
    assert validate({"summary": {"window_s": 10}})["summary"]["window_s"] == 10.0


def test_run_with_bad_config_exits_2_naming_the_key_before_starting(tmp_path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text("[limits]\nmax_flows = -1\n")
    state = tmp_path / "state"
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--config", str(bad),
                           "--state-dir", str(state), "--pcap", "/nonexistent.pcap"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "limits.max_flows" in proc.stderr and "Traceback" not in proc.stderr
    assert not state.exists()


@pytest.mark.parametrize("content,needle", [
    ("[limits\n", "not valid TOML"),
    (None, "cannot read"),
])
def test_unreadable_or_broken_file_exits_2(tmp_path, content, needle) -> None:
    path = tmp_path / "agent.toml"
    if content is not None:
        path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "config", "--check", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and needle in proc.stderr


def test_config_command_prints_the_sample() -> None:
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "config"], capture_output=True,
                          text=True, check=True)
    assert proc.stdout == sample_text()
