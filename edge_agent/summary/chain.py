"""Checks a stream of signed documents: every signature, and the chain the summaries form.

A summary carries ``agent_id, site, seq`` (1, 2, 3, ... per agent, never reused) and ``prev``,
the hex SHA-256 of the previous summary's JWS (``null`` for seq 1). Fed the tokens in the order
they were received or stored, :class:`ChainVerifier` names what is wrong:

- a token that fails :func:`~edge_agent.summary.sign.verify`: ``malformed``, ``bad_header``,
  ``unsupported_alg``, ``unknown_kid``, ``bad_signature``;
- ``gap``: summary numbers never seen; ``dropped_by_agent`` when a later summary lists them in
  ``dropped_seqs`` (its spool was full: data lost, but said so, and signed);
- ``duplicate``: the same token as the latest summary (or any other document) again;
- ``replay``: an older seq once later ones were seen; ``conflict``: a second, different
  document signed with the latest seq (restored state or a cloned key);
- ``reorder``: a missing seq that turns up after later ones;
- ``broken_chain``: ``prev`` is not the hash of the summary before (tampering, a substituted or
  re-signed document); ``mixed_agents``: another agent's or site's documents in the stream;
- ``truncation`` and ``manifest_mismatch``: the stream against the signed manifest of a bundle.

The first summary seen is trusted as the start unless an anchor (the seq and hash of the last
summary checked before, e.g. the previous export's) is given. Links across a missing summary
cannot be checked and are reported as the gap instead. Memory is a few dozen bytes per summary
plus at most ``max_problems`` problem details; the rest are only counted.
"""
from __future__ import annotations

import bisect
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.summary.sign import VerifyError, split, token_hash, verify

MEANING = {
    "malformed": "not a JWS compact token, or its payload is not a JSON object",
    "bad_header": "JWS header unusable (no kid, or a crit extension)",
    "unsupported_alg": "signed with an algorithm other than EdDSA (e.g. none or HS256)",
    "unknown_kid": "signed by a key that is not trusted here",
    "bad_signature": "the signature does not match: document altered or forged",
    "gap": "summaries missing with no explanation: lost or withheld",
    "dropped_by_agent": "summaries the agent reports dropping (its spool was full): data lost",
    "duplicate": "the same document again",
    "replay": "an older summary re-sent after later ones",
    "conflict": "two different signed summaries with the same seq",
    "reorder": "a summary that arrived after later ones",
    "broken_chain": "prev does not match the summary before: tampering or substitution",
    "mixed_agents": "documents of another agent or site in the same stream",
    "truncation": "fewer documents than the signed manifest lists",
    "manifest_mismatch": "documents disagree with the signed manifest",
    "empty": "nothing to verify",
}
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Problem:
    name: str
    detail: str
    seq: int | None = None
    index: int | None = None     # 1-based position of the document in the input

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seq": self.seq, "index": self.index, "detail": self.detail}


@dataclass
class Verdict:
    ok: bool
    documents: int
    counts: dict[str, int]
    first_seq: int | None
    last_seq: int | None
    last_hash: str | None
    agent_id: str | None
    site: str | None
    kids: list[str]
    problems: list[Problem]
    problem_counts: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "documents": self.documents, "counts": self.counts,
                "first_seq": self.first_seq, "last_seq": self.last_seq,
                "last_hash": self.last_hash, "agent_id": self.agent_id, "site": self.site,
                "kids": self.kids, "problems": [p.as_dict() for p in self.problems],
                "problem_counts": self.problem_counts, "notes": self.notes}

    def render(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items())) or "none valid"
        who = f"agent {self.agent_id} at site {self.site}" if self.agent_id else "no agent identified"
        seqs = (f"summaries {self.first_seq}..{self.last_seq}" if self.first_seq is not None
                else "no summaries")
        total = sum(self.problem_counts.values())
        head = "INTACT" if self.ok else f"NOT INTACT ({total} problem{'s' * (total != 1)})"
        lines = [f"{head}: {self.documents} document(s) ({kinds}) from {who}, {seqs}",
                 f"signed by kid {', '.join(self.kids) or '-'}"]
        if self.last_hash:
            lines.append(f"last summary hash: {self.last_hash} (anchor for the next check: "
                         f"--anchor {self.last_seq}:{self.last_hash})")
        lines += [f"note: {n}" for n in self.notes]
        if self.problems:
            lines.append("problems:")
            for p in self.problems:
                where = f"#{p.index}" if p.index is not None else "-"
                seq = f"seq {p.seq}" if p.seq is not None else ""
                lines.append(f"  {where:>7} {seq:<12} {p.name:<17} {p.detail}")
            if total > len(self.problems):
                lines.append(f"  ... and {total - len(self.problems)} more")
            lines.append("meaning:")
            lines += [f"  {name}: {MEANING[name]}" for name in sorted(self.problem_counts)]
        return "\n".join(lines) + "\n"


class ChainVerifier:
    """Feed tokens with :meth:`feed` (and a bundle's :meth:`manifest`), then :meth:`finish`."""

    def __init__(self, keys: dict[str, Ed25519PublicKey],
                 anchor: tuple[int, str | None] | None = None, max_problems: int = 1000) -> None:
        self.keys = keys
        self.max_problems = max_problems
        self.index = 0
        self.counts: Counter[str] = Counter()
        self.problems: list[Problem] = []
        self.problem_counts: Counter[str] = Counter()
        self.identity: tuple[str, str] | None = None
        self.kids: set[str] = set()
        self.by_seq: dict[int, tuple[str | None, str | None]] = {}   # seq -> (hash, prev)
        self.other_hashes: set[str] = set()
        self.missing: list[list[int]] = []      # sorted [lo, hi, index where it showed]
        self.dropped: set[int] = set()          # from summaries' dropped_seqs
        self.dropped_ranges: list[tuple[int, int]] = []   # from a manifest's dropped_seqs
        self.unverified: set[int] = set()       # seq claimed by tokens that failed
        self.min_seq: int | None = None
        self.max_seq: int | None = None
        self.anchor_seq: int | None = None
        if anchor is not None:
            self._set_anchor(*anchor)

    def _set_anchor(self, seq: int, digest: str | None) -> None:
        self.anchor_seq = self.max_seq = seq
        self.by_seq[seq] = (digest, None)

    def problem(self, name: str, detail: str, seq: int | None = None,
                index: int | None = None) -> None:
        self.problem_counts[name] += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(Problem(name, detail, seq, index))

    def manifest(self, token: str) -> dict[str, Any] | None:
        """Check a bundle's manifest token; its ``since_seq``/``since_hash`` become the anchor."""
        try:
            _, payload = verify(token, self.keys)
            body = json.loads(payload)
            if not isinstance(body, dict):
                raise ValueError
        except VerifyError as exc:
            self.problem(exc.reason, f"manifest: {exc.detail}")
            return None
        except ValueError:
            self.problem("malformed", "manifest payload is not a JSON object")
            return None
        for r in body.get("dropped_seqs") or []:
            if isinstance(r, list) and len(r) == 2 and _is_seq(r[0]) and _is_seq(r[1]):
                self.dropped_ranges.append((r[0], r[1]))
        since: Any = body.get("since_seq")
        if self.anchor_seq is None and not self.by_seq and _is_seq(since, lo=0):
            digest = body.get("since_hash")
            self._set_anchor(since, digest if isinstance(digest, str) else None)
        return body

    def feed(self, token: str) -> None:
        self.index += 1
        try:
            header, payload = verify(token, self.keys)
        except VerifyError as exc:
            seq = _peek_seq(token)
            if seq is not None:
                self.unverified.add(seq)
            self.problem(exc.reason, exc.detail, seq, self.index)
            return
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        if not isinstance(body, dict):
            self.problem("malformed", "payload is not a JSON object", None, self.index)
            return
        self.kids.add(header["kid"])
        kind = body.get("type")
        is_summary = kind == "summary" or (kind is None and "seq" in body)
        kind = "summary" if is_summary else kind if isinstance(kind, str) else "unknown"
        self.counts[kind] += 1
        if not self._same_agent(body, is_summary):
            return
        digest = token_hash(token)
        if is_summary:
            self._summary(body, digest)
        elif digest in self.other_hashes:
            self.problem("duplicate", f"{kind} seen before", None, self.index)
        else:
            self.other_hashes.add(digest)

    def _same_agent(self, body: dict[str, Any], is_summary: bool) -> bool:
        agent, site = body.get("agent_id"), body.get("site")
        if is_summary and (not isinstance(agent, str) or not isinstance(site, str)):
            self.problem("malformed", "summary without agent_id and site",
                         _int_or_none(body.get("seq")), self.index)
            return False
        if agent is None:
            return True           # other documents need not name their agent
        if self.identity is None:
            if isinstance(site, str) and isinstance(agent, str):
                self.identity = (agent, site)
            return True
        if agent != self.identity[0] or site is not None and site != self.identity[1]:
            self.problem("mixed_agents", f"{agent}@{site} among {self.identity[0]}@"
                         f"{self.identity[1]}", _int_or_none(body.get("seq")), self.index)
            return False
        return True

    def _summary(self, body: dict[str, Any], digest: str) -> None:
        raw_seq: Any = body.get("seq")
        prev: Any = body.get("prev")
        if not _is_seq(raw_seq) or not (prev is None or isinstance(prev, str)
                                        and _HEX64.fullmatch(prev)):
            self.problem("malformed", "summary without a valid seq and prev",
                         _int_or_none(raw_seq), self.index)
            return
        seq: int = raw_seq
        dropped = body.get("dropped_seqs")
        if isinstance(dropped, list):
            self.dropped.update(d for d in dropped if _is_seq(d))
        if self.anchor_seq is not None and seq <= self.anchor_seq:
            self.problem("replay", f"seq {seq} is at or before the anchor {self.anchor_seq} "
                         "(already checked before)", seq, self.index)
            return
        seen = self.by_seq.get(seq)
        if seen is not None:
            assert self.max_seq is not None
            same = "the same" if seen[0] == digest else "a different"
            if seq < self.max_seq:
                self.problem("replay", f"seq {seq} again ({same} document) after seq "
                             f"{self.max_seq}", seq, self.index)
            elif seen[0] == digest:
                self.problem("duplicate", f"seq {seq} again", seq, self.index)
            else:
                self.problem("conflict", f"a different document with seq {seq}", seq, self.index)
            return
        if self.max_seq is not None and seq > self.max_seq + 1:
            self.missing.append([self.max_seq + 1, seq - 1, self.index])
        elif self.max_seq is not None and seq < self.max_seq:
            if self._fill(seq):
                self.problem("reorder", f"seq {seq} arrived after seq {self.max_seq}", seq,
                             self.index)
            else:
                self.problem("reorder", f"seq {seq} is older than the first summary seen "
                             f"({self.min_seq})", seq, self.index)
        self.by_seq[seq] = (digest, prev)
        self.max_seq = seq if self.max_seq is None else max(self.max_seq, seq)
        self.min_seq = seq if self.min_seq is None else min(self.min_seq, seq)
        if prev is None and seq != 1:
            self.problem("broken_chain", "prev is null but only seq 1 may start a chain", seq,
                         self.index)
        elif prev is not None and seq == 1:
            self.problem("broken_chain", "seq 1 must have prev null", seq, self.index)
        self._link(seq)
        self._link(seq + 1)

    def _link(self, seq: int) -> None:
        """Check ``prev`` of ``seq`` against the hash of ``seq - 1`` when both are known."""
        cur, before = self.by_seq.get(seq), self.by_seq.get(seq - 1)
        if cur is None or before is None or cur[1] is None or before[0] is None:
            return
        if cur[1] != before[0]:
            self.problem("broken_chain", f"prev {cur[1][:16]}... is not the hash of seq "
                         f"{seq - 1} ({before[0][:16]}...)", seq, self.index)

    def _fill(self, seq: int) -> bool:
        """Take a late ``seq`` out of the missing ranges; False if it was not missing."""
        i = bisect.bisect_right(self.missing, [seq, float("inf")]) - 1
        if i < 0 or not self.missing[i][0] <= seq <= self.missing[i][1]:
            return False
        lo, hi, at = self.missing[i]
        parts = [[a, b, at] for a, b in ((lo, seq - 1), (seq + 1, hi)) if a <= b]
        self.missing[i:i + 1] = parts
        return True

    def _report_missing(self) -> None:
        explained = _merge([(d, d) for d in sorted(self.dropped)] + self.dropped_ranges)
        unverified = [(u, u) for u in sorted(self.unverified)]
        for lo, hi, at in self.missing:
            for a, b, dropped in _split(lo, hi, explained):
                for c, d, failed in ([] if dropped else _split(a, b, unverified)):
                    if not failed:      # failed ones were reported with their token
                        self._missing_problem("gap", c, d, at)
                if dropped:
                    self._missing_problem("dropped_by_agent", a, b, at)

    def _missing_problem(self, name: str, a: int, b: int, at: int) -> None:
        what = f"summary {a} missing" if a == b else f"summaries {a}..{b} missing ({b - a + 1})"
        if name == "dropped_by_agent":
            what += "; the agent reports dropping them (spool full)"
        self.problem(name, what, a, at)

    def _check_manifest(self, manifest: dict[str, Any], documents_sha256: str | None) -> None:
        short: list[str] = []
        other: list[str] = []
        count = manifest.get("count")
        if isinstance(count, int) and count != self.index:
            (short if self.index < count else other).append(
                f"{self.index} document(s), the manifest lists {count}")
        first: Any = manifest.get("first_seq")
        last: Any = manifest.get("last_seq")
        low, top = (self.min_seq, self.max_seq) if self.min_seq is not None else (None, None)
        if _is_seq(last):
            if top is None or top < last:
                short.append(f"last summary is seq {top}, the manifest says {last}")
            elif top > last:
                other.append(f"last summary is seq {top}, the manifest says {last}")
        elif top is not None:
            other.append(f"summaries up to seq {top}, the manifest lists none")
        if _is_seq(first) and low != first:
            (short if low is None or low > first else other).append(
                f"first summary is seq {low}, the manifest says {first}")
        want_hash = manifest.get("last_summary_hash")
        have_hash = self.by_seq[top][0] if top is not None else None
        if want_hash is not None and want_hash != have_hash and not short:
            other.append("the last summary is not the one the manifest names")
        want_sha = manifest.get("documents_sha256")
        if documents_sha256 is not None and want_sha != documents_sha256 and not short:
            other.append("the documents' SHA-256 differs from the manifest's")
        if short:
            self.problem("truncation", "; ".join(short), last if _is_seq(last) else None)
        if other:
            self.problem("manifest_mismatch", "; ".join(other))
        agent, site = manifest.get("agent_id"), manifest.get("site")
        if self.identity and agent is not None and (agent, site) != self.identity:
            self.problem("mixed_agents", f"manifest is for {agent}@{site}, documents for "
                         f"{self.identity[0]}@{self.identity[1]}")

    def finish(self, manifest: dict[str, Any] | None = None,
               documents_sha256: str | None = None) -> Verdict:
        """The verdict; ``manifest`` (as returned by :meth:`manifest`) is checked if given."""
        self._report_missing()
        if manifest is not None:
            self._check_manifest(manifest, documents_sha256)
        elif self.index == 0 and not self.problem_counts:
            self.problem("empty", "no documents")
        self.problems.sort(key=lambda p: (p.index is None, p.index or 0))
        last_hash = (self.by_seq[self.max_seq][0]
                     if self.min_seq is not None and self.max_seq is not None else None)
        return Verdict(
            ok=not self.problem_counts, documents=self.index, counts=dict(self.counts),
            first_seq=self.min_seq, last_seq=self.max_seq if self.min_seq is not None else None,
            last_hash=last_hash, agent_id=self.identity[0] if self.identity else None,
            site=self.identity[1] if self.identity else None, kids=sorted(self.kids),
            problems=self.problems, problem_counts=dict(self.problem_counts))


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, with touching ranges joined."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _split(lo: int, hi: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int, bool]]:
    """``lo..hi`` cut into runs, each flagged whether it lies in one of the sorted ``ranges``."""
    out: list[tuple[int, int, bool]] = []
    cur = lo
    for a, b in ranges[max(0, bisect.bisect_right(ranges, (lo, lo)) - 1):]:
        if a > hi:
            break
        if b < cur:
            continue
        if a > cur:
            out.append((cur, a - 1, False))
        out.append((max(a, cur), min(b, hi), True))
        cur = min(b, hi) + 1
    if cur <= hi:
        out.append((cur, hi, False))
    return out


def _is_seq(value: Any, lo: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo


def _int_or_none(value: Any) -> int | None:
    return value if _is_seq(value, lo=0) else None


def _peek_seq(token: str) -> int | None:
    """The seq a token that failed verification claims, for the report only."""
    try:
        body = json.loads(split(token)[1])
    except (VerifyError, ValueError):
        return None
    return _int_or_none(body.get("seq")) if isinstance(body, dict) else None
