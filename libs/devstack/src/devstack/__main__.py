"""`python -m devstack up|infra|stop-infra`: the local stack for people and for the test suite."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from devstack.infra import InfraError, S3Server, ensure_infra, prepare_state_dir
from devstack.services import SERVICES, PortInUseError, ServiceError, Stack

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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="devstack: %(message)s", stream=sys.stderr, force=True
    )
    # httpx logs every readiness poll at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    state_dir = prepare_state_dir(args.state_dir)
    if args.command == "up":
        return cmd_up(state_dir)
    if args.command == "infra":
        return cmd_infra(state_dir)
    return cmd_stop_infra(state_dir)


if __name__ == "__main__":
    sys.exit(main())
