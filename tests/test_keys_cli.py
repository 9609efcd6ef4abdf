"""``edge-agent keys``, ``export`` and ``verify`` as a user runs them."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.summary.sign import DeviceKey, load_public_key, token_hash
from edge_agent.transport.spool import Spool
from tests.summary.test_chain import alert, summary

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True,
                          text=True, env=env, cwd=cwd or ROOT, timeout=60)


def fill_spool(state: Path, summaries: int, start_alerts: int = 0) -> None:
    """Documents signed with the state's device key, as the agent stores them."""
    key = DeviceKey.load(state / "device.key")
    spool = Spool(state / "spool.sqlite")
    for n in range(summaries):
        seq = spool.next_seq()
        token = summary(key, seq, spool.meta("chain_head"), dropped=spool.pending_dropped())
        spool.append("summary", 60.0 * seq, token, seq=seq, meta={"chain_head": token_hash(token)})
        spool.append("alert", 60.0 * seq + 1, alert(key, start_alerts + n))
    spool.close()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    r = run("keys", "init", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    return state


def test_keys_init_then_refuses_to_overwrite(state: Path) -> None:
    path = state / "device.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    r = run("keys", "init", "--state-dir", str(state))
    assert r.returncode == 1 and "already exists" in r.stderr and "Traceback" not in r.stderr
    assert path.read_bytes() == before
    r = run("keys", "init", "--state-dir", str(state), "--force")
    assert r.returncode == 0 and path.read_bytes() != before
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keys_init_takes_state_dir_from_config(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "from-config"}"\n')
    assert run("keys", "init", "--config", str(cfg)).returncode == 0
    assert (tmp_path / "from-config" / "device.key").is_file()


def test_keys_show(state: Path, tmp_path: Path) -> None:
    kid = DeviceKey.load(state / "device.key").kid
    r = run("keys", "show", "--state-dir", str(state), "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["kid"] == kid and shown["keys"][0]["kid"] == kid
    assert load_public_key(r.stdout)[0] == kid
    assert load_public_key(shown["pem"])[0] == kid
    text = run("keys", "show", "--state-dir", str(state)).stdout
    assert f"kid: {kid}" in text and "-----BEGIN PUBLIC KEY-----" in text
    r = run("keys", "show", "--state-dir", str(tmp_path / "empty"))
    assert r.returncode == 1 and "keys init" in r.stderr and "Traceback" not in r.stderr


def test_export_and_verify(state: Path, tmp_path: Path) -> None:
    pub = tmp_path / "enrolled.json"
    pub.write_text(run("keys", "show", "--state-dir", str(state), "--json").stdout)
    fill_spool(state, 3)
    b1 = tmp_path / "b1.jwsl"
    r = run("export", "--state-dir", str(state), "--out", str(b1))
    assert r.returncode == 0 and "exported 6 document(s)" in r.stderr, r.stderr
    r = run("verify", str(b1), "--key", str(pub))
    assert r.returncode == 0 and r.stdout.startswith("INTACT"), r.stdout
    r = run("verify", str(b1))
    assert r.returncode == 0 and "key taken from the bundle itself" in r.stdout
    r = run("export", "--state-dir", str(state), "--out", str(b1))
    assert r.returncode == 0 and "nothing to export" in r.stderr
    fill_spool(state, 2, start_alerts=3)
    r = run("export", "--state-dir", str(state), "--out", str(b1))
    assert r.returncode == 1 and "already exists" in r.stderr
    b2 = tmp_path / "b2.jwsl"
    assert run("export", "--state-dir", str(state), "--out", str(b2)).returncode == 0
    verdict = json.loads(run("verify", str(b2), "--key", str(pub), "--json").stdout)
    assert verdict["ok"] and (verdict["first_seq"], verdict["last_seq"]) == (4, 5)
    # the spool itself, and a plain file of tokens
    r = run("verify", str(state), "--key", str(pub))
    assert r.returncode == 0 and "summaries 1..5" in r.stdout, r.stdout
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text("\n".join(json.dumps({"jws": t}) for t in b1.read_text().split()[1:]))
    assert run("verify", str(tokens), "--key", str(pub)).returncode == 0
    r = run("verify", str(tokens))
    assert r.returncode == 1 and "give --key" in r.stderr


def test_verify_fails_on_truncated_bundle(state: Path, tmp_path: Path) -> None:
    fill_spool(state, 3)
    bundle = tmp_path / "b"
    assert run("export", "--state-dir", str(state), "--out", str(bundle)).returncode == 0
    lines = bundle.read_text().splitlines(keepends=True)
    bundle.write_text("".join(lines[:-1]))
    r = run("verify", str(bundle))
    assert r.returncode == 1 and "NOT INTACT" in r.stdout and "truncation" in r.stdout
    bundle.write_text("".join(lines)[:-30])
    r = run("verify", str(bundle))
    assert r.returncode == 1 and "truncation" in r.stdout


def test_verify_with_the_wrong_key(state: Path, tmp_path: Path) -> None:
    fill_spool(state, 1)
    bundle = tmp_path / "b"
    assert run("export", "--state-dir", str(state), "--out", str(bundle)).returncode == 0
    other = tmp_path / "other.key"
    DeviceKey.create(other)
    r = run("verify", str(bundle), "--key", str(other))
    assert r.returncode == 1 and "unknown_kid" in r.stdout
    r = run("verify", str(bundle), "--key", str(tmp_path / "missing.pem"))
    assert r.returncode == 1 and "--key" in r.stderr and "Traceback" not in r.stderr


def test_export_without_a_spool_or_key(tmp_path: Path, state: Path) -> None:
    r = run("export", "--state-dir", str(state), "--out", str(tmp_path / "b"))
    assert r.returncode == 1 and "no spool" in r.stderr
    (tmp_path / "nokey").mkdir()
    Spool(tmp_path / "nokey" / "spool.sqlite").close()
    r = run("export", "--state-dir", str(tmp_path / "nokey"), "--out", str(tmp_path / "b"))
    assert r.returncode == 1 and "keys init" in r.stderr
