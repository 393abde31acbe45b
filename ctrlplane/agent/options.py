"""The agent's command line and options: apart from the agent itself, so that the ``ctrlplane``
command can offer ``agent`` without importing the agent's runtime (the Docker provider, the
server's error types) on every call of its other commands."""

from __future__ import annotations

import argparse
import os
import socket

import msgspec


class AgentOptions(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    token: str | None
    state_dir: str
    hostname: str
    heartbeat_interval: float = 30.0
    reconcile_interval: float = 60.0
    telemetry_interval: float = 10.0
    host_address: str = "127.0.0.1"
    cpu_millis: int | None = None
    memory_mb: int | None = None


def options_from_args(args: argparse.Namespace) -> AgentOptions:
    return AgentOptions(
        url=args.url,
        token=args.token or os.environ.get("CTRLPLANE_NODE_TOKEN"),
        state_dir=args.state_dir,
        hostname=args.hostname or socket.gethostname(),
        heartbeat_interval=args.heartbeat_interval,
        reconcile_interval=args.reconcile_interval,
        telemetry_interval=args.telemetry_interval,
        host_address=args.publish_address,
        cpu_millis=args.cpu_millis,
        memory_mb=args.memory_mb,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the control plane's base URL")
    parser.add_argument(
        "--token", help="the bootstrap token (cpx_enroll_...; or CTRLPLANE_NODE_TOKEN); needed only to join"
    )
    parser.add_argument(
        "--state-dir", default="/var/lib/ctrlplane-agent", help="identity and keys (default /var/lib/ctrlplane-agent)"
    )
    parser.add_argument("--hostname", help="the name this node registers under (default: the host's name)")
    parser.add_argument("--heartbeat-interval", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--reconcile-interval", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--telemetry-interval", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument(
        "--publish-address", default="127.0.0.1", help="where instances' ports are published (default 127.0.0.1)"
    )
    parser.add_argument("--cpu-millis", type=int, help="CPU offered to instances (default: all CPUs)")
    parser.add_argument("--memory-mb", type=int, help="memory offered to instances (default: all memory)")
