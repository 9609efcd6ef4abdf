"""Is this token a command this agent must run? Signature, audience, time and replay.

Checks run in this order, and a token stops at the first one it fails; each refusal has a
stable name (``REFUSALS``), is counted, and never reaches a handler:

1. size and shape (``malformed``), then the EdDSA signature by a trusted operator key
   (``unknown_key``, ``bad_signature``; ``alg: none`` or any other alg is a ``bad_signature``);
   nothing of the payload is read before the signature holds;
2. ``typ`` and claims (``malformed``): exactly ``aud, jti, iat, exp, cmd, args``, each of its
   type, times finite numbers (JSON allows NaN, which compares false with everything);
3. ``aud`` names this agent, ``site:<our site>`` or ``*`` (``wrong_audience``);
4. ``iat - skew <= now <= exp + skew`` (``not_yet_valid``, ``expired``) and
   ``exp - iat <= max_ttl_s`` (``ttl_too_long``): a leaked command dies within a week;
5. replay (``replayed``, ``stale``), then ``cmd`` and ``args`` against the handlers'
   schemas (``unknown_command``, ``bad_args``).

Replay. :class:`ReplayStore` keeps every decided ``jti`` with its signed result in the spool's
SQLite file, so it survives restarts and a duplicate delivery gets the stored result back
instead of a second run. It is bounded by ``max_entries``. Forgetting a ``jti`` that has not
expired would let it run again, and so would forgetting an expired one while the clock can go
back (a Raspberry Pi has no RTC and boots with the time it shut down at). So when full the
store forgets the command issued first and raises a floor to its ``iat``: a command issued at
or before the floor can no longer be told from a replay and is refused as ``stale``. New
commands are never blocked (their ``iat`` is now), whatever the clock did; only a command
issued before ``max_entries`` later ones were run needs signing again. Refusing every command
once the store is full, the other way to stay safe, would leave a gateway unmanageable for up
to ``max_ttl_s`` after a burst of commands.
"""
from __future__ import annotations

import json
import logging
import math
import sqlite3
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.commands import CMD_TYP
from edge_agent.config import ConfigError
from edge_agent.summary.sign import (
    JWS_ALG,
    VerifyError,
    dumps,
    kid_of,
    load_public_keys,
    sign_compact,
    verify,
)

log = logging.getLogger(__name__)

REFUSALS = ("malformed", "unknown_key", "bad_signature", "wrong_audience", "not_yet_valid",
            "expired", "ttl_too_long", "replayed", "stale", "unknown_command", "bad_args")
# Refusals of a command that is authentic, ours and current get a signed result, so the
# operator learns why. The others get none: answering them would let anyone who can write
# the command topic fill the spool with answers to forgeries or to old tokens.
ANSWERED = frozenset({"unknown_command", "bad_args"})
MAX_TOKEN_BYTES = 8 << 20     # a model_update carries the base64 ONNX (the shipped one: 5 KiB)
MAX_JTI = 128
MAX_AUD = 64
CLAIMS = frozenset({"aud", "jti", "iat", "exp", "cmd", "args"})
_SIGN_REASONS = {"malformed": "malformed", "bad_header": "malformed",
                 "unsupported_alg": "bad_signature", "unknown_kid": "unknown_key",
                 "bad_signature": "bad_signature"}

ArgsCheck = Callable[[dict[str, Any]], "str | None"]


@dataclass(frozen=True)
class Command:
    """A command that passed every check: run it, then record its result."""

    jti: str
    cmd: str
    args: dict[str, Any]
    aud: tuple[str, ...]
    iat: float
    exp: float
    kid: str          # the operator key that signed it


@dataclass(frozen=True)
class Recorded:
    """A decided command in the replay store, with the signed result document."""

    n: int
    jti: str
    cmd: str
    ok: bool
    token: str
    stored_at: float


@dataclass(frozen=True)
class Refusal:
    """Why a token is not run. ``command`` is set once the signature and claims held."""

    reason: str
    detail: str
    command: Command | None = None
    previous: Recorded | None = None     # ``replayed``: what the first delivery produced

    @property
    def answered(self) -> bool:
        return self.reason in ANSWERED and self.command is not None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    jti TEXT NOT NULL UNIQUE,
    iat REAL NOT NULL,
    exp REAL NOT NULL,
    cmd TEXT NOT NULL,
    ok INTEGER NOT NULL,
    result TEXT NOT NULL,
    stored_at REAL NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS commands_iat ON commands (iat);
CREATE TABLE IF NOT EXISTS command_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ReplayStore:
    """Every ``jti`` this agent decided, with its signed result; see the module docstring.

    It lives in the spool's SQLite file (tables ``commands``, ``command_meta``) through a
    connection of its own: one file to back up, and wiping the spool wipes both. ``n``
    numbers the records in order; the executor commits the highest ``n`` whose result is in
    the outbox together with that document (spool meta), which is how a result recorded just
    before a crash still reaches the outbox exactly once.
    """

    def __init__(self, path: str | Path, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_entries = max_entries
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")      # the MQTT ack waits for this commit
        self.db.execute("PRAGMA busy_timeout=5000")
        with self.db:
            self.db.executescript(_SCHEMA)

    def floor(self) -> float:
        """Commands issued at or before this ``iat`` may have been forgotten."""
        row = self.db.execute("SELECT value FROM command_meta WHERE key = 'floor'").fetchone()
        return float(row[0]) if row else -math.inf

    def get(self, jti: str) -> Recorded | None:
        row = self.db.execute("SELECT n, jti, cmd, ok, result, stored_at FROM commands "
                              "WHERE jti = ?", (jti,)).fetchone()
        return Recorded(row[0], row[1], row[2], bool(row[3]), row[4], row[5]) if row else None

    def seen(self, jti: str) -> bool:
        return self.get(jti) is not None

    def record(self, jti: str, iat: float, exp: float, cmd: str, ok: bool, result_token: str,
               now: float, pending: bool = False) -> int:
        """Store a decision (one transaction, fsynced); return its ``n``. ``pending``: the
        command has a second step to run once its result is durable (see :meth:`pending`)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            count = self.db.execute("SELECT count(*) FROM commands").fetchone()[0]
            if count >= self.max_entries:
                rows = self.db.execute("SELECT n, iat FROM commands ORDER BY iat, n LIMIT ?",
                                       (count - self.max_entries + 1,)).fetchall()
                self.db.executemany("DELETE FROM commands WHERE n = ?", [(r[0],) for r in rows])
                floor = max(self.floor(), max(r[1] for r in rows))
                self.db.execute("INSERT OR REPLACE INTO command_meta VALUES ('floor', ?)",
                                (repr(floor),))
                log.info("replay store full (%d): forgot %d command(s); commands issued at "
                         "or before %s are refused as stale", self.max_entries, len(rows), floor)
            n = self.db.execute(
                "INSERT INTO commands (jti, iat, exp, cmd, ok, result, stored_at, pending) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (jti, iat, exp, cmd, int(ok), result_token, now, int(pending))).lastrowid
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        assert n is not None
        return n

    def touch(self, jti: str, now: float) -> None:
        """The stored result went to the outbox again at ``now``."""
        self.db.execute("UPDATE commands SET stored_at = ? WHERE jti = ?", (now, jti))

    def pending(self) -> list[tuple[str, str]]:
        """``(jti, cmd)`` of the commands whose second step has not run yet, in order."""
        return self.db.execute("SELECT jti, cmd FROM commands WHERE pending = 1 ORDER BY n"
                               ).fetchall()

    def done(self, jti: str) -> None:
        self.db.execute("UPDATE commands SET pending = 0 WHERE jti = ?", (jti,))

    def after(self, n: int) -> list[tuple[int, str]]:
        """``(n, result token)`` of the records after ``n``, in order."""
        return self.db.execute("SELECT n, result FROM commands WHERE n > ? ORDER BY n",
                               (n,)).fetchall()

    def __len__(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM commands").fetchone()[0])

    def close(self) -> None:
        self.db.close()


def load_operator_keys(entries: list[str], key: str = "fleet.operator_keys"
                       ) -> dict[str, Ed25519PublicKey]:
    """The trusted operator keys: each entry a file (PEM, JWK, JWK Set) or the key's text."""
    keys: dict[str, Ed25519PublicKey] = {}
    for i, entry in enumerate(entries):
        try:
            keys.update(load_public_keys(entry))
        except ValueError as exc:
            raise ConfigError(key, f"entry {i + 1}: {exc}") from None
    return keys


def sign_command(key: Ed25519PrivateKey, cmd: str, args: dict[str, Any], aud: str | list[str],
                 now: float, ttl_s: float, jti: str | None = None) -> str:
    """A command token, as ``edge-agent fleet sign`` makes it (the operator's side)."""
    claims = {"aud": aud, "jti": jti or uuid.uuid4().hex, "iat": int(now),
              "exp": int(now + ttl_s), "cmd": cmd, "args": args}
    header = {"alg": JWS_ALG, "kid": kid_of(key.public_key()), "typ": CMD_TYP}
    return sign_compact(key, header, dumps(claims))


def _default_checks() -> Mapping[str, ArgsCheck]:
    from edge_agent.commands.handlers import HANDLERS
    return {name: h.check_args for name, h in HANDLERS.items()}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _claims(payload: bytes) -> dict[str, Any] | str:
    """The claims, or what is wrong with them."""
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        return "payload is not JSON"
    if not isinstance(claims, dict):
        return "payload is not a JSON object"
    if set(claims) != CLAIMS:
        missing, extra = sorted(CLAIMS - set(claims)), sorted(set(claims) - CLAIMS)
        return "claims " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) +
            ([f"unknown {', '.join(extra[:5])}"] if extra else []))
    aud, jti = claims["aud"], claims["jti"]
    auds = aud if isinstance(aud, list) else [aud]
    if not auds or len(auds) > MAX_AUD or not all(isinstance(a, str) and a for a in auds):
        return "aud must be a non-empty string or list of strings"
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI or not jti.isascii() \
            or not jti.isprintable():
        return f"jti must be 1 to {MAX_JTI} printable ASCII characters"
    if not _number(claims["iat"]) or not _number(claims["exp"]):
        return "iat and exp must be finite numbers (seconds since the epoch)"
    if not isinstance(claims["cmd"], str) or not claims["cmd"]:
        return "cmd must be a non-empty string"
    if not isinstance(claims["args"], dict):
        return "args must be a JSON object"
    return claims


@dataclass
class CommandVerifier:
    """Decides whether a token is a command for this agent; see the module docstring.

    Sans-I/O but for the replay store: ``now`` is passed in. Not thread-safe: check and run
    commands on one thread, one at a time (a duplicate must find its first delivery recorded).
    """

    operator_keys: dict[str, Ed25519PublicKey]
    agent_id: str
    site: str
    skew_s: float
    replay: ReplayStore
    max_ttl_s: float = 604_800.0
    checks: Mapping[str, ArgsCheck] = field(default_factory=_default_checks)
    counts: Counter[str] = field(default_factory=Counter)

    def check(self, token: str | bytes, now: float) -> Command | Refusal:
        verdict = self._check(token, now)
        self.counts[verdict.reason if isinstance(verdict, Refusal) else "accepted"] += 1
        return verdict

    def counters(self) -> dict[str, int]:
        """Commands accepted and refused (by reason) since start; every reason present."""
        return {"accepted": self.counts["accepted"], **{r: self.counts[r] for r in REFUSALS}}

    def _check(self, token: str | bytes, now: float) -> Command | Refusal:
        if not isinstance(token, (str, bytes, bytearray)):
            return Refusal("malformed", f"a {type(token).__name__}, not a token")
        if len(token) > MAX_TOKEN_BYTES:
            return Refusal("malformed", f"{len(token)} bytes; at most {MAX_TOKEN_BYTES}")
        if isinstance(token, (bytes, bytearray)):
            try:
                token = bytes(token).decode("ascii").strip()
            except UnicodeDecodeError:
                return Refusal("malformed", "not ASCII")
        try:
            header, payload = verify(token.strip(), self.operator_keys)
        except VerifyError as exc:
            return Refusal(_SIGN_REASONS[exc.reason], str(exc))
        except RecursionError:      # a header of nested brackets
            return Refusal("malformed", "header nested too deeply")
        if header.get("typ") != CMD_TYP:
            return Refusal("malformed", f"typ {header.get('typ')!r} is not {CMD_TYP!r}")
        claims = _claims(payload)
        if isinstance(claims, str):
            return Refusal("malformed", claims)
        aud = claims["aud"]
        cmd = Command(jti=claims["jti"], cmd=claims["cmd"], args=claims["args"],
                      aud=tuple(aud) if isinstance(aud, list) else (aud,),
                      iat=float(claims["iat"]), exp=float(claims["exp"]), kid=header["kid"])
        ours = {self.agent_id, f"site:{self.site}", "*"}
        if not ours.intersection(cmd.aud):
            return Refusal("wrong_audience", f"aud {list(cmd.aud)[:4]} is not {self.agent_id}, "
                                             f"site:{self.site} or *", cmd)
        if cmd.exp < cmd.iat:
            return Refusal("malformed", "exp is before iat", cmd)
        if cmd.exp - cmd.iat > self.max_ttl_s:
            return Refusal("ttl_too_long", f"valid for {cmd.exp - cmd.iat:.0f} s; at most "
                                           f"{self.max_ttl_s:.0f} s (fleet.max_ttl_s)", cmd)
        if now < cmd.iat - self.skew_s:
            return Refusal("not_yet_valid", f"issued at {cmd.iat:.0f}, the gateway clock says "
                                            f"{now:.0f} (fleet.clock_skew_s {self.skew_s:g})", cmd)
        if now > cmd.exp + self.skew_s:
            return Refusal("expired", f"expired at {cmd.exp:.0f}, the gateway clock says "
                                      f"{now:.0f} (fleet.clock_skew_s {self.skew_s:g})", cmd)
        previous = self.replay.get(cmd.jti)
        if previous is not None:
            return Refusal("replayed", f"jti {cmd.jti} was decided already", cmd, previous)
        if cmd.iat <= self.replay.floor():
            return Refusal("stale", f"issued at {cmd.iat:.0f}, before what the replay store "
                                    "still remembers (fleet.replay_entries): sign it again", cmd)
        check = self.checks.get(cmd.cmd)
        if check is None:
            return Refusal("unknown_command", f"no command {cmd.cmd[:64]!r}; known: "
                                              f"{', '.join(sorted(self.checks))}", cmd)
        problem = check(cmd.args)
        if problem:
            return Refusal("bad_args", problem, cmd)
        return cmd
