"""A plant in a box: PLCs, an HMI, a SCADA master, an engineering workstation, a switch with
a mirror port, the agent on it as a hardened service, and the central broker and collector.

```
 ea-plc1-T  10.77.N.11  Modbus/TCP server (pymodbus)       ┐
 ea-plc2-T  10.77.N.12  S7comm server (python-snap7)       │
 ea-rtu-T   10.77.N.13  IEC 60870-5-104 outstation (c104)  │  eth0 ── p-<name> ─┐
 ea-hmi-T   10.77.N.21  HMI: polls PLC-1 and PLC-2, writes │                    ├─ br0 (ea-sw-T)
 ea-scada-T 10.77.N.22  SCADA: IEC 104 controlling station │                    │
 ea-ews-T   10.77.N.31  engineering workstation (attacker) ┘                    │
      every p-<name> ingress ── tc clsact + u32 + mirred ─▶ span0 ═══ cap0 (ea-mon-T, no address)
 ea-mon-T   cap0: the agent's capture   mgmt0 10.78.N.2 ═══ eth0 10.78.N.1 ea-ctl-T
 ea-ctl-T   mosquitto (TLS, client certificates, ACL) :8883, `edge-agent collect`, the operator
```

The switch mirrors the *ingress* of every access port: each frame enters the bridge exactly
once, from its sender's port, so the mirror port sees every frame of the plant once (a SPAN
session on all access ports, "rx" direction). The kernel has no ``matchall`` classifier and
may lack the ``prio`` qdisc, so the mirror is ``clsact`` + ``u32 match u8 0 0`` (anything) +
``mirred egress mirror``, as in :mod:`tests.capture.netns`.

The agent's management link (``mgmt0``, to the broker) is a different interface from its
capture interface (``cap0``, no IP address), as on a gateway. The agent runs as the service
user (``edge-agent``, or ``edge-agent-test`` created here when that does not exist) with only
``CAP_NET_RAW`` in its effective, permitted, inheritable, ambient and bounding sets and
``no_new_privs``: what the systemd unit of ``scripts/install-gateway`` grants. When the
service user cannot run the development interpreter (a pyenv under ``/root``, mode 0700), the
agent runs in a small virtual environment of the system's Python that reaches the development
packages through a ``.pth`` (same Python minor version, so the same wheels), the way
``install-gateway`` runs it from ``/opt/edge-agent``. Everything the agent reads lives in a
work directory under ``/var/tmp`` (pytest's ``tmp_path`` is under a 0700 directory).

Shared by ``scripts/demo-plant`` (prints each step for a person) and ``tests/test_plant.py``
(asserts on the same figures): the script puts the repository root on ``sys.path`` and
imports this module, because ``scripts/`` is not a package and the test helpers it builds on
(:mod:`tests.capture.netns`, :mod:`tests.transport.broker`) already live here.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.capture.netns import Plant
from tests.capture.netns import missing_requirements as netns_missing
from tests.transport.broker import CA, _find_mosquitto

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable          # the development venv: stacks, collector, operator
AGENT_ID, SITE = "gw-plant", "plant-box"
BROKER_PORT = 8883
PREFIX = "edge-agent"
CAPTURE_IF, MGMT_IF, HOST_IF = "cap0", "mgmt0", "eth0"
CAP_NET_RAW = 1 << 13            # capability(7) number 13
MODBUS_PORT, S7_PORT, IEC104_PORT = 502, 102, 2404
IEC104_CA = 47
SERVICE_USERS = ("edge-agent", "edge-agent-test")   # the installed one first

# host name -> (last octet, role)
HOSTS = {
    "plc1": (11, "Modbus/TCP PLC (pymodbus)"),
    "plc2": (12, "S7 CPU (python-snap7)"),
    "rtu": (13, "IEC 60870-5-104 RTU (c104)"),
    "hmi": (21, "HMI: Modbus + S7 polling, setpoint writes"),
    "scada": (22, "SCADA: IEC 104 controlling station"),
    "ews": (31, "engineering workstation"),
}


class Unavailable(Exception):
    """This machine cannot run the plant (the reason says why): the test skips with it."""


def missing_requirements() -> str | None:
    problem = netns_missing()
    if problem:
        return problem
    for tool in ("setpriv", "useradd"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if _find_mosquitto() is None:
        return "mosquitto is not installed (scripts/setup installs it)"
    import importlib.util
    for mod, dist in (("pymodbus", "pymodbus"), ("snap7", "python-snap7"), ("c104", "c104")):
        if importlib.util.find_spec(mod) is None:
            return f"{dist} is not installed in {PYTHON}: pip install {dist}"
    return None


def _run(argv: Sequence[str], timeout: float = 30.0, **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=timeout,
                          check=False, **kw)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, argv))}: exit {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def snippet(code: str) -> str:
    return textwrap.dedent(code).strip() + "\n"


# --- the service user and an interpreter it can run --------------------------------------------

@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int
    created: bool = False

    def setpriv(self, caps: bool = True) -> list[str]:
        """The prefix that runs a command as this user; with ``caps``, keeping only
        CAP_NET_RAW (what the systemd unit's AmbientCapabilities/CapabilityBoundingSet give)."""
        argv = ["setpriv", "--reuid", str(self.uid), "--regid", str(self.gid), "--init-groups",
                "--no-new-privs"]
        if caps:
            argv += ["--inh-caps", "+net_raw", "--ambient-caps", "+net_raw",
                     "--bounding-set", "-all,+net_raw"]
        else:
            argv += ["--inh-caps", "-all", "--bounding-set", "-all"]
        return argv + ["--"]


def service_user() -> ServiceUser:
    """``edge-agent`` when scripts/install-gateway made it, else ``edge-agent-test`` (made here:
    a system user without a home or a login shell)."""
    for name in SERVICE_USERS:
        try:
            pw = pwd.getpwnam(name)
            return ServiceUser(name, pw.pw_uid, pw.pw_gid)
        except KeyError:
            continue
    name = SERVICE_USERS[-1]
    nologin = shutil.which("nologin") or "/usr/sbin/nologin"
    _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
          "--shell", nologin, name])
    pw = pwd.getpwnam(name)
    return ServiceUser(name, pw.pw_uid, pw.pw_gid, created=True)


def service_python(where: Path, user: ServiceUser) -> str:
    """An interpreter the service user can execute that imports this checkout's agent.

    The development interpreter when the user can run it; otherwise a virtual environment of
    the system's Python (created once under ``where``) whose ``.pth`` adds the development
    site-packages: the same minor version, so the same compiled wheels.
    """
    # Not just "does it start": an interpreter that cannot read its own prefix may still
    # start, on another Python's standard library.
    probe = [*user.setpriv(caps=False), PYTHON, "-c",
             f"import sys, edge_agent; sys.exit(sys.base_prefix != {sys.base_prefix!r})"]
    if subprocess.run(probe, capture_output=True, timeout=60, cwd="/", check=False).returncode == 0:
        return PYTHON
    venv = where / "service-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        system = shutil.which("python3", path="/usr/bin:/usr/local/bin:/bin")
        if system is None:
            raise Unavailable("the service user cannot run the development interpreter "
                              f"({PYTHON}) and there is no system python3")
        ver = _run([system, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout
        if ver.strip() != "{}.{}".format(*sys.version_info[:2]):
            raise Unavailable(f"the service user cannot run {PYTHON} and the system python3 "
                              f"is {ver.strip()}, not {sys.version_info[0]}.{sys.version_info[1]}")
        _run([system, "-m", "venv", "--without-pip", str(venv)], timeout=120)
        purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        site = Path(_run([str(py), "-c", purelib]).stdout.strip())
        dev = sysconfig.get_paths()["purelib"]
        (site / "edge_agent_dev.pth").write_text(f"import site; site.addsitedir({dev!r})\n")
        for d in [venv, *venv.rglob("*")]:
            if d.is_dir():
                d.chmod(0o755)
    proc = subprocess.run([*user.setpriv(caps=False), str(py), "-c", "import edge_agent"],
                          capture_output=True, text=True, timeout=60, cwd="/", check=False)
    if proc.returncode:
        raise Unavailable(f"the service user cannot import the agent: {proc.stderr[-500:]}")
    return str(py)


def capabilities(pid: int) -> dict[str, Any]:
    """Uid and capability sets of a running process, from /proc/<pid>/status."""
    out: dict[str, Any] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            out[key] = int(value.strip(), 16)
        elif key in ("Uid", "Gid"):
            out[key] = [int(v) for v in value.split()]
        elif key == "NoNewPrivs":
            out[key] = int(value)
    return out


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc_io(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = int(v)
    return out


# --- the centre: mosquitto with TLS in its own namespace, the collector, the operator ---------

class Centre:
    """mosquitto on ``ip:8883`` inside namespace ``ns``: TLS, client certificates (the CN is
    the user name), the fleet ACL; the collector and the operator identities."""

    def __init__(self, plant: Plant, ns: str, ip: str, directory: Path,
                 agents: dict[str, str]) -> None:
        self.plant, self.ns, self.ip, self.dir = plant, ns, ip, directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = CA(self.dir / "pki")
        self.ca_file = self.ca.file
        self.server_cert = self._server_cert()
        self.agents = agents
        self.log = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self.url = f"mqtts://{ip}:{BROKER_PORT}"

    def _server_cert(self) -> tuple[Path, Path]:
        """The broker's certificate names its management address (CA.issue names 127.0.0.1)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(self.ca.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(self.ip))]), critical=False)
                .sign(self.ca.key, hashes.SHA256()))
        crt, kf = self.dir / "pki" / "broker.crt", self.dir / "pki" / "broker.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kf.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        kf.chmod(0o600)
        return crt, kf

    def client_cert(self, cn: str) -> tuple[Path, Path]:
        crt, key = self.dir / "pki" / f"{cn}.crt", self.dir / "pki" / f"{cn}.key"
        if not crt.exists():
            self.ca.issue(cn)
        return crt, key

    def start(self) -> None:
        acl = ["user collector", f"topic read {PREFIX}/#", "",
               "user operator", f"topic write {PREFIX}/+/+/cmd", f"topic write {PREFIX}/+/cmd",
               f"topic write {PREFIX}/cmd", f"topic read {PREFIX}/+/+/cmd/result",
               f"topic read {PREFIX}/+/+/status", ""]
        for cn, site in self.agents.items():
            acl += [f"user {cn}", f"topic write {PREFIX}/{site}/{cn}/#",
                    f"topic read {PREFIX}/{site}/{cn}/cmd", f"topic read {PREFIX}/{site}/cmd",
                    f"topic read {PREFIX}/cmd", ""]
        (self.dir / "acl").write_text("\n".join(acl))
        crt, key = self.server_cert
        conf = self.dir / "mosquitto.conf"
        conf.write_text(f"""\
user root
per_listener_settings true
persistence false
max_queued_messages 100000
log_dest file {self.log}
log_type error
log_type warning
log_type notice
connection_messages true
listener {BROKER_PORT} {self.ip}
allow_anonymous false
cafile {self.ca_file}
certfile {crt}
keyfile {key}
require_certificate true
use_identity_as_username true
acl_file {self.dir / 'acl'}
""")
        self.proc = self.plant.popen(self.ns, [_find_mosquitto() or "mosquitto", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.plant.wait_listening(self.ns, BROKER_PORT, timeout=10)

    def tls_args(self, cn: str, key_flag: str = "--key") -> list[str]:
        crt, key = self.client_cert(cn)
        return ["--ca", str(self.ca_file), "--cert", str(crt), key_flag, str(key)]


def start_logged(plant: Plant, ns: str, log: Path, argv: Sequence[str], **kw: Any
                 ) -> subprocess.Popen:
    """``argv`` in namespace ``ns``, stdout and stderr to the file ``log``."""
    with open(log, "wb") as out:
        return plant.popen(ns, list(map(str, argv)), stdout=out, stderr=subprocess.STDOUT,
                           **{"cwd": ROOT, **kw})


def wait_line(proc: subprocess.Popen, log: Path, text: str, timeout: float) -> None:
    """Until ``text`` appears in the process's log; its exit or the timeout is an error."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"{log.stem} exited ({proc.returncode}):\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{log.stem}: no {text!r} within {timeout} s:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def start_collector(plant: Plant, ns: str, centre: Centre, keys: Path, db: Path, log: Path
                    ) -> subprocess.Popen:
    """``edge-agent collect`` at the centre, waited for until it has subscribed."""
    proc = start_logged(plant, ns, log, [
        PYTHON, "-m", "edge_agent", "collect", "--broker", centre.url,
        *centre.tls_args("collector"), "--keys", str(keys), "--db", str(db),
        "--client-id", f"collector-{plant.tag}"])
    wait_line(proc, log, "subscribed to", 20)
    return proc


@dataclass
class AgentInstall:
    """The agent set up as scripts/install-gateway sets it up: the service user owns the state
    directory (0700) and its TLS key; configuration and certificates are readable to it."""

    workdir: Path
    user: ServiceUser
    python: str
    cfg: Path
    state: Path
    env: dict[str, str]
    agent_id: str

    @classmethod
    def create(cls, workdir: Path, centre: Centre, agent_id: str, site: str, sections: str,
               name: str = "agent", agent_keys: str = "") -> AgentInstall:
        """``sections``: TOML sections after [agent] and [mqtt]; ``agent_keys``: more lines of
        [agent] (e.g. a status_file on tmpfs)."""
        user = service_user()
        python = service_python(workdir, user)
        crt, key = centre.client_cert(agent_id)
        pki = workdir / f"{name}-pki"
        pki.mkdir(exist_ok=True)
        for src in (crt, key, centre.ca_file):
            shutil.copy(src, pki / src.name)
        os.chown(pki, 0, user.gid)
        pki.chmod(0o750)
        for f in pki.iterdir():
            os.chown(f, user.uid, user.gid)
            f.chmod(0o600 if f.suffix == ".key" else 0o644)
        state = workdir / f"{name}-state"
        state.mkdir(mode=0o700, exist_ok=True)
        os.chown(state, user.uid, user.gid)
        cfg = workdir / f"{name}.toml"
        cfg.write_text(f"""\
[agent]
id = "{agent_id}"
site = "{site}"
state_dir = "{state}"
{agent_keys}
[mqtt]
url = "{centre.url}"
ca_file = "{pki / centre.ca_file.name}"
cert_file = "{pki / crt.name}"
key_file = "{pki / key.name}"
reconnect_min_s = 0.2
reconnect_max_s = 2.0

{sections}""")
        cfg.chmod(0o644)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(state), "LANG": "C.UTF-8"}
        return cls(workdir, user, python, cfg, state, env, agent_id)

    def as_user(self, caps: bool = False) -> list[str]:
        return [*self.user.setpriv(caps=caps), self.python, "-m", "edge_agent"]

    def enrol(self, keys: Path) -> str:
        """Create the device key (as the service user) and put its public half in the
        centre's key directory; its kid."""
        _run(self.as_user() + ["keys", "init", "--config", str(self.cfg)], env=self.env, cwd="/")
        shown = _run(self.as_user() + ["keys", "show", "--json", "--config", str(self.cfg)],
                     env=self.env, cwd="/").stdout
        keys.mkdir(parents=True, exist_ok=True)
        (keys / f"{self.agent_id}.json").write_text(shown)
        return json.loads(shown)["kid"]

    def start(self, plant: Plant, ns: str, log: Path, timeout: float = 30.0
              ) -> subprocess.Popen:
        """``edge-agent run`` as the service user with only CAP_NET_RAW, waited for until it
        captures."""
        proc = start_logged(plant, ns, log, self.as_user(caps=True) +
                            ["run", "--config", str(self.cfg)], env=self.env, cwd="/")
        wait_line(proc, log, "capturing on", timeout)
        return proc


# --- the plant's programs ----------------------------------------------------------------------

MODBUS_SERVER = r"""
import logging, sys
from pymodbus.server import StartTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
host, port = sys.argv[1], int(sys.argv[2])
device = SimDevice(id=1, simdata=(
    [SimData(0, count=64, values=False, datatype=DataType.BITS)],
    [SimData(0, count=64, values=False, datatype=DataType.BITS)],
    [SimData(0, values=[500 + i for i in range(64)], datatype=DataType.REGISTERS)],
    [SimData(0, values=list(range(64)), datatype=DataType.REGISTERS)],
))
print("serving", flush=True)
StartTcpServer(device, address=(host, port))
"""

S7_SERVER = r"""
import sys, time
import snap7
from snap7.type import SrvArea
host, port = sys.argv[1], int(sys.argv[2])
srv = snap7.server.Server(log=False)
db1, db2 = bytearray(range(64)), bytearray(32)
srv.register_area(SrvArea.DB, 1, db1)
srv.register_area(SrvArea.DB, 2, db2)
srv.start_to(host, port)
print("serving", flush=True)
state = srv.cpu_state
while True:
    time.sleep(0.1)
    if srv.cpu_state != state:
        state = srv.cpu_state
        print(f"cpu state {state.name}", flush=True)
"""

IEC104_SERVER = r"""
import math, sys, time
import c104
host, port, ca = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = c104.Server(ip=host, port=port, tick_rate_ms=100)
st = srv.add_station(common_address=ca)
cyclic = [st.add_point(io_address=1000 + i, type=c104.Type.M_ME_NC_1, report_ms=1000)
          for i in range(4)]
srv.start()
print("serving", flush=True)
t0 = time.monotonic()
while True:
    t = time.monotonic() - t0
    for i, p in enumerate(cyclic):
        p.value = 50.0 + 10.0 * math.sin(t / (20 + i))
    time.sleep(0.2)
"""

# The HMI: Modbus polling of PLC-1 (holding 0-9 every 0.5 s, coils every 1 s, a setpoint
# write every 2.5 s) and S7 polling of PLC-2 (DB1 every 1 s, a DB2 write every 3 s), on fixed
# schedules, so that a few seconds of learning see everything it ever does.
HMI = r"""
import logging, sys, threading, time
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
plc1, plc2 = sys.argv[1], sys.argv[2]

def every(period, fn, phase=0.0):
    nxt = time.monotonic() + phase
    while True:
        nxt += period
        fn()
        time.sleep(max(0.0, nxt - time.monotonic()))

def modbus():
    from pymodbus.client import ModbusTcpClient
    c = ModbusTcpClient(plc1, port=502, timeout=3, retries=0)
    assert c.connect(), "modbus: cannot connect"
    n = [0]
    def tick():
        n[0] += 1
        c.read_holding_registers(0, count=10, device_id=1)
        if n[0] % 2 == 0:
            c.read_coils(0, count=16, device_id=1)
        if n[0] % 5 == 0:
            c.write_register(10, 500 + n[0] % 50, device_id=1)
    every(0.5, tick)

def s7():
    import snap7
    c = snap7.client.Client()
    c.connect(plc2, 0, 1, 102)
    n = [0]
    def tick():
        n[0] += 1
        c.db_read(1, 0, 32)
        if n[0] % 3 == 0:
            c.db_write(2, 0, bytearray([n[0] % 256, 0, 0, 1]))
    every(1.0, tick, 0.25)

for fn in (modbus, s7):
    threading.Thread(target=fn, daemon=True).start()
print("polling", flush=True)
while True:
    time.sleep(1)
"""

SCADA = r"""
import sys, time
import c104
rtu, port, ca = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = c104.Client(tick_rate_ms=100, command_timeout_ms=2000)
conn = client.add_connection(ip=rtu, port=port, init=c104.Init.ALL)
conn.add_station(common_address=ca)
client.start()
deadline = time.monotonic() + 10
while not conn.is_connected and time.monotonic() < deadline:
    time.sleep(0.1)
assert conn.is_connected, "iec104: cannot connect"
print("polling", flush=True)
while True:
    time.sleep(1)
"""

# The attacks, from the engineering workstation. Each prints one JSON line: when it began
# (wall clock, just before its first packet) and what it did.
ATTACK_WRITE = r"""
import json, logging, sys, time
from pymodbus.client import ModbusTcpClient
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
plc = sys.argv[1]
t0 = time.time()
c = ModbusTcpClient(plc, port=502, timeout=3, retries=0)
assert c.connect()
rsp = c.write_register(10, 4242, device_id=1)
c.close()
print(json.dumps({"t0": t0, "t1": time.time(), "ok": not rsp.isError(),
                  "did": "write_single_register 10 = 4242 on " + plc}))
"""

ATTACK_STOP = r"""
import json, sys, time
import snap7
plc = sys.argv[1]
t0 = time.time()
c = snap7.client.Client()
c.connect(plc, 0, 1, 102)
c.plc_stop()
c.disconnect()
print(json.dumps({"t0": t0, "t1": time.time(), "ok": True, "did": "S7 PLC STOP on " + plc}))
"""

ATTACK_SCAN = r"""
import json, socket, sys, time
target, net = sys.argv[1], sys.argv[2]
ports = list(range(1, 41)) + [102, 443, 502, 2404, 4840, 20000, 44818]
t0 = time.time()
open_ports = []
for p in ports:
    s = socket.socket()
    s.settimeout(0.3)
    if s.connect_ex((target, p)) == 0:
        open_ports.append(p)
    s.close()
hosts = []
for last in range(1, 41):
    ip = f"{net}.{last}"
    if ip == target:
        continue
    for p in (502, 102, 2404):
        s = socket.socket()
        s.settimeout(0.05)
        if s.connect_ex((ip, p)) == 0:
            hosts.append(f"{ip}:{p}")
        s.close()
print(json.dumps({"t0": t0, "t1": time.time(), "ok": True, "open": open_ports,
                  "hosts": hosts,
                  "did": f"TCP connect scan of {len(ports)} ports on {target} and "
                         f"502/102/2404 on {net}.1-40"}))
"""

ATTACKS = {
    "write": ("unauthorised write", ATTACK_WRITE, "plc1", "first_write"),
    "stop": ("PLC stop", ATTACK_STOP, "plc2", "plc_stop"),
    "scan": ("scan", ATTACK_SCAN, "plc1", "scan"),
}


# --- results -----------------------------------------------------------------------------------

@dataclass
class Alert:
    rule: str
    severity: str
    detail: str
    src_ip: str | None
    dest_ip: str | None
    first_ts: float
    received_at: float


@dataclass
class AttackResult:
    name: str
    what: str
    rule: str
    t0: float
    t1: float
    output: dict[str, Any]
    alert: Alert | None = None

    @property
    def latency(self) -> float | None:
        """Attack start (wall clock) to the alert stored in the collector's database."""
        return None if self.alert is None else self.alert.received_at - self.t0

    @property
    def detection(self) -> float | None:
        """Attack start to the first packet of the finding (the agent's capture clock)."""
        return None if self.alert is None else self.alert.first_ts - self.t0


@dataclass
class CommandResult:
    cmd: str
    jti: str
    exit_code: int
    sent_at: float
    output: dict[str, Any] | None
    stderr: str
    stored_at: float | None = None     # in the collector's database

    @property
    def ok(self) -> bool:
        return (self.exit_code == 0 and self.output is not None and self.output.get("ok") is True
                and self.output.get("verified") == "verified")


@dataclass
class Outcome:
    learned_at: float = 0.0
    quiet: tuple[float, float] = (0.0, 0.0)
    quiet_findings: list[dict[str, Any]] = field(default_factory=list)
    quiet_alerts: list[Alert] = field(default_factory=list)
    quiet_summaries: int = 0
    attacks: list[AttackResult] = field(default_factory=list)
    commands: list[CommandResult] = field(default_factory=list)
    agent_caps: dict[str, Any] = field(default_factory=dict)
    agent_user: str = ""
    collector_report: dict[str, Any] = field(default_factory=dict)
    attack_findings: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)      # what ``say`` was told, for a test


# --- the box -----------------------------------------------------------------------------------

class PlantBox(Plant):
    """The plant, the centre and the agent; ``with PlantBox(...) as box:`` builds and starts
    everything, leaving deletes every namespace and process (and the work directory)."""

    def __init__(self, learn_s: float = 30.0, window_s: float = 1.0,
                 say: Callable[[str], None] = lambda _m: None, workdir: Path | None = None,
                 keep_workdir: bool = False) -> None:
        super().__init__()
        self.learn_s, self.window_s, self.say = learn_s, window_s, say
        self.own_workdir = workdir is None
        self.keep_workdir = keep_workdir
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="edge-agent-plant-",
                                                        dir="/var/tmp"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.logs = self.workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.state = self.workdir / "agent-state"
        self.db = self.workdir / "centre" / "collector.sqlite"
        self.keys = self.workdir / "centre" / "keys"
        self.opdir = self.workdir / "operator"
        self.agent: subprocess.Popen | None = None
        self.collector: subprocess.Popen | None = None
        self.centre: Centre | None = None
        self.user: ServiceUser | None = None
        self.agent_python = ""

    # names and addresses
    def ns_of(self, host: str) -> str:
        return f"ea-{host}-{self.tag}"

    def ip_of(self, host: str) -> str:
        return f"10.77.{self.subnet}.{HOSTS[host][0]}"

    @property
    def net(self) -> str:
        return f"10.77.{self.subnet}"

    @property
    def ctl(self) -> str:
        return f"ea-ctl-{self.tag}"

    @property
    def broker_ip(self) -> str:
        return f"10.78.{self.subnet}.1"

    @property
    def mgmt_ip(self) -> str:
        return f"10.78.{self.subnet}.2"

    # --- building --------------------------------------------------------------------------

    def build(self) -> PlantBox:
        problem = missing_requirements()
        if problem:
            raise Unavailable(problem)
        self.say(f"plant: namespaces *-{self.tag}, plant network {self.net}.0/24, "
                 f"management link 10.78.{self.subnet}.0/24; work directory {self.workdir}")
        for ns in [self.sw, self.mon, self.ctl, *map(self.ns_of, HOSTS)]:
            _run(["ip", "netns", "add", ns])
            self.created.append(ns)
            for key in ("all", "default"):
                _run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                      f"net.ipv6.conf.{key}.disable_ipv6=1"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        sw = ["ip", "-n", self.sw]
        _run(sw + ["link", "add", "br0", "type", "bridge", "stp_state", "0"])
        _run(sw + ["link", "add", "span0", "type", "veth", "peer", "name", CAPTURE_IF,
                   "netns", self.mon])
        _run(sw + ["link", "set", "br0", "up"])
        _run(sw + ["link", "set", "span0", "up"])
        for host in HOSTS:
            port, ns = f"p-{host}", self.ns_of(host)
            _run(sw + ["link", "add", port, "type", "veth", "peer", "name", HOST_IF, "netns", ns])
            _run(sw + ["link", "set", port, "master", "br0"])
            _run(sw + ["link", "set", port, "up"])
            self._mirror_ingress(port, "span0")
            _run(["ip", "-n", ns, "addr", "add", f"{self.ip_of(host)}/24", "dev", HOST_IF])
            _run(["ip", "-n", ns, "link", "set", HOST_IF, "up"])
        _run(["ip", "-n", self.mon, "link", "set", CAPTURE_IF, "up"])
        # The management link: a separate interface of the gateway, to the centre.
        _run(["ip", "-n", self.mon, "link", "add", MGMT_IF, "type", "veth", "peer", "name",
              HOST_IF, "netns", self.ctl])
        _run(["ip", "-n", self.mon, "addr", "add", f"{self.mgmt_ip}/24", "dev", MGMT_IF])
        _run(["ip", "-n", self.mon, "link", "set", MGMT_IF, "up"])
        _run(["ip", "-n", self.ctl, "addr", "add", f"{self.broker_ip}/24", "dev", HOST_IF])
        _run(["ip", "-n", self.ctl, "link", "set", HOST_IF, "up"])
        self._wait_carrier()
        return self

    def _mirror_ingress(self, port: str, to: str) -> None:
        tc = ["tc", "-n", self.sw]
        _run(tc + ["qdisc", "add", "dev", port, "clsact"])
        _run(tc + ["filter", "add", "dev", port, "ingress", "protocol", "all", "u32", "match",
                   "u8", "0", "0", "action", "mirred", "egress", "mirror", "dev", to])

    def __enter__(self) -> PlantBox:
        try:
            self.build()
            self.start_centre()
            self.start_plcs()
            self.start_agent()
            self.start_masters()
            return self
        except BaseException:
            self.close()
            raise

    # --- processes -------------------------------------------------------------------------

    def start_py(self, host_ns: str, name: str, code: str, *args: Any) -> subprocess.Popen:
        return start_logged(self, host_ns, self.logs / f"{name}.log",
                            [PYTHON, "-u", "-c", snippet(code), *args])

    def wait_line(self, name: str, proc: subprocess.Popen, text: str, timeout: float) -> None:
        wait_line(proc, self.logs / f"{name}.log", text, timeout)

    def start_centre(self) -> None:
        self.centre = Centre(self, self.ctl, self.broker_ip, self.workdir / "centre",
                             {AGENT_ID: SITE})
        self.centre.start()
        self.say(f"centre: mosquitto with TLS and client certificates on {self.centre.url} "
                 f"(namespace {self.ctl})")
        # The operator's key; the agent trusts its public half.
        _run([PYTHON, "-m", "edge_agent", "fleet", "keygen", "--out", str(self.opdir)], cwd=ROOT)
        self.opdir.chmod(0o755)
        (self.opdir / "operator.pub.pem").chmod(0o644)

    def start_plcs(self) -> None:
        procs = [("plc1", MODBUS_SERVER, MODBUS_PORT), ("plc2", S7_SERVER, S7_PORT),
                 ("rtu", IEC104_SERVER, IEC104_PORT)]
        started = []
        for host, code, port in procs:
            args: list[Any] = [self.ip_of(host), port]
            if host == "rtu":
                args.append(IEC104_CA)
            started.append((host, port, self.start_py(self.ns_of(host), host, code, *args)))
        for host, port, proc in started:
            self.wait_line(host, proc, "serving", 20)
            self.wait_listening(self.ns_of(host), port, timeout=10)
            self.say(f"  {host:5} {self.ip_of(host):13} {HOSTS[host][1]}: listening on {port}")

    def start_agent(self) -> None:
        assert self.centre is not None
        self.install = inst = AgentInstall.create(self.workdir, self.centre, AGENT_ID, SITE, f"""\
[capture]
interface = "{CAPTURE_IF}"

[summary]
window_s = {self.window_s}

[learn]
period_s = {self.learn_s}

[fleet]
operator_keys = ["{self.opdir / 'operator.pub.pem'}"]
""")
        self.user, self.agent_python, self.cfg = inst.user, inst.python, inst.cfg
        self.say(f"agent: service user {inst.user.name} (uid {inst.user.uid})"
                 f"{', created for this run' if inst.user.created else ''}; interpreter "
                 f"{inst.python}")
        kid = inst.enrol(self.keys)
        self.say(f"agent: device key {kid} enrolled at the centre")
        # The collector, at the centre, before the agent publishes anything.
        self.collector = start_collector(self, self.ctl, self.centre, self.keys, self.db,
                                         self.logs / "collector.log")
        self.say(f"centre: edge-agent collect subscribed, storing into {self.db}")
        self.agent = inst.start(self, self.mon, self.logs / "agent.log")
        caps = capabilities(self.agent.pid)
        self.say(f"agent: pid {self.agent.pid} capturing on {CAPTURE_IF} (mirror port, no "
                 f"address) as uid {caps['Uid'][1]}, effective capabilities "
                 f"{caps['CapEff']:#x} (CAP_NET_RAW = {CAP_NET_RAW:#x}), publishing over "
                 f"{MGMT_IF} {self.mgmt_ip} -> {self.centre.url}")

    def start_masters(self) -> None:
        hmi = self.start_py(self.ns_of("hmi"), "hmi", HMI, self.ip_of("plc1"), self.ip_of("plc2"))
        scada = self.start_py(self.ns_of("scada"), "scada", SCADA, self.ip_of("rtu"),
                              IEC104_PORT, IEC104_CA)
        self.wait_line("hmi", hmi, "polling", 20)
        self.wait_line("scada", scada, "polling", 20)
        self.masters_started = time.time()
        self.say(f"  hmi   {self.ip_of('hmi'):13} polls PLC-1 (Modbus holding 0-9 every 0.5 s, "
                 "coils every 1 s, setpoint write every 2.5 s) and PLC-2 (S7 DB1 every 1 s, "
                 "DB2 write every 3 s)")
        self.say(f"  scada {self.ip_of('scada'):13} IEC 104: interrogation, then cyclic "
                 "measurements every 1 s from the RTU")

    # --- observing -------------------------------------------------------------------------

    def agent_alive(self) -> None:
        if self.agent is not None and self.agent.poll() is not None:
            raise RuntimeError(f"the agent exited ({self.agent.returncode}):\n"
                               f"{(self.logs / 'agent.log').read_text(errors='replace')[-4000:]}")

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_learned(self, timeout: float) -> float:
        """Until the agent has saved its baseline; the wall-clock time it saw that happen."""
        deadline = time.monotonic() + timeout
        log = self.logs / "agent.log"
        while "learned the site baseline" not in log.read_text(errors="replace"):
            self.agent_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not learn in {timeout} s:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        return time.time()

    def _db(self) -> sqlite3.Connection | None:
        if not self.db.exists():
            return None
        return sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)

    def documents(self, kind: str) -> list[tuple[dict[str, Any], float]]:
        """(payload, received_at) of the documents of ``kind`` in the collector's DB."""
        from edge_agent.summary.sign import claims
        db = self._db()
        if db is None:
            return []
        try:
            if kind == "summary":
                rows = db.execute("SELECT token, received_at FROM summaries WHERE agent_id = ? "
                                  "ORDER BY seq", (AGENT_ID,)).fetchall()
            else:
                rows = db.execute("SELECT token, received_at FROM documents WHERE agent_id = ? "
                                  "AND kind = ? ORDER BY id", (AGENT_ID, kind)).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()
        return [(claims(tok), at) for tok, at in rows]

    def alerts(self) -> list[Alert]:
        out = []
        for doc, at in self.documents("alert"):
            f = doc.get("finding", {})
            out.append(Alert(f.get("rule", "?"), f.get("severity", "?"), f.get("detail", ""),
                             f.get("src_ip"), f.get("dest_ip"), float(f.get("first_ts", 0)), at))
        return out

    def collector_report(self) -> dict[str, Any]:
        proc = subprocess.run([PYTHON, "-m", "edge_agent", "collect", "--report", "--json",
                               "--db", str(self.db)], capture_output=True, text=True,
                              timeout=60, cwd=ROOT, check=False)
        rows = json.loads(proc.stdout) if proc.returncode == 0 else []
        return next((r for r in rows if r["agent_id"] == AGENT_ID), {})

    # --- acting ----------------------------------------------------------------------------

    def attack(self, name: str, timeout: float = 15.0) -> AttackResult:
        what, code, target, rule = ATTACKS[name]
        args: list[Any] = [self.ip_of(target)]
        if name == "scan":
            args.append(self.net)
        before = {(a.rule, a.first_ts) for a in self.alerts()}
        proc = self.run(self.ns_of("ews"), [PYTHON, "-c", snippet(code), *map(str, args)],
                        timeout=120, cwd=ROOT)
        if proc.returncode:
            raise RuntimeError(f"attack {name} failed ({proc.returncode}): {proc.stderr[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        result = AttackResult(name, what, rule, out["t0"], out["t1"], out)
        deadline = time.monotonic() + timeout
        while result.alert is None and time.monotonic() < deadline:
            self.agent_alive()
            fresh = [a for a in self.alerts() if a.rule == rule and
                     (a.rule, a.first_ts) not in before and a.first_ts >= out["t0"] - 1]
            if fresh:
                result.alert = min(fresh, key=lambda a: a.received_at)
            else:
                time.sleep(0.05)
        return result

    def fleet(self, cmd: str, timeout: float = 20.0) -> CommandResult:
        assert self.centre is not None
        jti = f"plant-{cmd}-{secrets.token_hex(4)}"
        sent = time.time()
        proc = self.run(self.ctl, [
            PYTHON, "-m", "edge_agent", "fleet", "send", cmd, "--agent", AGENT_ID, "--site", SITE,
            "--key", str(self.opdir / "operator.key"), "--jti", jti, "--broker", self.centre.url,
            *self.centre.tls_args("operator", "--keyfile"),
            "--device-key", str(self.keys / f"{AGENT_ID}.json"), "--json",
            "--timeout", str(timeout)], timeout=timeout + 30, cwd=ROOT)
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
        out = json.loads(lines[-1]) if lines else None
        result = CommandResult(cmd, jti, proc.returncode, sent, out, proc.stderr.strip())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stored = [at for doc, at in self.documents("cmd_result") if doc.get("jti") == jti]
            if stored:
                result.stored_at = stored[0]
                break
            time.sleep(0.1)
        return result

    def report(self, out: Path) -> str | None:
        """``edge-agent report`` of the collector's database; None when the extra is missing."""
        from edge_agent.report import missing_dependencies
        if missing_dependencies():
            return None
        proc = subprocess.run([PYTHON, "-m", "edge_agent", "report", str(self.db), "--out",
                               str(out)], capture_output=True, text=True, timeout=180, cwd=ROOT,
                              check=False)
        if proc.returncode:
            raise RuntimeError(f"edge-agent report failed: {proc.stderr[-2000:]}")
        return proc.stderr.strip()

    def stop_agent(self) -> int | None:
        """SIGTERM, as systemd stops it; its exit status."""
        if self.agent is None or self.agent.poll() is not None:
            return None if self.agent is None else self.agent.returncode
        self.agent.send_signal(signal.SIGTERM)
        try:
            return self.agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            return None

    def close(self) -> None:
        for proc in (self.agent, self.collector):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        super().close()
        if self.own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --- the scenario, for the test and the demo ----------------------------------------------------

def findings_in(summaries: list[tuple[dict[str, Any], float]], start: float, end: float
                ) -> tuple[list[dict[str, Any]], int]:
    """Findings of the summaries whose window lies within [start, end], and how many."""
    inside = [d for d, _ in summaries if d["window"]["start"] >= start and
              d["window"]["end"] <= end]
    return [f for d in inside for f in d.get("findings", ())], len(inside)


def scenario(box: PlantBox, quiet_s: float = 15.0, tell: Callable[[str], None] = print
             ) -> Outcome:
    """Learning, normal polling watched for ``quiet_s`` seconds, three attacks, two fleet
    commands; every figure on the way, told to ``tell`` and kept in ``Outcome.log``."""
    out = Outcome()

    def say(msg: str) -> None:
        out.log.append(msg)
        tell(msg)

    assert box.agent is not None and box.user is not None
    out.agent_caps = capabilities(box.agent.pid)
    out.agent_user = box.user.name
    say(f"learning: the agent learns the site baseline for {box.learn_s:g} s of normal "
        f"polling (windows of {box.window_s:g} s)...")
    out.learned_at = box.wait_learned(box.learn_s * 3 + 60)
    say(f"learning: done after {out.learned_at - box.masters_started:.1f} s; baseline saved "
        f"(and the model calibrated when there were enough windows)")
    # The window that was open when learning ended was judged without the baseline: start
    # at the next one.
    q0 = out.learned_at + box.window_s
    say(f"normal polling: watching {quiet_s:g} s for false alerts...")
    time.sleep(quiet_s + box.window_s)
    q1 = time.time() - box.window_s
    box.agent_alive()
    # Let the last quiet window's summary arrive.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        summaries = box.documents("summary")
        if summaries and summaries[-1][0]["window"]["end"] >= q1:
            break
        time.sleep(0.2)
    out.quiet = (q0, q1)
    out.quiet_findings, out.quiet_summaries = findings_in(box.documents("summary"), q0, q1)
    out.quiet_alerts = [a for a in box.alerts() if q0 <= a.first_ts <= q1]
    say(f"normal polling: {out.quiet_summaries} summaries, {len(out.quiet_findings)} "
        f"finding(s), {len(out.quiet_alerts)} alert(s)")
    for f in out.quiet_findings:
        say(f"  FALSE POSITIVE? {f['severity']} {f['rule']}: {f.get('detail')} "
            f"({f.get('src_ip')} -> {f.get('dest_ip')})")
    for name in ("write", "stop", "scan"):
        say(f"attack: {ATTACKS[name][0]} from the engineering workstation "
            f"{box.ip_of('ews')}...")
        res = box.attack(name)
        out.attacks.append(res)
        say(f"  did: {res.output['did']} ({res.t1 - res.t0:.2f} s)")
        if res.alert is None:
            say(f"  NO {res.rule} alert reached the collector")
        else:
            a = res.alert
            say(f"  alert {a.severity} {a.rule}: {a.detail} ({a.src_ip} -> {a.dest_ip}); "
                f"first packet +{res.detection:.2f} s, in the collector's DB "
                f"+{res.latency:.2f} s after the attack began")
        time.sleep(max(2.0, 2 * box.window_s))
    for cmd in ("ping", "status"):
        say(f"operator: edge-agent fleet send {cmd} --agent {AGENT_ID} (through the broker)...")
        done = box.fleet(cmd)
        out.commands.append(done)
        body = done.output or {}
        shown = json.dumps(body.get("result"), separators=(",", ":"))
        if cmd == "status" and isinstance(body.get("result"), dict):
            r = body["result"]
            shown = ", ".join(f"{k} {json.dumps(r.get(k), separators=(',', ':'))}" for k in
                              ("packets", "windows", "capture", "outbox_depth") if k in r)
        say(f"  result {'ok' if body.get('ok') else 'FAILED'} [{body.get('verified')}] "
            f"in {(done.stored_at or time.time()) - done.sent_at:.2f} s: {shown[:300]}"
            f"{'' if done.stored_at else ' (NOT in the collector DB)'}")
    # Every finding of the attack phase, in the summaries (alerts are only the severe ones).
    a0 = out.attacks[0].t0 - 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        summaries = box.documents("summary")
        if summaries and summaries[-1][0]["window"]["end"] >= out.attacks[-1].t1 + 1:
            break
        time.sleep(0.2)
    out.attack_findings, _ = findings_in(box.documents("summary"), a0, float("inf"))
    folded: dict[tuple[str, str], int] = {}
    for f in out.attack_findings:
        key = (f["severity"], f["rule"])
        folded[key] = folded.get(key, 0) + f.get("count", 1)
    say("findings in the summaries since the first attack: " + ", ".join(
        f"{sev} {rule} x{n}" for (sev, rule), n in sorted(folded.items())))
    out.collector_report = box.collector_report()
    r = out.collector_report
    say(f"centre: {r.get('summaries')} summaries ({'INTACT' if r.get('intact') else 'NOT intact'}"
        f"), {r.get('alerts')} alerts, {r.get('cmd_results')} command results, rejects "
        f"{r.get('rejects') or 'none'}")
    return out
