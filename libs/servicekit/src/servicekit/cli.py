"""The command line every service shares: `python -m <service> [serve|migrate|downgrade]`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib import resources

import uvicorn
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from pydantic import ValidationError

from servicekit.settings import ServiceSettings


def alembic_config(package: str, database_url: str) -> Config:
    """An Alembic config for the migrations shipped inside `package`."""
    config = Config()
    config.set_main_option("script_location", str(resources.files(package) / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url)
    config.attributes["database_url"] = database_url
    return config


def settings_failure(package: str, exc: ValidationError) -> str:
    """Why the settings were refused, one line per problem, without the values given."""
    # `str(exc)` would print the input values, secrets included.
    lines = [f"{package}: the settings are not valid"]
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "\n".join(lines)


def run(
    package: str,
    settings_factory: Callable[[], ServiceSettings],
    app_factory: Callable[[ServiceSettings], FastAPI],
    argv: list[str] | None = None,
) -> None:
    """Serve the app, or migrate its database."""
    parser = argparse.ArgumentParser(prog=f"python -m {package}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the HTTP service (default)")
    up = sub.add_parser("migrate", help="upgrade the database schema")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="downgrade the database schema")
    down.add_argument("revision", nargs="?", default="base")
    args = parser.parse_args(argv)

    try:
        settings = settings_factory()
    except ValidationError as exc:
        raise SystemExit(settings_failure(package, exc)) from None
    if args.command == "migrate":
        command.upgrade(alembic_config(package, settings.database_url), args.revision)
    elif args.command == "downgrade":
        command.downgrade(alembic_config(package, settings.database_url), args.revision)
    else:
        uvicorn.run(
            app_factory(settings),
            host=settings.host,
            port=settings.port,
            log_config=None,
            proxy_headers=True,
            timeout_graceful_shutdown=30,
        )
