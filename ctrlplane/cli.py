"""The ``ctrlplane`` command: serve, migrate, token issue, audit verify."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import timedelta

import msgspec
import structlog

from ctrlplane.auth.providers import ROLES
from ctrlplane.auth.tokens import ensure_signing_secret, issue_token
from ctrlplane.settings import Settings, SettingsError
from ctrlplane.timeutil import parse_duration

log = structlog.get_logger("ctrlplane.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctrlplane", description="ctrlplane: a multi-tenant PaaS control plane")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the API (migrates the database first)")
    serve.add_argument("--host", help="address to bind (CTRLPLANE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (CTRLPLANE_PORT, default 8080)")
    serve.add_argument("--no-migrate", action="store_true", help="do not migrate the database on start")

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

    audit = commands.add_parser("audit", help="the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="check every hash chain; exit 1 at the first broken link")

    args = parser.parse_args(argv)
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
    return asyncio.run(_audit_verify(settings))


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from ctrlplane.app import create_app
    from ctrlplane.logs import configure_logging
    from ctrlplane.provisioning.registry import ProviderLoadError

    configure_logging(settings)
    settings = msgspec.structs.replace(settings, host=args.host or settings.host, port=args.port or settings.port)
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
    except ProviderLoadError as exc:
        print(f"ctrlplane: {exc}", file=sys.stderr)
        return 2
    print(
        f"ctrlplane {app.state.services.version} serving on http://{settings.host}:{settings.port}\n"
        f"  admin token: ctrlplane token issue --admin",
        file=sys.stderr,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
    return 0


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
