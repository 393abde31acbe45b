"""The ``ctrlplane`` command: serve, migrate, token issue, audit verify, secrets rotate-master, agent, and
the API client commands (deploy, rollback, status, releases, logs, env)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import signal
import socket
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ctrlplane.auth.tokens import ROLES, ensure_signing_secret, issue_token
from ctrlplane.settings import Settings, SettingsError
from ctrlplane.timeutil import parse_duration

if TYPE_CHECKING:
    from ctrlplane.secrets.crypto import MasterKeyRing, RotationReport


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctrlplane", description="ctrlplane: a multi-tenant PaaS control plane")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the API (migrates the database first)")
    serve.add_argument("--host", help="address to bind (CTRLPLANE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (CTRLPLANE_PORT, default 8080; 0: a free one)")
    serve.add_argument("--no-migrate", action="store_true", help="do not migrate the database on start")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (PostgreSQL only: SQLite takes one process; default 1)",
    )

    commands.add_parser("migrate", help="bring the database schema up to date")

    token = commands.add_parser("token", help="tokens signed with the server's key")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    issue = token_commands.add_parser("issue", help="print a JWT")
    who = issue.add_mutually_exclusive_group(required=True)
    who.add_argument("--admin", action="store_true", help="a system-admin token (no tenant)")
    who.add_argument("--tenant", metavar="TENANT_ID", help="a token for this tenant")
    issue.add_argument("--sub", help="subject (default: admin, or tenant-user)")
    issue.add_argument("--roles", help=f"comma-separated roles from {','.join(ROLES)} (default: admin)")
    issue.add_argument("--ttl", default="1h", help="lifetime such as 30m, 1h, 7d (default 1h)")

    pipeline = argparse.ArgumentParser(add_help=False)
    pipeline.add_argument("instance", help="instance ID (inst_...) or name")
    pipeline.add_argument("--json", action="store_true", help="JSON lines instead of readable lines")
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--wait", action="store_true", help="follow the deploy until it ends; exit with its outcome")
    waiting.add_argument("--timeout", default="10m", help="how long --wait waits (default 10m)")
    waiting.add_argument(
        "--strategy", default="rolling", choices=["rolling", "blue_green", "canary", "recreate"], help="default rolling"
    )
    epilog = (
        "CTRLPLANE_URL (default http://127.0.0.1:8080) and CTRLPLANE_TOKEN (a JWT or API key) configure it. "
        "Exit status: 0 succeeded, 1 failed, 2 bad usage or configuration, 3 rolled back, 4 cancelled, "
        "5 timed out, 6 authentication or permission refused, 7 other API error, "
        "8 rolled back by its traffic analysis."
    )
    deploy_cmd = commands.add_parser(
        "deploy", parents=[pipeline, waiting], help="deploy an image to an instance", epilog=epilog
    )
    deploy_cmd.add_argument("--image", required=True, help="image reference")
    deploy_cmd.add_argument("--env", action="append", metavar="KEY=VALUE", help="set an env variable (repeatable)")
    deploy_cmd.add_argument("--notes", help="release notes")
    deploy_cmd.add_argument("--commit-sha", help="the commit this image was built from")
    deploy_cmd.add_argument(
        "--release-command",
        metavar="SHELL",
        help="run once in the new release before any replica is replaced (e.g. a migration); with --wait its "
        "output is streamed and a failed release phase exits with the command's own exit code",
    )
    deploy_cmd.add_argument("--release-timeout", type=int, metavar="SECONDS", help="kill the release command after")
    deploy_cmd.add_argument(
        "--max-error-ratio", type=float, metavar="RATIO", help="analysis: roll back past this 5xx ratio (0 to 1)"
    )
    deploy_cmd.add_argument("--max-p99-ms", type=float, metavar="MS", help="analysis: roll back past this p99 latency")
    deploy_cmd.add_argument("--min-requests", type=int, metavar="N", help="analysis: requests needed to judge")
    deploy_cmd.add_argument("--analysis-window", metavar="DURATION", help="analysis: observe each step this long")
    deploy_cmd.add_argument(
        "--steps", metavar="W1,W2,...", help="canary traffic weights in percent, ending at 100 (e.g. 10,50,100)"
    )
    deploy_cmd.add_argument(
        "--idempotency-key",
        help="override the key derived from the inputs (the same inputs within 24 h replay the first deploy)",
    )
    rollback_cmd = commands.add_parser(
        "rollback", parents=[pipeline, waiting], help="roll an instance back to a release", epilog=epilog
    )
    target = rollback_cmd.add_mutually_exclusive_group()
    target.add_argument("--to", metavar="RELEASE_ID", help="the release to go back to")
    target.add_argument("--previous", action="store_true", help="the newest earlier release that ran (default)")
    rollback_cmd.add_argument("--idempotency-key", help="override the key derived from the instance and release")
    rollback_cmd.add_argument("--run-release", action="store_true", help="run the release's release command again")
    run_cmd = commands.add_parser(
        "run",
        parents=[pipeline],
        help="run a command once in a new container of the instance's release; exits with its exit code",
        epilog="Usage: ctrlplane run INSTANCE [--env K=V] [--timeout SECONDS] -- COMMAND [ARG...]",
    )
    run_cmd.add_argument("--env", action="append", metavar="KEY=VALUE", help="set an env variable (repeatable)")
    run_cmd.add_argument("--timeout", type=int, metavar="SECONDS", help="kill the command after (server default 1h)")
    run_cmd.add_argument("--detach", action="store_true", help="print the run and exit 0 without waiting")
    run_cmd.set_defaults(argv=[])
    commands.add_parser("status", parents=[pipeline], help="an instance's state, image, release and endpoints")
    commands.add_parser("releases", parents=[pipeline], help="an instance's releases, newest first")
    logs_cmd = commands.add_parser(
        "logs", parents=[pipeline], help="an instance's log lines, with levels", epilog=epilog
    )
    logs_cmd.add_argument("--follow", "-f", action="store_true", help="keep printing new lines as they are written")
    logs_cmd.add_argument(
        "--level",
        choices=["trace", "debug", "info", "warn", "error", "fatal"],
        help="only lines at this level or above",
    )
    logs_cmd.add_argument("--limit", type=int, default=100, help="how many of the newest lines (1-1000, default 100)")

    metrics_cmd = commands.add_parser(
        "metrics", parents=[pipeline], help="an instance's usage or request metrics", epilog=epilog
    )
    metrics_cmd.add_argument(
        "--name", default="http_requests_total", help="metric name (default http_requests_total; see docs/api.md)"
    )
    metrics_cmd.add_argument("--since", help="RFC 3339 start (default: an hour ago)")
    metrics_cmd.add_argument("--step", default="60s", help="bucket size such as 60s or 5m (default 60s)")
    metrics_cmd.add_argument("--route", help="request metrics: one route path only")
    _env_commands(commands, epilog)

    webhooks_cmd = commands.add_parser("webhooks", help="the tenant's webhook endpoints", epilog=epilog)
    webhook_commands = webhooks_cmd.add_subparsers(dest="webhooks_command", required=True)
    webhooks_ls = webhook_commands.add_parser("ls", help="list the endpoints")
    webhooks_ls.add_argument("--json", action="store_true", help="JSON lines instead of readable lines")
    test_send = webhook_commands.add_parser(
        "test-send",
        help="queue a webhook.test message to an endpoint",
        epilog="Exit status with --wait: 0 delivered, 1 the delivery failed, 5 timed out.",
    )
    test_send.add_argument("webhook", help="webhook ID (whk_...)")
    test_send.add_argument("--wait", action="store_true", help="wait until the receiver answered 2xx or it failed")
    test_send.add_argument("--timeout", default="30s", help="how long --wait waits (default 30s)")
    test_send.add_argument("--json", action="store_true", help="JSON lines instead of readable lines")

    audit = commands.add_parser("audit", help="the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="check every hash chain; exit 1 at the first broken link")
    verify.add_argument(
        "--allow-unkeyed-prefix",
        action="store_true",
        help="accept unkeyed entries at the start of a chain (written before the chain was keyed)",
    )
    verify.add_argument(
        "--checkpoints",
        metavar="FILE",
        help="also check the chains against checkpoints exported earlier (JSON lines of `audit export`)",
    )
    audit_commands.add_parser(
        "checkpoint", help="sign a checkpoint of every chain's head now and print it (one JSON line)"
    )
    export = audit_commands.add_parser(
        "export", help="print every signed checkpoint, oldest first, as JSON lines, to keep outside the database"
    )
    export.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")

    secrets_cmd = commands.add_parser("secrets", help="the secrets master key ring")
    secrets_commands = secrets_cmd.add_subparsers(dest="secrets_command", required=True)
    secrets_commands.add_parser(
        "rotate-master",
        help="re-wrap every tenant's data key under the ring's newest master key (servers may keep serving)",
    )
    secrets_commands.add_parser(
        "new-master-key", help="print a new ring entry VERSION:BASE64KEY (the next version) to add to the ring"
    )

    from ctrlplane.agent.options import add_arguments as add_agent_arguments

    add_agent_arguments(commands.add_parser("agent", help="run this host as a node of a control plane (docs/nodes.md)"))

    given = list(sys.argv[1:] if argv is None else argv)
    # ``run``'s command follows ``--`` verbatim: its own flags are never ctrlplane's.
    command_argv: list[str] = []
    if given[:1] == ["run"] and "--" in given:
        cut = given.index("--")
        given, command_argv = given[:cut], given[cut + 1 :]
    args = parser.parse_args(given)
    if args.command == "run":
        args.argv = command_argv
    if args.command in ("deploy", "rollback", "status", "releases", "logs", "run", "metrics", "webhooks"):
        from ctrlplane import client

        return client.run(getattr(client, "run_command" if args.command == "run" else args.command), args)
    if args.command == "agent":
        from ctrlplane.agent.main import run_agent
        from ctrlplane.agent.options import options_from_args

        return run_agent(options_from_args(args))
    if args.command == "env":
        from ctrlplane import client
        from ctrlplane.environments import commands as env_commands

        return client.run(getattr(env_commands, args.env_command), args)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"ctrlplane: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from ctrlplane.installation import resolve

        try:
            settings = resolve(settings)
        except SettingsError as exc:
            print(f"ctrlplane: {exc}", file=sys.stderr)
            return 2
        return _serve(settings, args)
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    if args.command == "token":
        return _token(settings, args)
    if args.command == "secrets":
        return _secrets(settings, args)
    if args.audit_command == "checkpoint":
        return asyncio.run(_audit_checkpoint(settings))
    if args.audit_command == "export":
        return asyncio.run(_audit_export(settings, args.output))
    return asyncio.run(
        _audit_verify(settings, allow_unkeyed_prefix=args.allow_unkeyed_prefix, checkpoints_file=args.checkpoints)
    )


def _env_commands(commands: Any, epilog: str) -> None:
    env = commands.add_parser("env", help="on-demand environments (get-or-create by key)", epilog=epilog)
    env_commands = env.add_subparsers(dest="env_command", required=True)
    up = env_commands.add_parser("up", help="get or create the environment of a key; print its URL", epilog=epilog)
    up.add_argument("--template", required=True, help="template id or name")
    up.add_argument("--key", required=True, help="the environment's key, e.g. pr-123")
    up.add_argument("--param", action="append", metavar="KEY=VALUE", help="a template parameter (repeatable)")
    up.add_argument("--ttl", help="lifetime such as 2h or 2d (default: the template's max_ttl)")
    up.add_argument("--idle-timeout", dest="idle_timeout", help="idle time before on_idle applies")
    up.add_argument("--on-idle", dest="on_idle", choices=["destroy", "scale_to_zero"])
    up.add_argument("--max-lifetime", dest="max_lifetime", help="hard limit from creation that extend never passes")
    up.add_argument("--tag", action="append", help="a tag (repeatable)")
    up.add_argument("--replace", action="store_true", help="replace the key's environment if its parameters differ")
    up.add_argument("--wait", action="store_true", help="wait until its instance runs")
    up.add_argument("--timeout", default="10m", help="how long --wait waits (default 10m)")
    up.add_argument("--json", action="store_true", help="print the environment as JSON instead of its URL")
    extend = env_commands.add_parser("extend", help="extend an environment's ttl", epilog=epilog)
    extend.add_argument("environment", help="environment id (env_...) or key")
    extend.add_argument("--by", help="how long to add (default: its ttl)")
    extend.add_argument("--json", action="store_true")
    down = env_commands.add_parser("down", help="terminate an environment", epilog=epilog)
    down.add_argument("environment", help="environment id (env_...) or key")
    down.add_argument("--hard", action="store_true", help="kill at once instead of SIGTERM and a grace period")
    down.add_argument("--json", action="store_true")
    ls = env_commands.add_parser("ls", help="list environments", epilog=epilog)
    ls.add_argument("--key")
    ls.add_argument("--tag")
    ls.add_argument("--owner")
    ls.add_argument("--json", action="store_true", help="JSON lines")


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from ctrlplane.cluster import AnotherServerRunning, SingleProcessLock, sqlite_path

    database_file = sqlite_path(settings.resolved_database_url)
    if args.workers < 1 or (database_file is not None and args.workers > 1):
        print(
            "ctrlplane: --workers must be at least 1, and more than 1 needs PostgreSQL "
            "(CTRLPLANE_DATABASE_URL): a SQLite database is served by one process",
            file=sys.stderr,
        )
        return 2
    with contextlib.ExitStack() as held:
        if database_file is not None:
            try:
                held.enter_context(SingleProcessLock(database_file).held())
            except AnotherServerRunning as exc:
                print(f"ctrlplane: {exc}", file=sys.stderr)
                return 2
        return _serve_alone(settings, args)


SHUTDOWN_GRACE_SECONDS = 30
"""On SIGTERM or SIGINT the server stops accepting connections, lets requests in flight finish for
up to this long (docs/operations.md), then stops its background tasks."""


def _serve_alone(settings: Settings, args: argparse.Namespace) -> int:
    import structlog
    import uvicorn

    from ctrlplane.app import create_app
    from ctrlplane.logs import configure_logging
    from ctrlplane.provisioning.registry import ProviderLoadError
    from ctrlplane.serving import server_config, settle_heap

    configure_logging(settings)
    settings = msgspec.structs.replace(
        settings, host=args.host or settings.host, port=settings.port if args.port is None else args.port
    )
    try:
        sock = _listening_socket(settings.host, settings.port)
    except OSError as exc:
        print(f"ctrlplane: {_cannot_listen(settings.host, settings.port, exc)}", file=sys.stderr)
        return 2
    if settings.migrate_on_start and not args.no_migrate:
        asyncio.run(_migrate(settings))
    if any(a.startswith("HS") for a in settings.jwt_algorithms):
        _, generated = ensure_signing_secret(settings)
        if generated:
            structlog.get_logger("ctrlplane.cli").warning(
                "signing_key_generated",
                path=str(settings.signing_key_path),
                hint="mint an admin token with: ctrlplane token issue --admin",
            )
    try:
        app = create_app(settings)
    except (ProviderLoadError, SettingsError) as exc:
        print(f"ctrlplane: {exc}", file=sys.stderr)
        return 2
    # Bound here, not inside uvicorn.run, so the line below names the real port: with port 0 the
    # kernel picks a free one and whoever started the server (the test harness) reads it from there,
    # with no window in which another process could take a port picked in advance.
    workers = int(getattr(args, "workers", 1) or 1)
    config = server_config(
        "ctrlplane.cli:worker_app" if workers > 1 else app,
        factory=workers > 1,
        workers=workers,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"ctrlplane {app.state.services.version} serving on http://{shown}:{port}\n"
        f"  console:     http://{shown}:{port}/console\n"
        f"  API docs:    http://{shown}:{port}/docs\n"
        f"  admin token: ctrlplane token issue --admin",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn drains, then re-raises the signal it caught to the handler it found: a drained SIGTERM
    # is a clean stop, so the process exits 0 (not killed-by-signal).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        # Each process builds its own app (worker_app) and joins the others as a replica: they share
        # the operation queue, and one of them leads the singleton loops (docs/operations.md).
        Multiprocess(config, sockets=[sock]).run()
        return 0
    settle_heap()
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound as uvicorn's ``Config.bind_socket`` binds it, but raising instead of
    logging the bare OSError and exiting: ``serve`` turns it into one line that says what to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    shown = f"[{host}]" if ":" in host else host
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {shown} is already in use (another ctrlplane, or another program); "
            f"pick another with CTRLPLANE_PORT={port + 1} or --port {port + 1}"
        )
    return (
        f"cannot listen on {shown}:{port} ({exc.strerror or exc}); "
        "choose the address with CTRLPLANE_HOST or --host and the port with CTRLPLANE_PORT or --port"
    )


def worker_app() -> Any:
    """The app of one ``serve --workers`` process, from the environment the parent was started with
    (the parent has migrated the database and checked the configuration)."""
    from ctrlplane.app import create_app
    from ctrlplane.installation import resolve
    from ctrlplane.serving import settle_heap

    settings = resolve(Settings.from_env())
    app = create_app(msgspec.structs.replace(settings, migrate_on_start=False))
    settle_heap()
    return app


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


async def _migrate(settings: Settings) -> int:
    from ctrlplane.db import connect, migrate

    database = connect(settings.resolved_database_url)
    try:
        await migrate(database)
    finally:
        await database.dispose()
    return 0


def _token(settings: Settings, args: argparse.Namespace) -> int:
    roles = [r.strip() for r in (args.roles or "admin").split(",") if r.strip()]
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        print(f"ctrlplane: unknown roles {unknown}; choose from {list(ROLES)}", file=sys.stderr)
        return 2
    if args.admin and "admin" not in roles:
        print("ctrlplane: a system-admin token needs the admin role", file=sys.stderr)
        return 2
    try:
        ttl = timedelta(seconds=parse_duration(args.ttl))
    except ValueError as exc:
        print(f"ctrlplane: --ttl: {exc}", file=sys.stderr)
        return 2
    subject = args.sub or ("admin" if args.admin else "tenant-user")
    try:
        print(issue_token(settings, subject=subject, tenant_id=args.tenant, roles=roles, ttl=ttl))
    except (RuntimeError, ValueError) as exc:
        print(f"ctrlplane: {exc}", file=sys.stderr)
        return 2
    return 0


def _secrets(settings: Settings, args: argparse.Namespace) -> int:
    from ctrlplane.secrets.crypto import DecryptionFailed, MasterKeyRing, new_master_key

    try:
        ring, generated = MasterKeyRing.from_settings(settings)
    except SettingsError as exc:
        print(f"ctrlplane: {exc}", file=sys.stderr)
        return 2
    if generated:
        print(f"ctrlplane: generated a master key ring in {ring.source}; back it up", file=sys.stderr)
    if args.secrets_command == "new-master-key":
        print(f"{ring.newest + 1}:{new_master_key()}")
        return 0
    try:
        report = asyncio.run(_rotate_master(settings, ring))
    except DecryptionFailed as exc:
        print(f"ctrlplane: rotation stopped: {exc.message}", file=sys.stderr)
        return 1
    print(
        f"re-wrapped {report.rewrapped} data keys under master key version {report.newest} "
        f"({report.already_current} already were)"
    )
    return 0


async def _rotate_master(settings: Settings, ring: MasterKeyRing) -> RotationReport:
    import ctrlplane.models  # noqa: F401 - every model, so the data keys' foreign keys resolve
    from ctrlplane.db import connect
    from ctrlplane.secrets.crypto import rotate_master

    database = connect(settings.resolved_database_url)
    try:
        return await rotate_master(database, ring)
    finally:
        await database.dispose()


def _master_keys(settings: Settings) -> dict[int, bytes] | None:
    from ctrlplane.secrets.crypto import RING_FILE, MasterKeyRing

    if settings.secrets_master_keys is not None or (settings.data_path / RING_FILE).exists():
        return dict(MasterKeyRing.from_settings(settings)[0].keys)
    return None


async def _audit_checkpoint(settings: Settings) -> int:
    from ctrlplane.audit import checkpoints
    from ctrlplane.db import connect

    master = _master_keys(settings)
    if master is None:
        print("no secrets master key ring here: checkpoints are signed with it", file=sys.stderr)
        return 2
    database = connect(settings.resolved_database_url)
    try:
        async with database.write() as session, session.begin():
            taken = await checkpoints.take(session, checkpoints.checkpoint_keys(master))
    finally:
        await database.dispose()
    assert taken is not None
    print(checkpoints.export_line(taken))
    return 0


async def _audit_export(settings: Settings, output: str | None) -> int:
    from ctrlplane.audit import checkpoints
    from ctrlplane.db import connect

    database = connect(settings.resolved_database_url)
    try:
        async with database.read() as session:
            lines = [checkpoints.export_line(c) for c in await checkpoints.stored(session)]
    finally:
        await database.dispose()
    text = "".join(line + "\n" for line in lines)
    if output is None:
        sys.stdout.write(text)
    else:
        Path(output).write_text(text)
        print(f"exported {len(lines)} checkpoints to {output}", file=sys.stderr)
    return 0


async def _audit_verify(settings: Settings, *, allow_unkeyed_prefix: bool, checkpoints_file: str | None = None) -> int:
    from ctrlplane.audit import checkpoints
    from ctrlplane.audit.service import AuditKeys, verify
    from ctrlplane.db import connect

    keys: AuditKeys | None = None
    master = _master_keys(settings)
    if master is not None:
        keys = AuditKeys(master)
    else:
        print("no secrets master key ring here: only unkeyed entries can be checked", file=sys.stderr)
    exported = checkpoints.parse_export(Path(checkpoints_file).read_text().splitlines()) if checkpoints_file else []
    database = connect(settings.resolved_database_url)
    try:
        async with database.read() as session:
            report = await verify(session, keys, allow_unkeyed_prefix=allow_unkeyed_prefix)
            problem = None
            if report.broken is None and master is not None:
                held = [*await checkpoints.stored(session), *exported]
                problem = await checkpoints.check(session, checkpoints.checkpoint_keys(master), held)
    finally:
        await database.dispose()
    if problem is not None:
        print(f"audit log does not match a checkpoint: {problem}")
        return 1
    if report.broken is None:
        chains = "chain" if report.chains == 1 else "chains"
        noted = f"; {len(held)} checkpoints match" if master is not None else ""
        print(f"audit log intact: {report.entries} entries in {report.chains} {chains}{noted}")
        return 0
    broken = report.broken
    print(
        f"audit chain {broken.chain!r} broken at entry {broken.seq}"
        f"{f' ({broken.entry_id})' if broken.entry_id else ''}: {broken.reason}"
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
