"""The handlers, run through the executor on a gateway with a real control: configuration
files replaced atomically or not at all, models checked, staged, loaded and rolled back, the
device key rotated under the old key's signature, exports written."""
from __future__ import annotations

import base64
import hashlib
import json
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.commands.handlers import HANDLERS, NEXT_KEY_FILE, CommandError, to_toml
from edge_agent.config import Config
from edge_agent.features.extract import FEATURE_NAMES
from edge_agent.model.store import ModelStore
from edge_agent.summary.sign import DeviceKey, VerifyError, claims, verify
from edge_agent.tools.apply import OfflineControl
from edge_agent.transport.export import read_bundle
from tests.commands import NOW, SHIPPED_MODEL, Gateway, LiveControl, Operator

needs_model = pytest.mark.skipif(not SHIPPED_MODEL.exists(), reason="no shipped model")


@pytest.fixture
def op() -> Operator:
    return Operator()


@pytest.fixture
def gw(tmp_path: Path, op: Operator) -> Gateway:
    g = Gateway(tmp_path, [op])
    yield g
    g.close()


def run(gw: Gateway, op: Operator, cmd: str, args: dict[str, Any] | None = None,
        now: float = NOW) -> dict[str, Any]:
    outcome = gw.handle(op.sign(cmd, args, now=now), now)
    assert outcome.token is not None, outcome.refusal
    return claims(outcome.token)


def error(body: dict[str, Any]) -> dict[str, Any]:
    assert body["ok"] is False, body
    return body["error"]


# --- set_config --------------------------------------------------------------------------------

def new_toml(gw: Gateway, extra: str = "[limits]\nmax_flows = 20000\n") -> str:
    return gw.config_path.read_text() + "\n" + extra


def test_set_config_replaces_the_file_keeps_prev_and_applies(gw: Gateway, op: Operator) -> None:
    before = gw.config_path.read_bytes()
    text = new_toml(gw, '[limits]\nmax_flows = 20000\n# a comment survives\n')
    body = run(gw, op, "set_config", {"toml": text})
    assert body["ok"], body
    assert gw.config_path.read_text() == text
    assert gw.config_path.with_name("agent.toml.prev").read_bytes() == before
    assert body["result"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert gw.control.cfg["limits"]["max_flows"] == 20000         # applied
    assert not list(gw.root.glob(".agent.toml.*"))                 # no temporary left
    got = run(gw, op, "get_config")["result"]
    assert got["config"]["limits"]["max_flows"] == 20000 and got["path"] == str(gw.config_path)


def test_set_config_from_a_table_writes_toml_that_reads_back(gw: Gateway, op: Operator) -> None:
    raw = tomllib.loads(gw.config_path.read_text())
    raw["detect"] = {"params": {"scan.servers": 20}, "severity": {"new_device": "high"}}
    raw["agent"]["log_level"] = "warning"
    body = run(gw, op, "set_config", {"config": raw})
    assert body["ok"], body
    assert tomllib.loads(gw.config_path.read_text()) == raw
    assert gw.control.log_level == "warning"


@pytest.mark.parametrize("change,key", [
    ("[limits]\nmax_flows = 1\n", "limits.max_flows"),
    ("[limits]\nbogus = 1\n", "limits.bogus"),
    ("[capture]\nsnaplen = \"big\"\n", "capture.snaplen"),
    ("[nonsense]\n", "nonsense"),
    ("[mqtt]\nurl = \"http://x\"\n", "mqtt.url"),
])
def test_a_bad_config_is_refused_with_its_key_and_nothing_changes(gw: Gateway, op: Operator,
                                                                   change: str, key: str) -> None:
    before = gw.config_path.read_bytes()
    err = error(run(gw, op, "set_config", {"toml": new_toml(gw, change)}))
    assert err["code"] == "invalid_config" and err["key"] == key, err
    assert gw.config_path.read_bytes() == before
    assert not gw.config_path.with_name("agent.toml.prev").exists()


def test_set_config_refuses_what_would_cut_the_agent_off(gw: Gateway, op: Operator) -> None:
    before = gw.config_path.read_bytes()
    text = gw.config_path.read_text()
    moved = text.replace(f'state_dir = "{gw.state}"', 'state_dir = "/elsewhere"')
    assert error(run(gw, op, "set_config", {"toml": moved}))["key"] == "agent.state_dir"
    import re
    no_keys = re.sub(r"operator_keys = \[.*\]", "operator_keys = []", text)
    assert error(run(gw, op, "set_config", {"toml": no_keys}))["key"] == "fleet.operator_keys"
    missing = re.sub(r"operator_keys = \[.*\]", 'operator_keys = ["/nope.pem"]', text)
    assert error(run(gw, op, "set_config", {"toml": missing}))["key"] == "fleet.operator_keys"
    assert error(run(gw, op, "set_config", {"toml": "[agent\n"}))["code"] == "invalid_config"
    assert gw.config_path.read_bytes() == before


def test_new_operator_keys_can_be_given_inline(gw: Gateway, op: Operator) -> None:
    new = Operator()
    text = gw.config_path.read_text().replace("operator_keys = [",
                                              f"operator_keys = [{json.dumps(new.pem())}, ")
    assert run(gw, op, "set_config", {"toml": text})["ok"]
    gw.restart()
    assert gw.handle(new.sign("ping", jti="new")).ok


class RefusingControl(LiveControl):
    def apply_config(self, cfg: Config) -> dict[str, Any] | None:
        raise RuntimeError("the pipeline cannot take it")


def test_the_old_file_comes_back_when_the_agent_cannot_apply(gw: Gateway, op: Operator) -> None:
    gw.control.__class__ = RefusingControl
    before = gw.config_path.read_bytes()
    err = error(run(gw, op, "set_config", {"toml": new_toml(gw)}))
    assert err["code"] == "apply_failed" and "cannot take it" in err["reason"]
    assert gw.config_path.read_bytes() == before


def test_set_config_without_a_config_file(gw: Gateway, op: Operator) -> None:
    gw.control._config_path = None
    assert error(run(gw, op, "set_config", {"toml": "[agent]\n"}))["code"] == "no_config_file"


@pytest.mark.parametrize("value", ['a "quoted" \\ value', "new\nline\ttab", "ünïcødé ☃ 😀",
                                   "del\x7fchar", "", "'single'"])
def test_to_toml_writes_any_config_string(value: str) -> None:
    raw = {"agent": {"id": value}, "detect": {"params": {"a.b": 1.5, "c": 2}},
           "decode": {"protocols": [value, "modbus"]}}
    assert tomllib.loads(to_toml(raw)) == raw


@given(st.text())
@settings(max_examples=200, deadline=None)
def test_to_toml_round_trips_or_refuses(value: str) -> None:
    raw = {"capture": {"bpf_filter": value}}
    try:
        text = to_toml(raw)
    except CommandError as exc:
        assert exc.code == "invalid_config"
        return
    assert tomllib.loads(text) == raw


# --- models ------------------------------------------------------------------------------------

def model_args(version: int, onnx: bytes | None = None, **changes: Any) -> dict[str, Any]:
    data = json.loads(SHIPPED_MODEL.read_text())
    blob = onnx if onnx is not None else (SHIPPED_MODEL.parent / data["onnx_file"]).read_bytes()
    data.update(version=version, **changes)
    return {"manifest": data, "onnx": base64.b64encode(blob).decode()}


def model_dirs(gw: Gateway) -> set[str]:
    """Version folders in the state's model store (not its staging leftovers)."""
    models = gw.state / "models"
    return {d.name for d in models.iterdir() if d.is_dir() and not d.name.startswith(".")} \
        if models.exists() else set()


@needs_model
def test_a_newer_model_is_installed_loaded_and_swapped(gw: Gateway, op: Operator) -> None:
    assert gw.control.current_model()["version"] == 1
    body = run(gw, op, "model_update", model_args(2))
    assert body["ok"], body
    res = body["result"]
    assert res["version"] == 2 and res["previous"] == str(SHIPPED_MODEL)
    folder = gw.state / "models" / "2"
    assert (folder / "manifest.json").exists() and (folder / "edge-ae-v1.onnx").exists()
    assert ModelStore(gw.state).current() == folder / "manifest.json"
    assert gw.control.scorer.manifest.version == 2 and gw.control.scorer.session is not None
    assert run(gw, op, "status")["result"]["model"]["version"] == 2
    # The same model again (a retry after a crash): nothing to do, and no error.
    again = run(gw, op, "model_update", model_args(2))
    assert again["ok"] and again["result"]["note"] == "already in use"
    # The agent starts with it (service.load_scorer reads the same store).
    gw.restart()
    assert gw.control.scorer.manifest.version == 2


@needs_model
@pytest.mark.parametrize("args,code", [
    (lambda: model_args(2, onnx=b"\0" + (SHIPPED_MODEL.parent / "edge-ae-v1.onnx").read_bytes()),
     "hash_mismatch"),
    (lambda: model_args(2, feature_names=list(reversed(FEATURE_NAMES))), "feature_mismatch"),
    (lambda: model_args(2, feature_names=list(FEATURE_NAMES[:-1])), "feature_mismatch"),
    (lambda: model_args(2, feature_version=99), "feature_mismatch"),
    (lambda: model_args(1, created="another build"), "version_not_newer"),
    (lambda: model_args(0), "bad_manifest"),
    (lambda: model_args(2, onnx_file="../evil.onnx"), "bad_manifest"),
    (lambda: model_args(2, onnx_file=".."), "bad_manifest"),
    (lambda: model_args(2, onnx_file="manifest.json"), "bad_manifest"),
    (lambda: {**model_args(2), "manifest": {"name": "x"}}, "bad_manifest"),
    (lambda: model_args(2, onnx=b"not a network",
                        onnx_sha256=hashlib.sha256(b"not a network").hexdigest()),
     "load_failed"),
])
def test_a_bad_model_is_refused_and_the_running_one_stays(gw: Gateway, op: Operator,
                                                         args: Any, code: str) -> None:
    running = gw.control.scorer
    err = error(run(gw, op, "model_update", args()))
    assert err["code"] == code, err
    assert gw.control.scorer is running
    assert model_dirs(gw) == set()          # nothing installed stays behind
    assert ModelStore(gw.state).current() == SHIPPED_MODEL


@needs_model
def test_an_older_model_needs_rollback_true(gw: Gateway, op: Operator) -> None:
    assert run(gw, op, "model_update", model_args(3))["ok"]
    assert error(run(gw, op, "model_update", model_args(2)))["code"] == "version_not_newer"
    assert error(run(gw, op, "model_update", model_args(3, created="x")))["code"] == \
        "version_not_newer"
    body = run(gw, op, "model_update", {**model_args(2), "rollback": True})
    assert body["ok"] and gw.control.scorer.manifest.version == 2
    # The same version again, with other content, cannot replace one in use.
    other = model_args(3, rollback=True)
    other["manifest"]["threshold"] = {**other["manifest"]["threshold"], "value": 99.0}
    assert error(run(gw, op, "model_update", {**other, "rollback": True}))["code"] == \
        "version_conflict"


@needs_model
def test_model_rollback_goes_back_to_the_previous_then_the_prebuilt(gw: Gateway,
                                                                     op: Operator) -> None:
    assert run(gw, op, "model_update", model_args(2))["ok"]
    assert run(gw, op, "model_update", model_args(3))["ok"]
    body = run(gw, op, "model_rollback")
    assert body["ok"] and body["result"]["version"] == 2
    assert gw.control.scorer.manifest.version == 2 and model_dirs(gw) == {"2"}
    body = run(gw, op, "model_rollback")
    assert body["ok"] and body["result"]["manifest"] == str(SHIPPED_MODEL)
    assert gw.control.scorer.manifest.version == 1
    assert error(run(gw, op, "model_rollback"))["code"] == "no_previous_model"
    gw.restart()
    assert gw.control.current_model()["manifest"] == str(SHIPPED_MODEL)


@needs_model
def test_models_kept_are_bounded(gw: Gateway, op: Operator) -> None:
    for v in range(2, 8):
        assert run(gw, op, "model_update", model_args(v))["ok"]
    assert model_dirs(gw) == {"6", "7"}          # current and previous


@needs_model
def test_a_previous_model_that_no_longer_loads_is_not_rolled_back_to(gw: Gateway,
                                                                     op: Operator) -> None:
    assert run(gw, op, "model_update", model_args(2))["ok"]
    assert run(gw, op, "model_update", model_args(3))["ok"]
    (gw.state / "models" / "2" / "edge-ae-v1.onnx").write_bytes(b"garbage")
    err = error(run(gw, op, "model_rollback"))
    assert err["code"] == "load_failed"
    assert gw.control.scorer.manifest.version == 3
    assert ModelStore(gw.state).current() == gw.state / "models" / "3" / "manifest.json"


@needs_model
def test_a_model_chosen_in_the_config_is_left_alone(gw: Gateway, op: Operator) -> None:
    text = gw.config_path.read_text() + f'\n[detect]\nmodel = "{SHIPPED_MODEL}"\n'
    assert run(gw, op, "set_config", {"toml": text})["ok"]
    err = error(run(gw, op, "model_update", model_args(2)))
    assert err["code"] == "model_pinned" and err["key"] == "detect.model"
    assert error(run(gw, op, "model_rollback"))["code"] == "model_pinned"
    assert model_dirs(gw) == set()


# --- keys, exports and the live controls -------------------------------------------------------

def test_rotate_device_key_is_announced_under_the_old_key(gw: Gateway, op: Operator) -> None:
    old = gw.key
    outcome = gw.handle(op.sign("rotate_device_key"))
    assert outcome.ok
    verify(outcome.token, {old.kid: old.public})
    new = gw.key
    assert new.kid != old.kid
    with pytest.raises(VerifyError):
        verify(outcome.token, {new.kid: new.public})
    res = claims(outcome.token)["result"]
    assert res == {"kid": new.kid, "jwk": new.public_jwk(), "previous_kid": old.kid}
    assert DeviceKey.load(gw.state / "device.key").kid == new.kid
    assert not (gw.state / NEXT_KEY_FILE).exists() and gw.replay.pending() == []
    # From now on, documents are signed with the new key.
    later = gw.handle(op.sign("ping"))
    verify(later.token, {new.kid: new.public})


def test_a_crash_before_the_record_announces_the_same_next_key(gw: Gateway,
                                                                op: Operator) -> None:
    old = gw.key
    prepared = gw.control.rotate_key()          # the first run, then the crash
    gw.restart()
    assert gw.key.kid == old.kid                 # nothing announced, nothing switched
    outcome = gw.handle(op.sign("rotate_device_key"))
    verify(outcome.token, {old.kid: old.public})
    assert claims(outcome.token)["result"]["kid"] == prepared["kid"] == gw.key.kid


def test_a_crash_after_the_record_switches_keys_at_the_next_start(gw: Gateway,
                                                                  op: Operator) -> None:
    old = gw.key
    token = op.sign("rotate_device_key", jti="rot")

    def power_cut(control: object) -> None:     # the process dies in the second step
        raise KeyboardInterrupt

    rotate = replace(HANDLERS["rotate_device_key"], after=power_cut)
    gw.executor.handlers = {**HANDLERS, "rotate_device_key": rotate}
    with pytest.raises(KeyboardInterrupt):
        gw.handle(token)
    announced = claims(gw.results()[0])["result"]["kid"]
    assert gw.replay.pending() == [("rot", "rotate_device_key")]
    gw.restart()
    assert gw.key.kid == old.kid
    gw.executor.flush()                          # what the agent runs at start-up
    assert gw.key.kid == announced != old.kid and gw.replay.pending() == []
    assert DeviceKey.load(gw.state / "device.key").kid == announced
    assert gw.handle(token, NOW + 1).status == "duplicate" and gw.key.kid == announced


def test_export_writes_a_bundle_in_the_state_dir(gw: Gateway, op: Operator) -> None:
    for _ in range(3):
        assert gw.handle(op.sign("ping")).ok
    res = run(gw, op, "export")["result"]
    path = Path(res["path"])
    assert path.parent == gw.state / "exports" and path.stat().st_size == res["size"]
    bundle = read_bundle(path)
    docs = list(bundle.documents())
    assert len(docs) == res["count"] == 3
    assert all(claims(d)["type"] == "cmd_result" for d in docs)
    # Only what is new since: the export command's own result.
    again = run(gw, op, "export")["result"]
    assert again["count"] == 1 and again["path"] != res["path"]


def test_live_controls(gw: Gateway, op: Operator) -> None:
    assert run(gw, op, "ping")["result"]["pong"] is True
    assert run(gw, op, "learn_start", {"period_s": 3600})["result"]["learning"] is True
    assert gw.control.learning == 3600
    assert run(gw, op, "learn_stop")["ok"] and gw.control.learning is None
    assert run(gw, op, "set_log_level", {"level": "debug"})["ok"]
    assert gw.control.log_level == "debug"
    assert run(gw, op, "restart_capture")["ok"] and gw.control.capture_restarts == 1
    status = run(gw, op, "status")["result"]
    assert status["running"] is True and status["kid"] == gw.key.kid


def test_a_stopped_agent_says_what_waits_for_the_next_start(gw: Gateway, op: Operator) -> None:
    gw.control.__class__ = OfflineControl
    assert error(run(gw, op, "learn_start", {"period_s": 60}))["code"] == "not_running"
    assert error(run(gw, op, "set_log_level", {"level": "debug"}))["code"] == "not_running"
    res = run(gw, op, "restart_capture")["result"]
    assert res["restarted"] is False and "not running" in res["note"]
    assert run(gw, op, "status")["result"]["running"] is False


def test_a_failing_control_is_an_internal_error_not_a_crash(gw: Gateway, op: Operator) -> None:
    def boom() -> None:
        raise OSError("disk on fire")
    gw.control.restart_capture = boom     # type: ignore[method-assign]
    err = error(run(gw, op, "restart_capture"))
    assert err["code"] == "internal_error" and "disk on fire" in err["reason"]


# --- argument schemas --------------------------------------------------------------------------

@pytest.mark.parametrize("cmd,args,ok", [
    ("ping", {}, True), ("ping", {"x": 1}, False),
    ("set_config", {"toml": ""}, True), ("set_config", {}, False),
    ("set_config", {"config": []}, False),
    ("learn_start", {"period_s": 60}, True), ("learn_start", {"period_s": 60.5}, True),
    ("learn_start", {}, False), ("learn_start", {"period_s": True}, False),
    ("learn_start", {"period_s": "60"}, False), ("learn_start", {"period_s": 0}, False),
    ("learn_start", {"period_s": float("inf")}, False),
    ("export", {}, True), ("export", {"since": 3}, True), ("export", {"since": -1}, False),
    ("export", {"since": 1.5}, False),
    ("set_log_level", {"level": "info"}, True), ("set_log_level", {"level": "INFO"}, False),
    ("model_update", {"manifest": {}, "onnx": "AAAA"}, True),
    ("model_update", {"manifest": {}, "onnx": "not base64!"}, False),
    ("model_update", {"manifest": {}, "onnx": "AAAA", "rollback": 1}, False),
    ("model_update", {"manifest": {}}, False),
    ("rotate_device_key", {"kid": "x"}, False),
])
def test_argument_schemas(cmd: str, args: dict[str, Any], ok: bool) -> None:
    problem = HANDLERS[cmd].check_args(args)
    assert (problem is None) == ok, problem
