"""The chain verifier: an intact chain passes, and each way of breaking it is named."""
from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.summary.chain import ChainVerifier, Verdict
from edge_agent.summary.sign import DeviceKey, b64url, dumps, token_hash


def summary(key: DeviceKey, seq: int, prev: str | None, agent: str = "gw-1",
            site: str = "plant-a", dropped: list[int] | None = None, **extra: Any) -> str:
    """A summary as the agent signs it."""
    body = {"agent_id": agent, "site": site, "seq": seq, "prev": prev, "agent_version": "0.1.0",
            "type": "summary", "schema": 1,
            "window": {"start": 60.0 * seq, "end": 60.0 * (seq + 1), "complete": True},
            "dropped_seqs": dropped or [], **extra}
    return key.sign(dumps(body))


def alert(key: DeviceKey, n: int, agent: str = "gw-1", site: str = "plant-a") -> str:
    return key.sign(dumps({"type": "alert", "agent_id": agent, "site": site, "ts": float(n),
                           "rule": "modbus.unauthorised_write", "severity": "high"}))


def chain(key: DeviceKey, n: int, start: int = 1, prev: str | None = None,
          dropped: dict[int, list[int]] | None = None, **kw: Any) -> list[str]:
    """Summaries ``start .. start+n-1``, linked; ``dropped`` gives some their dropped_seqs."""
    out = []
    for seq in range(start, start + n):
        token = summary(key, seq, prev, dropped=(dropped or {}).get(seq), **kw)
        out.append(token)
        prev = token_hash(token)
    return out


def check(key: DeviceKey, tokens: list[str], **kw: Any) -> Verdict:
    v = ChainVerifier({key.kid: key.public}, **kw.pop("verifier", {}))
    for t in tokens:
        v.feed(t)
    return v.finish(**kw)


def names(verdict: Verdict) -> list[tuple[str, int | None]]:
    return [(p.name, p.seq) for p in verdict.problems]


@pytest.fixture(scope="module")
def key() -> DeviceKey:
    return DeviceKey(Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def six(key: DeviceKey) -> list[str]:
    return chain(key, 6)


def test_intact_chain_passes(key: DeviceKey, six: list[str]) -> None:
    tokens = six[:3] + [alert(key, 1)] + six[3:] + [alert(key, 2)]
    v = check(key, tokens)
    assert v.ok and v.problems == [] and v.documents == 8
    assert v.counts == {"summary": 6, "alert": 2}
    assert (v.first_seq, v.last_seq, v.last_hash) == (1, 6, token_hash(six[-1]))
    assert (v.agent_id, v.site, v.kids) == ("gw-1", "plant-a", [key.kid])
    assert v.render().startswith("INTACT: 8 document(s)")
    assert v.as_dict()["ok"] is True


def test_mid_chain_start_is_trusted(key: DeviceKey, six: list[str]) -> None:
    assert check(key, six[2:]).ok


def test_gap(key: DeviceKey, six: list[str]) -> None:
    v = check(key, six[:2] + six[4:])
    assert names(v) == [("gap", 3)] and "summaries 3..4 missing (2)" in v.problems[0].detail
    assert not v.ok and "NOT INTACT (1 problem)" in v.render()


def test_dropped_by_agent_is_not_a_plain_gap(key: DeviceKey) -> None:
    tokens = chain(key, 6, dropped={5: [3]})          # 5 reports that 3 was dropped
    v = check(key, tokens[:2] + tokens[4:])           # 3 and 4 never arrive
    assert names(v) == [("dropped_by_agent", 3), ("gap", 4)]
    assert "agent reports dropping" in v.problems[0].detail
    tokens = chain(key, 6, dropped={4: [2, 3]})
    assert names(check(key, tokens[:1] + tokens[3:])) == [("dropped_by_agent", 2)]


def test_duplicate(key: DeviceKey, six: list[str]) -> None:
    v = check(key, six[:3] + [six[2]] + six[3:])
    assert names(v) == [("duplicate", 3)]
    a = alert(key, 1)
    assert names(check(key, six[:2] + [a, a])) == [("duplicate", None)]


def test_replay(key: DeviceKey, six: list[str]) -> None:
    assert names(check(key, six[:4] + [six[1]])) == [("replay", 2)]
    other = summary(key, 2, token_hash(six[0]), note="a different window")
    v = check(key, six[:4] + [other])
    assert names(v) == [("replay", 2)] and "a different document" in v.problems[0].detail


def test_conflict(key: DeviceKey, six: list[str]) -> None:
    twin = summary(key, 3, token_hash(six[1]), note="restored from a backup")
    assert names(check(key, six[:3] + [twin])) == [("conflict", 3)]


def test_reorder(key: DeviceKey, six: list[str]) -> None:
    v = check(key, [six[0], six[1], six[3], six[2], six[4], six[5]])
    assert names(v) == [("reorder", 3)]               # no gap, no broken link
    assert names(check(key, [six[3], six[2]])) == [("reorder", 3)]


def test_broken_chain(key: DeviceKey, six: list[str]) -> None:
    # A validly signed stand-in for 3 (same seq and prev, other content): 4 no longer links.
    stand_in = summary(key, 3, token_hash(six[1]), note="substituted")
    assert names(check(key, six[:2] + [stand_in] + six[3:])) == [("broken_chain", 4)]
    wrong_prev = summary(key, 3, token_hash(six[0]))
    assert ("broken_chain", 3) in names(check(key, six[:2] + [wrong_prev]))
    assert names(check(key, [summary(key, 4, None)])) == [("broken_chain", 4)]
    assert names(check(key, [summary(key, 1, "0" * 64)])) == [("broken_chain", 1)]


def test_swapped_signature_is_one_problem(key: DeviceKey, six: list[str]) -> None:
    h, p, _ = six[2].split(".")
    swapped = f"{h}.{p}.{six[3].split('.')[2]}"
    v = check(key, six[:2] + [swapped] + six[3:])
    assert names(v) == [("bad_signature", 3)]          # not also a gap or a broken link


def test_unreadable_token_leaves_a_gap(key: DeviceKey, six: list[str]) -> None:
    v = check(key, six[:2] + ["eyJhbGciOiJFZERTQSJ9..x"] + six[3:])
    assert names(v) == [("malformed", None), ("gap", 3)]


def test_tampered_payload_keeps_its_seq(key: DeviceKey, six: list[str]) -> None:
    from edge_agent.summary.sign import b64url_decode
    h, p, s = six[2].split(".")
    body = json.loads(b64url_decode(p))
    body["anomalies"] = {}                             # hide what was seen
    forged = f"{h}.{b64url(dumps(body))}.{s}"
    v = check(key, six[:2] + [forged] + six[3:])
    assert names(v) == [("bad_signature", 3)]


def test_refused_tokens_in_a_stream(key: DeviceKey, six: list[str]) -> None:
    stranger = DeviceKey(Ed25519PrivateKey.generate())
    none = f"{b64url(dumps({'alg': 'none', 'kid': key.kid}))}.{six[0].split('.')[1]}."
    v = check(key, [none, stranger.sign(b"{}"), "garbage", key.sign(b"[1]")])
    assert [p.name for p in v.problems] == ["unsupported_alg", "unknown_kid", "malformed",
                                            "malformed"]
    assert [p.index for p in v.problems] == [1, 2, 3, 4]


def test_mixed_agents(key: DeviceKey, six: list[str]) -> None:
    other = DeviceKey(Ed25519PrivateKey.generate())
    v = ChainVerifier({key.kid: key.public, other.kid: other.public})
    for t in six[:2] + chain(other, 1, agent="gw-2") + six[2:] + [alert(key, 1, agent="gw-2")]:
        v.feed(t)
    assert names(v.finish()) == [("mixed_agents", 1), ("mixed_agents", None)]


def test_truncation_against_manifest(key: DeviceKey, six: list[str]) -> None:
    manifest = {"count": 6, "first_seq": 1, "last_seq": 6, "last_summary_hash": token_hash(six[-1])}
    assert check(key, six, manifest=manifest).ok
    v = check(key, six[:5], manifest=manifest)
    assert [p.name for p in v.problems] == ["truncation"]
    assert "5 document(s), the manifest lists 6" in v.problems[0].detail
    v = check(key, six + [alert(key, 1)], manifest=manifest)
    assert [p.name for p in v.problems] == ["manifest_mismatch"]
    v = check(key, six, manifest=manifest, documents_sha256="0" * 64)
    assert [p.name for p in v.problems] == ["manifest_mismatch"]


def test_anchor_continues_a_previous_check(key: DeviceKey, six: list[str]) -> None:
    assert check(key, six[3:], verifier={"anchor": (3, token_hash(six[2]))}).ok
    v = check(key, six[3:], verifier={"anchor": (2, token_hash(six[1]))})
    assert names(v) == [("gap", 3)]
    v = check(key, six[3:], verifier={"anchor": (3, "0" * 64)})
    assert names(v) == [("broken_chain", 4)]
    v = check(key, six[2:], verifier={"anchor": (3, token_hash(six[2]))})
    assert names(v) == [("replay", 3)]
    assert check(key, six, verifier={"anchor": (0, None)}).ok


def test_empty_input_is_not_intact(key: DeviceKey) -> None:
    assert names(check(key, [])) == [("empty", None)]


def test_problem_details_are_bounded(key: DeviceKey, six: list[str]) -> None:
    v = ChainVerifier({key.kid: key.public}, max_problems=3)
    for _ in range(10):
        v.feed("garbage")
    verdict = v.finish()
    assert len(verdict.problems) == 3 and verdict.problem_counts == {"malformed": 10}
    assert "... and 7 more" in verdict.render()


def test_huge_jump_costs_no_memory(key: DeviceKey) -> None:
    first = summary(key, 1, None)
    far = summary(key, 10**12, "1" * 64)
    v = check(key, [first, far])
    assert names(v) == [("gap", 2)] and v.last_seq == 10**12
