"""The four Real Staging services as local processes, and a `Stack` that runs them all."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

from devstack.infra import (
    LOCALHOST,
    Cleanup,
    Infra,
    drop_database,
    ensure_database,
    ensure_infra,
    port_open,
    prepare_state_dir,
)

log = logging.getLogger("devstack")

SERVICES = ("billing", "projects", "staging", "gateway")
DEFAULT_PORTS: Mapping[str, int] = {
    "gateway": 8000,
    "projects": 8001,
    "staging": 8002,
    "billing": 8003,
}
DEFAULT_DB_PREFIX = "realstaging"


class ServiceError(RuntimeError):
    """A service process failed to migrate, start or become healthy."""


class PortInUseError(ServiceError):
    """A service's port is already taken (another stack is probably running)."""


def db_names(prefix: str = DEFAULT_DB_PREFIX) -> dict[str, str]:
    """Return each service's database name, e.g. `realstaging_gateway`."""
    return {name: f"{prefix}_{name}" for name in SERVICES}


def service_url(name: str, ports: Mapping[str, int]) -> str:
    """Return the base URL of a service."""
    return f"http://{LOCALHOST}:{ports[name]}"


def service_env(
    infra: Infra,
    name: str,
    *,
    db_name: str,
    ports: Mapping[str, int],
    internal_secret: str,
    state_dir: Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build one service's environment: os.environ plus the shared and prefixed settings."""
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; expected one of {SERVICES}")
    if len(internal_secret) < 32:
        raise ValueError("internal_secret must be at least 32 characters")
    env = dict(os.environ)
    env.update(
        ENVIRONMENT="development",
        AMQP_URL=infra.amqp_url,
        INTERNAL_SECRET=internal_secret,
        S3_ENDPOINT=infra.s3_endpoint,
        S3_PUBLIC_ENDPOINT=infra.s3_endpoint,
        S3_ACCESS_KEY=infra.s3_access_key,
        S3_SECRET_KEY=infra.s3_secret_key,
        S3_BUCKET=infra.s3_bucket,
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    prefix = name.upper()
    env[f"{prefix}_DATABASE_URL"] = infra.database_url(db_name)
    env[f"{prefix}_HOST"] = LOCALHOST
    env[f"{prefix}_PORT"] = str(ports[name])
    if name == "gateway":
        env["GATEWAY_PROJECTS_URL"] = service_url("projects", ports)
        env["GATEWAY_BILLING_URL"] = service_url("billing", ports)
        env["GATEWAY_STAGING_URL"] = service_url("staging", ports)
        env["GATEWAY_DEV_KEY_PATH"] = str(Path(state_dir) / "dev-issuer-key.pem")
        env["GATEWAY_PUBLIC_URL"] = service_url("gateway", ports)
    if name == "billing":
        # Stripe sends people back to the web app, which the gateway serves.
        env["BILLING_APP_URL"] = service_url("gateway", ports)
    if extra:
        env.update(extra)
    return env


def migrate(name: str, env: Mapping[str, str], timeout: float = 300) -> None:
    """Run `python -m <name> migrate` (Alembic to head); raise ServiceError with its output."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", name, "migrate"],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{name} migrate did not finish within {timeout:.0f} s") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-6000:]
        raise ServiceError(f"{name} migrate failed with exit code {result.returncode}:\n{output}")


class ServiceProcess:
    """One service run as `python -m <name>` in its own process group."""

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        *,
        port: int,
        log_path: Path | None = None,
        inherit_output: bool = False,
    ) -> None:
        self.name = name
        self.env = dict(env)
        self.port = port
        self.log_path = log_path
        self.inherit_output = inherit_output
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._starts = 0

    @property
    def url(self) -> str:
        """The service's base URL."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The pid of the current process, if one was started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited, else None."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the process has been started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process; refuse if it is running or its port is taken."""
        if self.running:
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        if port_open(self.port):
            raise PortInUseError(f"port {self.port} for {self.name} is already in use")
        self._close_log()
        stdout: int | IO[bytes] | None = None
        if not self.inherit_output and self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            # A restart appends, so the log of the crash that prompted it survives.
            self._log = self.log_path.open("ab" if self._starts else "wb")
            stdout = self._log
        elif not self.inherit_output:
            stdout = subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [sys.executable, "-m", self.name],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,
        )
        self._starts += 1
        log.info("started %s (pid %s) on %s", self.name, self._proc.pid, self.url)

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines of the service's log file."""
        if self.log_path is None or self.inherit_output:
            return "(output not captured)"
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_for(self, path: str, timeout: float) -> None:
        if self._proc is None:
            raise ServiceError(f"{self.name} was never started")
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        interval = 0.05
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise ServiceError(
                        f"{self.name} exited with code {code} before {path} answered 200; "
                        f"last lines of {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    response = client.get(self.url + path)
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:500]}"
                if time.monotonic() >= deadline:
                    raise ServiceError(
                        f"{self.name} {path} did not answer 200 within {timeout:.0f} s "
                        f"(last: {last}); last lines of {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(interval)
                interval = min(interval * 2, 0.5)

    def wait_healthy(self, timeout: float = 60) -> None:
        """Poll GET /healthz until it answers 200; else raise ServiceError with the log tail."""
        self._wait_for("/healthz", timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        """Poll GET /readyz until it answers 200; else raise ServiceError with the log tail."""
        self._wait_for("/readyz", timeout)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def stop(self, timeout: float = 10) -> bool:
        """SIGTERM the process group, SIGKILL it after `timeout`; return whether it was running."""
        if self._proc is None:
            return False
        was_running = self._proc.poll() is None
        if was_running:
            self._signal_group(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, timeout)
                self._signal_group(signal.SIGKILL)
                self._proc.wait()
        self._close_log()
        return was_running

    def kill(self) -> None:
        """SIGKILL the process group at once, as a crash would."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self._proc.wait()

    def restart(self, timeout: float = 10) -> None:
        """Stop the process if it runs, wait for its port to be released, and start it again."""
        self.stop(timeout)
        deadline = time.monotonic() + timeout
        while port_open(self.port):
            if time.monotonic() >= deadline:
                raise PortInUseError(f"port {self.port} for {self.name} still in use after stop")
            time.sleep(0.1)
        self.start()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Stack:
    """Infrastructure, databases, migrations and the four service processes, as one unit."""

    def __init__(
        self,
        *,
        ports: Mapping[str, int] | None = None,
        db_prefix: str = DEFAULT_DB_PREFIX,
        drop_databases_on_exit: bool = False,
        internal_secret: str | None = None,
        state_dir: Path | None = None,
        inherit_output: bool = False,
        extra_env: Mapping[str, str] | None = None,
        timeout: float = 90,
    ) -> None:
        merged = dict(DEFAULT_PORTS)
        merged.update(ports or {})
        self.ports: dict[str, int] = merged
        self.db_names = db_names(db_prefix)
        self.drop_databases_on_exit = drop_databases_on_exit
        self.internal_secret = internal_secret or secrets.token_urlsafe(48)
        self.state_dir = prepare_state_dir(state_dir)
        self.inherit_output = inherit_output
        self.extra_env = dict(extra_env or {})
        self.timeout = timeout
        self._infra: Infra | None = None
        self._cleanups: list[Callable[[], None]] = []
        self._envs: dict[str, dict[str, str]] = {}
        self._processes: dict[str, ServiceProcess] = {}
        self._databases_created = False

    @property
    def infra(self) -> Infra:
        """The infrastructure the stack runs on (after start)."""
        if self._infra is None:
            raise RuntimeError("the stack has not been started")
        return self._infra

    @property
    def log_dir(self) -> Path:
        """Where the services' logs go."""
        return self.state_dir / "logs"

    @property
    def started_infra(self) -> list[str]:
        """What infrastructure this stack started itself (and will stop)."""
        return [c.description if isinstance(c, Cleanup) else repr(c) for c in self._cleanups]

    def url(self, name: str) -> str:
        """Return a service's base URL."""
        return service_url(name, self.ports)

    def env(self, name: str) -> dict[str, str]:
        """Return a copy of a service's environment (after start)."""
        return dict(self._envs[name])

    def process(self, name: str) -> ServiceProcess:
        """Return a service's process handle (after start)."""
        return self._processes[name]

    def check_ports(self) -> None:
        """Raise PortInUseError naming every service port that is already taken."""
        taken = [f"{n} {self.ports[n]}" for n in SERVICES if port_open(self.ports[n])]
        if taken:
            raise PortInUseError(
                "ports already in use: " + ", ".join(taken) + " (is another stack running?)"
            )

    def start(self) -> Self:
        """Bring everything up and wait until every service is healthy and ready."""
        # Before touching anything, so that a second `make up` fails without half-starting.
        self.check_ports()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        started = time.monotonic()
        infra, self._cleanups = ensure_infra(self.state_dir)
        self._infra = infra
        self._databases_created = True
        for name in SERVICES:
            ensure_database(self.db_names[name], infra.pg_base_url)
        for name in SERVICES:
            self._envs[name] = service_env(
                infra,
                name,
                db_name=self.db_names[name],
                ports=self.ports,
                internal_secret=self.internal_secret,
                state_dir=self.state_dir,
                extra=self.extra_env,
            )
        with ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:
            futures = [pool.submit(migrate, n, self._envs[n]) for n in SERVICES]
            errors = [str(f.exception()) for f in futures if f.exception() is not None]
        if errors:
            raise ServiceError("\n\n".join(errors))
        log.info("migrations done")
        for name in SERVICES:
            process = ServiceProcess(
                name,
                self._envs[name],
                port=self.ports[name],
                log_path=self.log_dir / f"{name}.log",
                inherit_output=self.inherit_output,
            )
            self._processes[name] = process
            process.start()
        deadline = time.monotonic() + self.timeout
        for name in SERVICES:
            self._processes[name].wait_healthy(max(deadline - time.monotonic(), 1))
        for name in SERVICES:
            self._processes[name].wait_ready(max(deadline - time.monotonic(), 1))
        log.info("stack ready in %.1f s", time.monotonic() - started)

    def stop(self, timeout: float = 10) -> list[str]:
        """Stop the services, then whatever infrastructure this stack started; say what stopped."""
        stopped: list[str] = []
        processes = [self._processes[n] for n in reversed(SERVICES) if n in self._processes]
        with ThreadPoolExecutor(max_workers=max(len(processes), 1)) as pool:
            results = list(pool.map(lambda p: p.stop(timeout), processes))
        stopped += [
            p.name for p, was_running in zip(processes, results, strict=True) if was_running
        ]
        self._processes.clear()
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception as exc:
                log.warning("cleanup %r failed: %s", cleanup, exc)
            else:
                stopped.append(
                    cleanup.description if isinstance(cleanup, Cleanup) else repr(cleanup)
                )
        self._cleanups = []
        if self.drop_databases_on_exit and self._databases_created and self._infra is not None:
            for name in SERVICES:
                try:
                    drop_database(self.db_names[name], self._infra.pg_base_url)
                except Exception as exc:
                    log.warning("could not drop database %s: %s", self.db_names[name], exc)
            self._databases_created = False
        return stopped

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
