"""The plant in a box (``tests/plant_box.py``), end to end, as ``scripts/demo-plant`` shows it.

Real stacks (pymodbus, python-snap7, c104) poll PLCs behind a bridge whose access ports are
mirrored to the agent's capture interface; the agent runs as the service user with only
CAP_NET_RAW, learns the site for 30 s, watches 15 s of normal polling, then sees an
unauthorised Modbus write, an S7 PLC stop and a scan from the engineering workstation. The
operator sends ``ping`` and ``status`` through the broker. Everything is read back from the
collector's database at the centre, which got it over TLS on the management link:

- every attack's signed alert within 5 s of the attack's first packet being sent,
- no finding at all (alert or in a summary) during normal polling after learning,
- every command's signed result, verified by ``fleet send`` and stored by the collector,
- the chain of summaries intact, nothing rejected.

One plant for the module (about 70 s); skipped with the reason when not root or when a
stack, mosquitto, iproute2 or setpriv is missing.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.plant_box import (
    AGENT_ID,
    CAP_NET_RAW,
    CAPTURE_IF,
    MGMT_IF,
    Outcome,
    PlantBox,
    Unavailable,
    missing_requirements,
    scenario,
)

LEARN_S = 30.0        # >= 20 windows of 1 s: the model is calibrated to the site too
QUIET_S = 15.0
MAX_LATENCY_S = 5.0


@pytest.fixture(scope="module")
def box() -> Iterator[PlantBox]:
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    try:
        with PlantBox(learn_s=LEARN_S, window_s=1.0) as b:
            yield b
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def outcome(box: PlantBox) -> Outcome:
    return scenario(box, QUIET_S, tell=lambda _m: None)


def _log(box: PlantBox, out: Outcome) -> str:
    agent = (box.logs / "agent.log").read_text(errors="replace")[-3000:]
    return "\n".join(out.log) + "\n--- agent log ---\n" + agent


def test_agent_runs_as_the_service_user_with_only_cap_net_raw(box: PlantBox,
                                                               outcome: Outcome) -> None:
    caps = outcome.agent_caps
    assert caps["Uid"][1] != 0 and caps["Uid"] == [box.user.uid] * 4   # type: ignore[union-attr]
    for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert caps[name] == CAP_NET_RAW, (name, hex(caps[name]))
    assert caps["NoNewPrivs"] == 1
    st = os.stat(box.state / "spool.sqlite")
    assert st.st_uid == box.user.uid                                      # type: ignore[union-attr]


def test_capture_interface_carries_no_address_and_management_is_another(box: PlantBox) -> None:
    def addrs(dev: str) -> list[str]:
        out = box.run(box.mon, ["ip", "-o", "addr", "show", "dev", dev]).stdout
        return [ln.split()[3] for ln in out.splitlines() if " inet" in ln]

    assert addrs(CAPTURE_IF) == []
    assert addrs(MGMT_IF) == [f"{box.mgmt_ip}/24"]
    # The agent's broker connection leaves by the management link.
    conns = box.run(box.mon, ["ss", "-Htn", "state", "established"]).stdout
    assert f"{box.mgmt_ip}:" in conns and f"{box.broker_ip}:8883" in conns, conns


def test_no_finding_during_normal_polling_after_learning(box: PlantBox,
                                                         outcome: Outcome) -> None:
    q0, q1 = outcome.quiet
    assert q1 - q0 >= QUIET_S - 2
    assert outcome.quiet_summaries >= QUIET_S - 3, _log(box, outcome)
    assert outcome.quiet_alerts == [], _log(box, outcome)
    assert outcome.quiet_findings == [], _log(box, outcome)


@pytest.mark.parametrize("attack", ["write", "stop", "scan"])
def test_attack_alert_reaches_the_collector_within_5_s(box: PlantBox, outcome: Outcome,
                                                       attack: str) -> None:
    (res,) = [a for a in outcome.attacks if a.name == attack]
    assert res.output["ok"], res.output
    assert res.alert is not None, f"no {res.rule} alert for the {res.what}\n{_log(box, outcome)}"
    a = res.alert
    assert a.src_ip == box.ip_of("ews")
    assert a.dest_ip == box.ip_of({"write": "plc1", "stop": "plc2", "scan": "plc1"}[attack])
    assert a.severity in ("high", "critical")
    assert 0 <= res.detection < MAX_LATENCY_S                 # type: ignore[operator]
    assert res.latency < MAX_LATENCY_S, (res.latency, a)      # type: ignore[operator]


def test_stop_attack_really_stopped_the_cpu(box: PlantBox, outcome: Outcome) -> None:
    assert [a.name for a in outcome.attacks] == ["write", "stop", "scan"]
    assert "cpu state STOP" in (box.logs / "plc2.log").read_text()


@pytest.mark.parametrize("cmd", ["ping", "status"])
def test_fleet_command_result_verified_and_collected(box: PlantBox, outcome: Outcome,
                                                     cmd: str) -> None:
    (res,) = [c for c in outcome.commands if c.cmd == cmd]
    assert res.ok, (res.exit_code, res.output, res.stderr)
    assert res.output is not None and res.output["jti"] == res.jti
    assert res.output["agent_id"] == AGENT_ID
    assert res.stored_at is not None, "the result is not in the collector's database"
    if cmd == "ping":
        assert res.output["result"]["pong"] is True
    else:
        st = res.output["result"]
        assert st["capture"]["dropped"] == 0 and st["packets"] > 0
        assert st["detection"]["baseline_rules"] == "on"


def test_the_centre_holds_an_intact_chain(box: PlantBox, outcome: Outcome) -> None:
    r = outcome.collector_report
    assert r["intact"], r
    assert r["rejects"] == {} and r["duplicates"] == 0
    assert r["alerts"] >= 3 and r["cmd_results"] == 2
    # SIGTERM, as systemd stops it: a clean exit.
    assert box.stop_agent() == 0
