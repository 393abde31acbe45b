"""The ``ctrlplane`` command: serve, migrate, token issue, audit verify, secrets rotate-master, and
the API client commands (deploy, rollback, status, releases, logs)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from ctrlplane.auth.providers import ROLES
from ctrlplane.auth.tokens import ensure_signing_secret, issue_token
from ctrlplane.settings import Settings, SettingsError
from ctrlplane.timeutil import parse_duration

if TYPE_CHECKING:
    from ctrlplane.secrets.crypto import MasterKeyRing, RotationReport

log = structlog.get_logger("ctrlplane.cli")


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
        "5 timed out, 6 authentication or permission refused, 7 other API error."
    )
    deploy_cmd = commands.add_parser(
        "deploy", parents=[pipeline, waiting], help="deploy an image to an instance", epilog=epilog
    )
    deploy_cmd.add_argument("--image", required=True, help="image reference")
    deploy_cmd.add_argument("--env", action="append", metavar="KEY=VALUE", help="set an env variable (repeatable)")
    deploy_cmd.add_argument("--notes", help="release notes")
    deploy_cmd.add_argument("--commit-sha", help="the commit this image was built from")
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

    audit = commands.add_parser("audit", help="the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="check every hash chain; exit 1 at the first broken link")

    secrets_cmd = commands.add_parser("secrets", help="the secrets master key ring")
    secrets_commands = secrets_cmd.add_subparsers(dest="secrets_command", required=True)
    secrets_commands.add_parser(
        "rotate-master",
        help="re-wrap every tenant's data key under the ring's newest master key (servers may keep serving)",
    )
    secrets_commands.add_parser(
        "new-master-key", help="print a new ring entry VERSION:BASE64KEY (the next version) to add to the ring"
    )

    args = parser.parse_args(argv)
    if args.command in ("deploy", "rollback", "status", "releases", "logs"):
        from ctrlplane import client

        return client.run(getattr(client, args.command), args)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"ctrlplane: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(settings, args)
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    if args.command == "token":
        return _token(settings, args)
    if args.command == "secrets":
        return _secrets(settings, args)
    return asyncio.run(_audit_verify(settings))


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
    import uvicorn

    from ctrlplane.app import create_app
    from ctrlplane.logs import configure_logging
    from ctrlplane.provisioning.registry import ProviderLoadError

    configure_logging(settings)
    settings = msgspec.structs.replace(
        settings, host=args.host or settings.host, port=settings.port if args.port is None else args.port
    )
    if settings.migrate_on_start and not args.no_migrate:
        asyncio.run(_migrate(settings))
    if any(a.startswith("HS") for a in settings.jwt_algorithms):
        _, generated = ensure_signing_secret(settings)
        if generated:
            log.warning(
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
    config = uvicorn.Config(
        "ctrlplane.cli:worker_app" if workers > 1 else app,
        factory=workers > 1,
        workers=workers,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        loop="asyncio",
        http="httptools",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    sock = config.bind_socket()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"ctrlplane {app.state.services.version} serving on http://{shown}:{port}\n"
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
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def worker_app() -> Any:
    """The app of one ``serve --workers`` process, from the environment the parent was started with
    (the parent has migrated the database and checked the configuration)."""
    from ctrlplane.app import create_app

    settings = Settings.from_env()
    return create_app(msgspec.structs.replace(settings, migrate_on_start=False))


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
    except RuntimeError as exc:
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


async def _audit_verify(settings: Settings) -> int:
    from ctrlplane.audit.service import verify
    from ctrlplane.db import connect

    database = connect(settings.resolved_database_url)
    try:
        async with database.read() as session:
            report = await verify(session)
    finally:
        await database.dispose()
    if report.broken is None:
        chains = "chain" if report.chains == 1 else "chains"
        print(f"audit log intact: {report.entries} entries in {report.chains} {chains}")
        return 0
    broken = report.broken
    print(
        f"audit chain {broken.chain!r} broken at entry {broken.seq}"
        f"{f' ({broken.entry_id})' if broken.entry_id else ''}: {broken.reason}"
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
