"""Operator commands: `python -m gateway.cli mint-token|set-role`.

Settings come from the environment exactly as the service reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from contracts.enums import Role
from gateway import service
from gateway.devissuer import DevIssuer
from gateway.settings import GatewaySettings
from servicekit.db import create_engine, create_sessionmaker, unit_of_work


def _settings() -> GatewaySettings:
    try:
        return GatewaySettings()
    except ValidationError as exc:
        messages = "; ".join(str(err.get("msg", err)) for err in exc.errors())
        raise SystemExit(f"error: the gateway settings are not valid: {messages}") from None


def mint_token(
    settings: GatewaySettings,
    sub: str,
    *,
    email: str | None = None,
    role: str | None = None,
    ttl: int = 3600,
) -> str:
    """A development access token for `sub`; refused unless the gateway is its own issuer."""
    if settings.is_production or settings.auth0_domain:
        raise SystemExit(
            "error: mint-token only works with the development issuer "
            "(not in production, and not when GATEWAY_AUTH0_DOMAIN is set)"
        )
    issuer = DevIssuer.from_path(
        settings.dev_key_path, issuer=settings.token_issuer, audience=settings.dev_audience
    )
    return issuer.mint(sub, email=email, role=role, ttl_seconds=ttl)


def operator() -> str:
    """Who runs this command, for the audit of role changes."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


async def set_role(
    settings: GatewaySettings, sub: str, role: Role, email: str | None, actor: str | None = None
) -> str:
    """Give the user with `sub` a role (audited), creating the user if they never signed in.

    The role holds until the person's next request, which applies the source again (the Auth0
    roles claim or `GATEWAY_ADMIN_SUBS`): a lasting grant belongs there.
    """
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as session:
            result = await service.set_role_by_sub(
                session, sub, role, email=email, actor=actor or operator()
            )
    finally:
        await engine.dispose()
    verb = "created" if result.created else "updated"
    return f"{verb} user {result.user.id} ({sub}): role {result.user.role}"


def main(argv: Sequence[str] | None = None) -> None:
    """Run one operator command."""
    parser = argparse.ArgumentParser(prog="python -m gateway.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    mint = sub.add_parser("mint-token", help="print a development access token")
    mint.add_argument("--sub", required=True, help="the subject, e.g. dev|alice")
    mint.add_argument("--email")
    mint.add_argument(
        "--role",
        choices=[r.value for r in Role],
        help="role claim; the gateway applies it on every request made with the token",
    )
    mint.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    role = sub.add_parser(
        "set-role",
        help="set a user's role now (audited; their next sign-in applies the source again)",
    )
    role.add_argument("--sub", required=True)
    role.add_argument("--role", required=True, choices=[r.value for r in Role])
    role.add_argument("--email", help="used only when the user is created")
    args = parser.parse_args(argv)

    settings = _settings()
    if args.command == "mint-token":
        if args.ttl <= 0:
            parser.error("--ttl must be positive")
        print(mint_token(settings, args.sub, email=args.email, role=args.role, ttl=args.ttl))
    else:
        try:
            message = asyncio.run(set_role(settings, args.sub, Role(args.role), args.email))
        except (OSError, SQLAlchemyError) as exc:
            raise SystemExit(f"error: the gateway database is unavailable: {exc}") from None
        print(message, file=sys.stderr)


if __name__ == "__main__":
    main()
