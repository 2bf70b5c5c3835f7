"""`python -m devstack up|infra|stop-infra|audit`: the local stack for people and the tests."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from devstack.audit import AuditOptions, AuditTarget, audit
from devstack.infra import InfraError, S3Server, ensure_infra, prepare_state_dir
from devstack.services import DEFAULT_DB_PREFIX, SERVICES, PortInUseError, ServiceError, Stack

TOKEN_SUB = "dev|alice"
TOKEN_EMAIL = "alice@example.com"


def _say(message: str = "") -> None:
    print(message, flush=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _mint_token(stack: Stack) -> None:
    """Print a development token from the gateway's CLI, or why there is none."""
    cmd = [sys.executable, "-m", "gateway.cli", "mint-token", "--sub", TOKEN_SUB]
    cmd += ["--email", TOKEN_EMAIL]
    try:
        result = subprocess.run(
            cmd,
            env=stack.env("gateway"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _say("  dev token:   (gateway.cli mint-token did not finish within 60 s)")
        return
    if result.returncode != 0:
        error = (result.stderr or result.stdout).strip()[-2000:]
        _say(f"  dev token:   (gateway.cli mint-token failed, exit code {result.returncode})")
        _say("               " + error.replace("\n", "\n               "))
        return
    _say(f"  dev token:   ({TOKEN_SUB}, {TOKEN_EMAIL}; send as `Authorization: Bearer <token>`)")
    _say(result.stdout.strip())


def _watch(stack: Stack, stop: threading.Event) -> None:
    """Block until asked to stop, reporting any service that dies meanwhile."""
    reported: set[str] = set()
    while not stop.wait(1.0):
        for name in SERVICES:
            process = stack.process(name)
            code = process.returncode
            if code is not None and name not in reported:
                reported.add(name)
                _say(f"!! {name} exited with code {code}; see {process.log_path}")


def cmd_up(state_dir: Path) -> int:
    """Run the whole stack in the foreground until Ctrl-C or SIGTERM."""
    stack = Stack(state_dir=state_dir)
    # Until the watch loop runs, SIGTERM must unwind like Ctrl-C so that Stack.start cleans up.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    _say(f"starting Real Staging; service logs go to {stack.log_dir}/<service>.log")
    try:
        stack.start()
    except PortInUseError as exc:
        _say(f"error: {exc}")
        _say("nothing was started; stop the other stack (Ctrl-C in its terminal) and retry")
        return 1
    except (InfraError, ServiceError) as exc:
        _say(f"error: {exc}")
        _say("stopped everything this command had started")
        return 1
    except KeyboardInterrupt:
        _say("interrupted; stopped everything this command had started")
        return 130
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    infra = stack.infra
    _say()
    _say("Real Staging is up.")
    _say(f"  gateway:     {stack.url('gateway')}")
    for name in ("projects", "staging", "billing"):
        _say(f"  {name + ':':<12} {stack.url(name)} (internal)")
    _say(
        f"  S3:          {infra.s3_endpoint} (access key {infra.s3_access_key}, "
        f"secret {infra.s3_secret_key}, bucket {infra.s3_bucket})"
    )
    _say(f"  PostgreSQL:  {infra.pg_base_url}/realstaging_<service>")
    _say(f"  RabbitMQ:    {infra.amqp_url}")
    _say(f"  logs:        {stack.log_dir}/{{{','.join(SERVICES)}}}.log")
    _mint_token(stack)
    _say()
    _say("Press Ctrl-C to stop.")
    try:
        _watch(stack, stop)
    finally:
        # Ignore further signals so that a second Ctrl-C cannot leave services orphaned.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _say("stopping...")
        s3_ours = bool(stack.started_infra)
        stopped = stack.stop()
        _say("stopped: " + (", ".join(stopped) if stopped else "nothing"))
        shared = "PostgreSQL, RabbitMQ" + ("" if s3_ours else ", S3 server (not started by up)")
        _say(f"left running (shared): {shared}")
    return 0


def cmd_infra(state_dir: Path) -> int:
    """Ensure the infrastructure and print `export TEST_*=...` lines for the test suite."""
    started = time.monotonic()
    try:
        infra, cleanups = ensure_infra(state_dir)
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # The S3 server runs in its own session and outlives this command on purpose: tests reuse it.
    for cleanup in cleanups:
        print(f"started {cleanup!r}; stop it with `python -m devstack stop-infra`", file=sys.stderr)
    print(f"infrastructure ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
    exports = {
        "TEST_PG_URL": infra.pg_base_url,
        "TEST_AMQP_URL": infra.amqp_url,
        "TEST_S3_ENDPOINT": infra.s3_endpoint,
        "TEST_S3_ACCESS_KEY": infra.s3_access_key,
        "TEST_S3_SECRET_KEY": infra.s3_secret_key,
    }
    for name, value in exports.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def cmd_stop_infra(state_dir: Path) -> int:
    """Stop the S3 server that `infra` (or an interrupted `up`) left running."""
    server = S3Server(state_dir)
    if server.stop():
        print(f"stopped the S3 server recorded in {server.pid_file}")
    else:
        print("no S3 server started by devstack is running")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Check the stack's invariants; print each violation; exit 1 if there is any."""
    target = AuditTarget.from_env()
    overrides = {
        "amqp_url": args.amqp_url,
        "s3_endpoint": args.s3_endpoint,
        "s3_bucket": args.s3_bucket,
        "gateway_url": args.gateway_url,
    }
    target = dataclasses.replace(target, **{k: v for k, v in overrides.items() if v is not None})
    if args.pg_url is not None or args.db_prefix is not None:
        stack = AuditTarget.for_stack(
            pg_base_url=args.pg_url or target.database_urls["gateway"].rsplit("/", 1)[0],
            db_prefix=args.db_prefix or os.environ.get("DEVSTACK_DB_PREFIX") or DEFAULT_DB_PREFIX,
        )
        target = dataclasses.replace(target, database_urls=stack.database_urls)
    if args.no_gateway:
        target = dataclasses.replace(target, gateway_url=None)
    options = AuditOptions(whole_bucket=args.whole_bucket)
    timings = {
        "unfinished_after_seconds": args.timeout,
        "orphan_grace_seconds": args.orphan_grace,
        "upload_grace_seconds": args.upload_grace,
        "outbox_grace_seconds": args.outbox_grace,
    }
    options = dataclasses.replace(options, **{k: v for k, v in timings.items() if v is not None})
    report = asyncio.run(audit(target, options))
    for line in report.lines():
        print(line, flush=True)
    return 0 if report.ok else 1


def _audit_parser(parser: argparse.ArgumentParser) -> None:
    env = "(default: $%s or the stack `make up` runs)"
    parser.add_argument("--pg-url", help="PostgreSQL server URL " + env % "DEVSTACK_PG_URL")
    parser.add_argument("--db-prefix", help="database name prefix " + env % "DEVSTACK_DB_PREFIX")
    parser.add_argument("--amqp-url", help="RabbitMQ vhost URL " + env % "DEVSTACK_AMQP_URL")
    parser.add_argument("--s3-endpoint", help="S3 endpoint " + env % "DEVSTACK_S3_ENDPOINT")
    parser.add_argument("--s3-bucket", help="bucket " + env % "DEVSTACK_S3_BUCKET")
    parser.add_argument(
        "--gateway-url", help="development gateway, to read usage " + env % "DEVSTACK_GATEWAY_URL"
    )
    parser.add_argument(
        "--no-gateway", action="store_true", help="do not read usage through the gateway"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds an image may stay queued/processing without progress "
        "(default: PROJECTS_SETTLE_AFTER_SECONDS or 900, plus 360)",
    )
    parser.add_argument(
        "--orphan-grace", type=float, help="seconds an original/staged object may lack an owner"
    )
    parser.add_argument(
        "--upload-grace", type=float, help="seconds an unused upload may stay (default 1 day)"
    )
    parser.add_argument(
        "--outbox-grace", type=float, help="seconds an event may wait unpublished (default 10)"
    )
    parser.add_argument(
        "--whole-bucket",
        action="store_true",
        help="check every object in the bucket, not only the stack's users' prefixes",
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where logs, S3 data and keys live (default: $DEVSTACK_STATE_DIR or <repo>/.stack)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run infrastructure and all four services until Ctrl-C")
    commands.add_parser("infra", help="ensure infrastructure; print TEST_* export lines")
    commands.add_parser("stop-infra", help="stop the S3 server that `infra` left running")
    _audit_parser(
        commands.add_parser(
            "audit", help="check the stack's invariants; print violations; exit 1 if any"
        )
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="devstack: %(message)s", stream=sys.stderr, force=True
    )
    # httpx logs every readiness poll at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "audit":
        return cmd_audit(args)
    state_dir = prepare_state_dir(args.state_dir)
    if args.command == "up":
        return cmd_up(state_dir)
    if args.command == "infra":
        return cmd_infra(state_dir)
    return cmd_stop_infra(state_dir)


if __name__ == "__main__":
    sys.exit(main())
