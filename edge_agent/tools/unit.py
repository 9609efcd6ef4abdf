"""``edge-agent unit``: the systemd unit for this configuration (used by install-gateway).

The agent runs as an unprivileged user with CAP_NET_RAW only (an AF_PACKET socket; libpcap
sets promiscuous mode through PACKET_ADD_MEMBERSHIP, which needs no CAP_NET_ADMIN), writes only
its state directory, and tells systemd it is alive from the pipeline loop (Type=notify with a
watchdog), so a capture that hangs is restarted.
"""
from __future__ import annotations

import argparse
import sys

from edge_agent.config import Config

UNIT = """\
[Unit]
Description=edge-agent passive OT network security sensor
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={prefix}/bin/edge-agent run --config {config}
User={user}
Group={user}
WorkingDirectory={state_dir}
WatchdogSec={watchdog}
Restart=on-failure
RestartSec=5
TimeoutStopSec=30
MemoryMax={memory}M
CPUQuota={cpu}%
AmbientCapabilities=CAP_NET_RAW
CapabilityBoundingSet=CAP_NET_RAW
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={state_dir}
RuntimeDirectory=edge-agent
RuntimeDirectoryMode=0750
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_PACKET AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources @mount @swap @reboot @raw-io @module @obsolete
SystemCallErrorNumber=EPERM
UMask=0077
LimitNOFILE=1024

[Install]
WantedBy=multi-user.target
"""


def render(cfg: Config, config_path: str, prefix: str, user: str) -> str:
    svc = cfg["service"]
    return UNIT.format(prefix=prefix, config=config_path, user=user,
                       state_dir=cfg["agent"]["state_dir"], watchdog=svc["watchdog_s"],
                       memory=svc["memory_max_mib"], cpu=svc["cpu_quota_percent"])


def cmd_unit(args: argparse.Namespace) -> int:
    from edge_agent.config import load
    cfg = load(args.config)
    sys.stdout.write(render(cfg, args.config, args.prefix, args.user))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("unit", help="print the systemd unit for a configuration")
    p.add_argument("--config", required=True, metavar="FILE", help="the installed configuration")
    p.add_argument("--prefix", default="/opt/edge-agent", help="the virtual environment")
    p.add_argument("--user", default="edge-agent", help="the service user")
    p.set_defaults(func=cmd_unit)
