"""Commands: only an operator-signed, current command for this agent runs, and only once.

Every refusal is proven on ``set_config``, the most dangerous command: refused, the
configuration file stays byte-identical and no ``.prev`` appears, so nothing ran.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import OKPKey

from edge_agent.commands import CMD_TYP, command_topic, command_topics, result_filter
from edge_agent.commands.executor import ENQUEUED_META
from edge_agent.commands.verify import REFUSALS, Refusal, ReplayStore
from edge_agent.summary.sign import b64url, claims, dumps, sign_compact, verify
from tests.commands import AGENT, NOW, SITE, Gateway, Operator

FIXTURE = HealthCheck.function_scoped_fixture     # the gateway is shared by the examples
GOOD_TOML = f'[agent]\nid = "{AGENT}"\nsite = "{SITE}"\nlog_level = "debug"\n'


@pytest.fixture
def op() -> Operator:
    return Operator()


@pytest.fixture
def gw(tmp_path: Path, op: Operator) -> Gateway:
    g = Gateway(tmp_path, [op])
    yield g
    g.close()


def set_config_args(gw: Gateway) -> dict[str, str]:
    """A valid new configuration (keeps the state dir and the operator keys)."""
    text = gw.config_path.read_text().replace('[fleet]', '[fleet]\nclock_skew_s = 60.0')
    return {"toml": text}


def assert_untouched(gw: Gateway, before: bytes) -> None:
    assert gw.config_path.read_bytes() == before
    assert not gw.config_path.with_name(gw.config_path.name + ".prev").exists()


def forge(key: Operator, header: dict, payload: bytes) -> str:
    return sign_compact(key.key, header, payload)


def payload_of(op: Operator, **changes: object) -> bytes:
    body = {"aud": AGENT, "jti": "j-1", "iat": NOW, "exp": NOW + 600, "cmd": "set_config",
            "args": {"toml": GOOD_TOML}}
    body.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del body[k]
    return json.dumps(body).encode()


def hdr(op: Operator, **changes: object) -> dict:
    return {"alg": "EdDSA", "kid": op.kid, "typ": CMD_TYP, **changes}


def test_a_good_command_runs_and_its_result_is_signed_by_the_device(gw: Gateway,
                                                                     op: Operator) -> None:
    before = gw.config_path.read_bytes()
    token = op.sign("set_config", set_config_args(gw))
    outcome = gw.handle(token)
    assert outcome.status == "executed", outcome.result
    assert gw.config_path.read_bytes() != before
    assert gw.config_path.with_name("agent.toml.prev").read_bytes() == before
    [stored] = gw.results()
    assert stored == outcome.token
    header, payload = verify(stored, {gw.key.kid: gw.key.public})
    body = json.loads(payload)
    assert body["type"] == "cmd_result" and body["ok"] is True
    assert body["jti"] == claims(token)["jti"] and body["cmd"] == "set_config"
    assert body["agent_id"] == AGENT and body["site"] == SITE and body["ts"] == NOW
    assert body["signed_by"] == op.kid
    # Any JOSE library verifies the result (an independent implementation).
    jwk = OKPKey.import_key(gw.key.public_jwk())
    assert json.loads(jws.deserialize_compact(stored, jwk, algorithms=["EdDSA"]).payload)["ok"]
    assert gw.executor.counters()["accepted"] == 1


def test_a_command_signed_by_another_jose_library_runs(gw: Gateway, op: Operator) -> None:
    from cryptography.hazmat.primitives import serialization
    pem = op.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    key = OKPKey.import_key(pem)
    token = jws.serialize_compact(hdr(op), payload_of(op, cmd="ping", args={}), key,
                                  algorithms=["EdDSA"])
    assert gw.handle(token).status == "executed"


REFUSED = {
    "unknown_key": lambda op, other: other.sign("set_config", {"toml": GOOD_TOML}),
    "bad_signature": lambda op, other: forge(other, hdr(op), payload_of(op)),
    "alg_none": lambda op, other: (f"{b64url(dumps(hdr(op, alg='none')))}."
                                   f"{b64url(payload_of(op))}."),
    "alg_hs256": lambda op, other: forge(op, hdr(op, alg="HS256"), payload_of(op)),
    "tampered_payload": lambda op, other: ".".join(
        [op.sign("set_config", {"toml": GOOD_TOML}).split(".")[0],
         b64url(payload_of(op, args={"toml": GOOD_TOML + "# evil\n"})),
         op.sign("set_config", {"toml": GOOD_TOML}).split(".")[2]]),
    "wrong_typ": lambda op, other: forge(op, hdr(op, typ="JWT"), payload_of(op)),
    "no_typ": lambda op, other: forge(op, {"alg": "EdDSA", "kid": op.kid}, payload_of(op)),
    "crit": lambda op, other: forge(op, hdr(op, crit=["exp"]), payload_of(op)),
    "missing_exp": lambda op, other: forge(op, hdr(op), payload_of(op, exp=None)),
    "extra_claim": lambda op, other: forge(op, hdr(op), payload_of(op, nbf=NOW)),
    "nan_exp": lambda op, other: forge(op, hdr(op), payload_of(op, exp=math.nan)),
    "bool_iat": lambda op, other: forge(op, hdr(op), payload_of(op, iat=True)),
    "empty_aud": lambda op, other: forge(op, hdr(op), payload_of(op, aud=[])),
    "long_jti": lambda op, other: forge(op, hdr(op), payload_of(op, jti="x" * 200)),
    "args_not_object": lambda op, other: forge(op, hdr(op), payload_of(op, args=[1])),
    "payload_array": lambda op, other: forge(op, hdr(op), b"[1, 2]"),
    "payload_not_json": lambda op, other: forge(op, hdr(op), b"\xff\xfe"),
    "exp_before_iat": lambda op, other: forge(op, hdr(op), payload_of(op, exp=NOW - 10)),
    "another_agent": lambda op, other: op.sign("set_config", {"toml": GOOD_TOML}, aud="gw-2"),
    "another_site": lambda op, other: op.sign("set_config", {"toml": GOOD_TOML},
                                              aud="site:site-b"),
    "others_only": lambda op, other: op.sign("set_config", {"toml": GOOD_TOML},
                                             aud=["gw-2", "site:site-b", "site-a"]),
    "expired": lambda op, other: op.sign("set_config", {"toml": GOOD_TOML},
                                         now=NOW - 3600 - 301, ttl=3600),
    "not_yet_valid": lambda op, other: op.sign("set_config", {"toml": GOOD_TOML},
                                               now=NOW + 301),
    "ttl_too_long": lambda op, other: op.sign("set_config", {"toml": GOOD_TOML},
                                              ttl=8 * 86_400),
    "unknown_command": lambda op, other: op.sign("format_disk", {}),
    "bad_args_type": lambda op, other: op.sign("set_config", {"toml": 42}),
    "bad_args_both": lambda op, other: op.sign("set_config", {"toml": "", "config": {}}),
    "bad_args_unknown": lambda op, other: op.sign("set_config", {"toml": GOOD_TOML, "x": 1}),
}
REASON = {"alg_none": "bad_signature", "alg_hs256": "bad_signature",
          "tampered_payload": "bad_signature", "another_agent": "wrong_audience",
          "another_site": "wrong_audience", "others_only": "wrong_audience",
          "bad_args_type": "bad_args", "bad_args_both": "bad_args",
          "bad_args_unknown": "bad_args"}
MALFORMED = {"wrong_typ", "no_typ", "crit", "missing_exp", "extra_claim", "nan_exp", "bool_iat",
             "empty_aud", "long_jti", "args_not_object", "payload_array", "payload_not_json",
             "exp_before_iat"}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_commands_are_counted_and_never_run(gw: Gateway, op: Operator,
                                                    case: str) -> None:
    reason = "malformed" if case in MALFORMED else REASON.get(case, case)
    before = gw.config_path.read_bytes()
    outcome = gw.handle(REFUSED[case](op, Operator()))
    assert outcome.status == "refused"
    assert outcome.refusal is not None and outcome.refusal.reason == reason, outcome.refusal
    assert_untouched(gw, before)
    counters = gw.executor.counters()
    assert counters[reason] == 1 and counters["accepted"] == 0 and counters["executed"] == 0
    assert set(REFUSALS) <= set(counters)
    answered = reason in ("unknown_command", "bad_args")
    # Only an authentic, current command for us gets a (signed) answer; nothing else does.
    assert len(gw.results()) == (1 if answered else 0)
    if answered:
        body = claims(gw.results()[0])
        assert body["ok"] is False and body["error"]["code"] == reason


def test_refusals_never_log_the_arguments(gw: Gateway, op: Operator,
                                          caplog: pytest.LogCaptureFixture) -> None:
    secret = "hunter2-secret"
    gw.handle(op.sign("set_log_level", {"level": secret}))
    gw.handle(op.sign("set_config", {"toml": 1, "password": secret}))
    gw.handle(op.sign("set_config", {"toml": [secret]}))
    assert [r.levelname for r in caplog.records].count("WARNING") == 3
    assert secret not in caplog.text
    assert secret not in json.dumps([claims(t) for t in gw.results()])
    assert "'password'" in caplog.text      # an unknown argument is named, its value never


@pytest.mark.parametrize("token", ["", "not.a.token", "a.b", "...", "a" * 100, "é.é.é",
                                   "W10.e30.AA", b"\xff\xfe.a.b", "[" * 5000 + ".e30.AA",
                                   None, 42, "x" * (9 << 20)])
def test_garbage_is_malformed_and_never_raises(gw: Gateway, token: object) -> None:
    outcome = gw.handle(token)  # type: ignore[arg-type]
    assert outcome.status == "refused" and outcome.refusal.reason == "malformed"


def test_a_deeply_nested_header_is_malformed(gw: Gateway) -> None:
    token = f"{b64url(b'[' * 100_000)}.e30.{b64url(bytes(64))}"
    assert gw.handle(token).refusal.reason == "malformed"


@given(st.binary(max_size=300) | st.text(max_size=300))
@settings(max_examples=300, deadline=None, suppress_health_check=[FIXTURE])
def test_fuzzed_input_is_refused_without_raising(gw: Gateway, data: bytes | str) -> None:
    outcome = gw.handle(data)
    assert outcome.status == "refused" and outcome.token is None


@given(st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[FIXTURE])
def test_any_change_to_a_good_token_is_refused(gw: Gateway, op: Operator,
                                               data: st.DataObject) -> None:
    token = op.sign("ping", {}, jti="fuzz")
    i = data.draw(st.integers(0, len(token) - 1))
    c = data.draw(st.sampled_from("ABCDEFabcdef0123456789-_.="))
    mutated = token[:i] + c + token[i + 1:]
    if mutated != token:
        outcome = gw.handle(mutated)
        assert outcome.status in ("refused", "duplicate"), outcome
        if outcome.status == "duplicate":   # the same signed bytes, spelt the same: impossible
            pytest.fail("a changed token was taken for the original")


@pytest.mark.parametrize("aud", [AGENT, f"site:{SITE}", "*", ["gw-9", f"site:{SITE}"],
                                 ["site:site-b", AGENT]])
def test_audience_by_agent_id_site_and_all(gw: Gateway, op: Operator, aud: object) -> None:
    assert gw.handle(op.sign("ping", aud=aud)).status == "executed"


def test_clock_skew_is_tolerated_up_to_the_configured_amount(gw: Gateway, op: Operator) -> None:
    assert gw.handle(op.sign("ping", now=NOW + 299)).status == "executed"
    assert gw.handle(op.sign("ping", now=NOW - 3600 - 299, ttl=3600)).status == "executed"
    assert gw.handle(op.sign("ping", now=NOW + 301)).refusal.reason == "not_yet_valid"


def test_key_rotation_several_operator_keys_are_trusted(tmp_path: Path) -> None:
    old, new, gone = Operator(), Operator(), Operator()
    gw = Gateway(tmp_path, [old, new])
    try:
        assert gw.handle(old.sign("ping")).status == "executed"
        assert gw.handle(new.sign("ping")).status == "executed"
        assert gw.handle(gone.sign("ping")).refusal.reason == "unknown_key"
    finally:
        gw.close()


def test_a_duplicate_delivery_runs_once_and_returns_the_stored_result(gw: Gateway,
                                                                      op: Operator) -> None:
    token = op.sign("restart_capture")
    first = gw.handle(token)
    second = gw.handle(token, NOW + 1)
    assert first.status == "executed" and second.status == "duplicate"
    assert second.token == first.token and second.refusal.reason == "replayed"
    assert gw.control.capture_restarts == 1
    # Within a minute the first copy is still on its way: no second copy in the outbox.
    assert gw.results() == [first.token]
    # Later (the broker redelivered after a lost ack, say) the stored result goes out again.
    third = gw.handle(token, NOW + 120)
    assert third.token == first.token and gw.results() == [first.token, first.token]
    assert gw.control.capture_restarts == 1
    assert gw.executor.counters()["replayed"] == 2


def test_a_replay_after_a_restart_is_still_refused(gw: Gateway, op: Operator) -> None:
    args = set_config_args(gw)
    token = op.sign("set_config", args)
    first = gw.handle(token)
    assert first.ok
    after = gw.config_path.read_bytes()
    gw.config_path.write_text(gw.config_path.read_text() + "# edited on the gateway\n")
    edited = gw.config_path.read_bytes()
    gw.restart()
    again = gw.handle(token, NOW + 10)
    assert again.status == "duplicate" and again.token == first.token
    assert gw.config_path.read_bytes() == edited != after     # not written a second time
    assert gw.executor.counters()["replayed"] == 1


def test_a_failed_command_is_recorded_too(gw: Gateway, op: Operator) -> None:
    token = op.sign("set_config", {"config": {"limits": {"max_flows": 1}}})
    first = gw.handle(token)
    assert first.status == "failed"
    assert gw.handle(token, NOW + 1).token == first.token


def test_the_replay_store_is_bounded_and_refuses_what_it_forgot(tmp_path: Path) -> None:
    op = Operator()
    gw = Gateway(tmp_path, [op], replay_entries=100)
    try:
        tokens = [op.sign("ping", now=NOW + i, jti=f"j{i}") for i in range(104)]
        for i, t in enumerate(tokens):
            assert gw.handle(t, NOW + i).ok
        assert len(gw.replay) == 100
        assert gw.replay.floor() == NOW + 3
        # Forgotten ones cannot be told from new: refused, never run again.
        assert gw.handle(tokens[0], NOW + 200).refusal.reason == "stale"
        assert gw.handle(tokens[3], NOW + 200).refusal.reason == "stale"
        assert gw.handle(tokens[4], NOW + 200).status == "duplicate"
        # A new command still runs, full store or not.
        assert gw.handle(op.sign("ping", now=NOW + 200), NOW + 200).ok
        gw.restart()
        assert gw.replay.floor() == NOW + 4
        assert gw.handle(tokens[4], NOW + 201).refusal.reason == "stale"
    finally:
        gw.close()


def test_the_store_survives_the_clock_going_back(gw: Gateway, op: Operator) -> None:
    token = op.sign("restart_capture", now=NOW, ttl=60)
    assert gw.handle(token, NOW).ok
    assert gw.handle(token, NOW + 3600).refusal.reason == "expired"
    # A Pi without RTC boots with an old time: the command is current again, still not rerun.
    assert gw.handle(token, NOW + 10).status == "duplicate"
    assert gw.control.capture_restarts == 1


def test_a_result_recorded_before_a_crash_reaches_the_outbox_once(gw: Gateway,
                                                                  op: Operator) -> None:
    assert gw.handle(op.sign("ping", jti="a")).ok
    # A crash after the record's commit and before the outbox append:
    token = gw.key.sign(dumps({"type": "cmd_result", "jti": "b", "ts": NOW}))
    gw.replay.record("b", NOW, NOW + 60, "ping", True, token, NOW)
    gw.restart()
    assert gw.executor.flush() == 1
    assert gw.executor.flush() == 0
    assert gw.results()[-1] == token and len(gw.results()) == 2
    assert int(gw.spool.meta(ENQUEUED_META)) == gw.replay.get("b").n


def test_replay_store_lives_in_the_spool_file(gw: Gateway, op: Operator) -> None:
    gw.handle(op.sign("ping", jti="x"))
    assert gw.replay.path == gw.spool.path
    other = ReplayStore(gw.spool.path)
    try:
        assert other.seen("x") and not other.seen("y")
    finally:
        other.close()


def test_check_alone_runs_nothing(gw: Gateway, op: Operator) -> None:
    verdict = gw.verifier.check(op.sign("restart_capture"), NOW)
    assert not isinstance(verdict, Refusal) and verdict.cmd == "restart_capture"
    assert gw.control.capture_restarts == 0 and gw.results() == []


def test_topics() -> None:
    assert command_topics("edge-agent", SITE, AGENT) == [
        "edge-agent/site-a/gw-1/cmd", "edge-agent/site-a/cmd", "edge-agent/cmd"]
    assert command_topic("p", "s") == "p/s/cmd" and command_topic("p") == "p/cmd"
    assert result_filter("p", "s", "a") == "p/s/a/cmd/result"
    assert result_filter("p") == "p/+/+/cmd/result"
    with pytest.raises(ValueError):
        command_topic("p", None, "a")
