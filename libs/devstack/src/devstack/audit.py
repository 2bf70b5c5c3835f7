"""The invariant audit: what must hold across the four databases, S3 and the broker at rest.

`run_audit(target, options)` reads each service's database, the bucket and the dead-letter
queues and returns every violation it finds (an empty list means the stack is sound):

- `unfinished`: an image `queued`/`processing` with no progress for longer than the timeout;
  `error-without-reason`: an image in `error` that does not say why;
- `missing-object`: an image's `original_key` or `staged_key` that is not in the bucket;
- `orphan-object`: an object under `originals/` or `staged/` that no image (or job of a
  living image) owns, past the grace period; an upload under `uploads/` unused past its own;
- `double-charge` / `overcharge` / `charged-failure`: an attempt charged twice, an image
  charged more often than it was attempted, a failed attempt still charged (once refunds exist);
- `usage`: the usage projects reports for a user differs from its charges minus refunds;
- `outbox`: an event not published long after it was written;
- `dead-letters`: messages parked in a dead-letter queue;
- `unreachable`: a database, the bucket or the broker could not be read, so nothing is proven.

The audit only reads; it never starts infrastructure and never changes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aio_pika.exceptions
import asyncpg
import httpx
from minio import Minio
from minio.error import S3Error

from contracts.topology import ALL_QUEUES
from devstack.infra import (
    DEFAULT_AMQP_URL,
    DEFAULT_PG_URL,
    S3_ACCESS_KEY,
    S3_BUCKET,
    S3_PORT,
    S3_SECRET_KEY,
)
from devstack.services import DEFAULT_DB_PREFIX, DEFAULT_PORTS, SERVICES, db_names

log = logging.getLogger("devstack.audit")

SETTLE_AFTER_SECONDS = 900.0
"""Projects' default `settle_after_seconds`: the reconciler asks staging to settle after this."""
UNFINISHED_MARGIN_SECONDS = 360.0
"""Time for a settle request to be answered: the slowest backend's timeout (300 s) and a minute."""
UNFINISHED_STATUSES = ("queued", "processing")
PREFIXES = ("uploads/", "originals/", "staged/")


def default_unfinished_after() -> float:
    """Projects' settle-after (from PROJECTS_SETTLE_AFTER_SECONDS if set) plus the margin."""
    raw = os.environ.get("PROJECTS_SETTLE_AFTER_SECONDS")
    return (float(raw) if raw else SETTLE_AFTER_SECONDS) + UNFINISHED_MARGIN_SECONDS


@dataclass(frozen=True)
class Violation:
    """One broken invariant, with the ids a person needs to look into it."""

    check: str
    message: str
    ids: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}" + (f" ({', '.join(self.ids)})" if self.ids else "")


@dataclass(frozen=True)
class AuditTarget:
    """Where a stack keeps its state."""

    database_urls: Mapping[str, str]
    """Each service's database (SQLAlchemy or libpq URL), by service name."""
    amqp_url: str
    """The stack's virtual host, where its dead-letter queues live."""
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str = S3_BUCKET
    gateway_url: str | None = None
    """A development gateway (one with `/v1/dev/token`), to read usage as projects reports it."""

    @classmethod
    def for_stack(
        cls,
        *,
        pg_base_url: str = DEFAULT_PG_URL,
        db_prefix: str = DEFAULT_DB_PREFIX,
        amqp_url: str = DEFAULT_AMQP_URL,
        s3_endpoint: str = f"http://127.0.0.1:{S3_PORT}",
        s3_access_key: str = S3_ACCESS_KEY,
        s3_secret_key: str = S3_SECRET_KEY,
        s3_bucket: str = S3_BUCKET,
        gateway_url: str | None = None,
    ) -> AuditTarget:
        """The target of a devstack `Stack` (by default the one `make up` runs)."""
        base = pg_base_url.rstrip("/")
        names = db_names(db_prefix)
        return cls(
            database_urls={name: f"{base}/{names[name]}" for name in SERVICES},
            amqp_url=amqp_url,
            s3_endpoint=s3_endpoint,
            s3_access_key=s3_access_key,
            s3_secret_key=s3_secret_key,
            s3_bucket=s3_bucket,
            gateway_url=gateway_url,
        )

    @classmethod
    def from_env(cls) -> AuditTarget:
        """The `make up` stack, with the DEVSTACK_* overrides `devstack` itself reads."""
        env = os.environ
        port = DEFAULT_PORTS["gateway"]
        return cls.for_stack(
            pg_base_url=env.get("DEVSTACK_PG_URL") or DEFAULT_PG_URL,
            db_prefix=env.get("DEVSTACK_DB_PREFIX") or DEFAULT_DB_PREFIX,
            amqp_url=env.get("DEVSTACK_AMQP_URL") or DEFAULT_AMQP_URL,
            s3_endpoint=env.get("DEVSTACK_S3_ENDPOINT") or f"http://127.0.0.1:{S3_PORT}",
            s3_access_key=env.get("DEVSTACK_S3_ACCESS_KEY") or S3_ACCESS_KEY,
            s3_secret_key=env.get("DEVSTACK_S3_SECRET_KEY") or S3_SECRET_KEY,
            s3_bucket=env.get("DEVSTACK_S3_BUCKET") or S3_BUCKET,
            gateway_url=env.get("DEVSTACK_GATEWAY_URL") or f"http://127.0.0.1:{port}",
        )


@dataclass(frozen=True)
class AuditOptions:
    """Time windows within which unfinished work is still fine."""

    unfinished_after_seconds: float = field(default_factory=default_unfinished_after)
    """An image with no progress for longer than this should have been settled."""
    orphan_grace_seconds: float = 3600.0
    """An original or staged object may lack an owner this long (a write racing its commit)."""
    upload_grace_seconds: float = 24 * 3600.0
    """An upload nobody used may stay this long before the sweeper removes it."""
    outbox_grace_seconds: float = 10.0
    """An event may wait this long in an outbox before it counts as stuck."""
    whole_bucket: bool = False
    """Check every object in the bucket, not only those under the stack's users' prefixes."""


@dataclass
class AuditReport:
    """The violations found and what was looked at."""

    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every invariant held."""
        return not self.violations

    def lines(self) -> list[str]:
        """The report as text lines, for a terminal."""
        figures = ", ".join(f"{n} {what}" for what, n in self.checked.items())
        out = [f"audit checked {figures}"]
        out += [f"note: {note}" for note in self.notes]
        out += [str(v) for v in self.violations]
        if self.violations:
            out.append(f"{len(self.violations)} violation(s)")
        else:
            out.append("no violations")
        return out


@dataclass(frozen=True)
class ImageRow:
    """What the audit needs of an image."""

    id: str
    user_id: str
    status: str
    attempt: int
    original_key: str | None
    staged_key: str | None
    error: str | None
    age_seconds: float
    """Seconds since the image last changed (`updated_at`)."""


@dataclass(frozen=True)
class ChargeRow:
    """One usage charge, and whether it was refunded."""

    user_id: str
    image_id: str
    attempt: int
    refunded: bool = False


@dataclass(frozen=True)
class ObjectRow:
    """One object in the bucket."""

    key: str
    age_seconds: float


@dataclass(frozen=True)
class ReportedUsage:
    """The usage projects reports for a user, and the charges behind the same period."""

    user_id: str
    used: int
    charged: int
    refunded: int


def check_images(images: Iterable[ImageRow], options: AuditOptions) -> list[Violation]:
    """Every image is terminal or younger than the timeout; every error says why."""
    out: list[Violation] = []
    for image in images:
        if image.status in UNFINISHED_STATUSES:
            if image.age_seconds > options.unfinished_after_seconds:
                out.append(
                    Violation(
                        "unfinished",
                        f"image {image.status} for {image.age_seconds:.0f} s "
                        f"(attempt {image.attempt}; timeout "
                        f"{options.unfinished_after_seconds:.0f} s)",
                        (image.id,),
                    )
                )
        elif image.status == "error" and not (image.error or "").strip():
            out.append(
                Violation("error-without-reason", "image in error with no reason", (image.id,))
            )
    return out


def check_objects_present(images: Iterable[ImageRow], present: Iterable[str]) -> list[Violation]:
    """Every image's original and staged photo is in the bucket."""
    have = set(present)
    out: list[Violation] = []
    for image in images:
        for what, key in (("original_key", image.original_key), ("staged_key", image.staged_key)):
            if key and key not in have:
                out.append(
                    Violation("missing-object", f"{what} {key} is not in the bucket", (image.id,))
                )
    return out


def check_orphans(
    objects: Iterable[ObjectRow],
    images: Iterable[ImageRow],
    job_keys: Iterable[tuple[str, str]],
    options: AuditOptions,
) -> list[Violation]:
    """No object without an owner past its grace period.

    An original is owned by the image that points at it; a staged photo by its image, or by a
    job (an earlier attempt's result) as long as that job's image exists; an upload by an image
    made straight from it (before originals were copied) or by being younger than a day.
    """
    image_list = list(images)
    living = {image.id for image in image_list}
    originals = {image.original_key for image in image_list if image.original_key}
    staged = {image.staged_key for image in image_list if image.staged_key}
    staged |= {key for image_id, key in job_keys if image_id in living}
    out: list[Violation] = []
    for obj in objects:
        if obj.key.startswith("uploads/"):
            owned, grace = obj.key in originals, options.upload_grace_seconds
        elif obj.key.startswith("originals/"):
            owned, grace = obj.key in originals, options.orphan_grace_seconds
        elif obj.key.startswith("staged/"):
            owned, grace = obj.key in staged, options.orphan_grace_seconds
        else:
            continue
        if not owned and obj.age_seconds > grace:
            out.append(
                Violation(
                    "orphan-object",
                    f"{obj.key} has no owner {obj.age_seconds:.0f} s after it was written "
                    f"(grace {grace:.0f} s)",
                    (obj.key,),
                )
            )
    return out


def check_charges(
    charges: Iterable[ChargeRow], images: Iterable[ImageRow], *, refunds_exist: bool
) -> list[Violation]:
    """No attempt charged twice, no image charged beyond its attempts, no failure paid for."""
    by_image: dict[str, list[ChargeRow]] = defaultdict(list)
    for charge in charges:
        by_image[charge.image_id].append(charge)
    out: list[Violation] = []
    for image_id, rows in by_image.items():
        attempts: dict[int, int] = defaultdict(int)
        for row in rows:
            if not row.refunded:
                attempts[row.attempt] += 1
        for attempt, n in sorted(attempts.items()):
            if n > 1:
                out.append(
                    Violation("double-charge", f"attempt {attempt} charged {n} times", (image_id,))
                )
    for image in images:
        rows = by_image.get(image.id, [])
        if len(rows) > image.attempt:
            out.append(
                Violation(
                    "overcharge",
                    f"{len(rows)} charges for {image.attempt} attempt(s)",
                    (image.id,),
                )
            )
        beyond = sorted({r.attempt for r in rows if r.attempt > image.attempt})
        if beyond:
            out.append(
                Violation(
                    "overcharge",
                    f"charged for attempt(s) {beyond} but the image is at attempt {image.attempt}",
                    (image.id,),
                )
            )
        # A customer never pays for our failures: once refunds exist, a failed attempt has one.
        if refunds_exist and image.status == "error":
            paid = [r for r in rows if r.attempt == image.attempt and not r.refunded]
            if paid:
                out.append(
                    Violation(
                        "charged-failure",
                        f"attempt {image.attempt} ended in error but is still charged",
                        (image.id,),
                    )
                )
    return out


def check_usage(reported: Iterable[ReportedUsage]) -> list[Violation]:
    """The usage projects reports equals the period's charges minus refunds."""
    out: list[Violation] = []
    for usage in reported:
        expected = usage.charged - usage.refunded
        if usage.used != expected:
            out.append(
                Violation(
                    "usage",
                    f"projects reports {usage.used} photo(s) used, but the period holds "
                    f"{usage.charged} charge(s) and {usage.refunded} refund(s)",
                    (usage.user_id,),
                )
            )
    return out


def check_dead_letters(counts: Mapping[str, int]) -> list[Violation]:
    """Every dead-letter queue is empty."""
    return [
        Violation(
            "dead-letters",
            f'{n} message(s) parked in {queue} (inspect with `make dlq ARGS="list {queue}"`)',
            (queue,),
        )
        for queue, n in counts.items()
        if n > 0
    ]


def refund_condition(charge_columns: Iterable[str]) -> str:
    """SQL saying whether a `usage_charges` row was refunded, from the columns the schema has.

    Today nothing is ever refunded; a `refunded_at` column is recognised as soon as a
    migration adds it (a separate refunds table would be one more branch here).
    """
    if "refunded_at" in set(charge_columns):
        return "refunded_at IS NOT NULL"
    return "FALSE"


def _dsn(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"postgresql://{rest}" if scheme.startswith("postgres") else url


async def _columns(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1",
        table,
    )
    return {str(r["column_name"]) for r in rows}


class _Auditor:
    """Gathers the stack's state and runs the checks over it."""

    def __init__(self, target: AuditTarget, options: AuditOptions) -> None:
        self.target = target
        self.options = options
        self.report = AuditReport()
        self.conns: dict[str, asyncpg.Connection] = {}

    def violate(self, check: str, message: str, *ids: str) -> None:
        self.report.violations.append(Violation(check, message, tuple(ids)))

    async def run(self) -> AuditReport:
        try:
            await self._connect()
            await self._run()
        finally:
            for conn in self.conns.values():
                with contextlib.suppress(Exception):
                    await conn.close()
        return self.report

    async def _connect(self) -> None:
        for service, url in self.target.database_urls.items():
            try:
                self.conns[service] = await asyncpg.connect(_dsn(url), timeout=10)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                self.violate("unreachable", f"{service} database: {exc!r}", service)

    async def _run(self) -> None:
        projects = self.conns.get("projects")
        staging = self.conns.get("staging")
        images: list[ImageRow] = []
        if projects is not None:
            images = await self._images(projects)
            self.report.checked["images"] = len(images)
            self.report.violations += check_images(images, self.options)
        job_keys = await self._job_keys(staging) if staging is not None else []
        users = await self._users()
        await self._objects(images, job_keys, users)
        if projects is not None:
            await self._charges(projects, images)
        await self._outboxes()
        await self._dead_letters()

    async def _images(self, conn: asyncpg.Connection) -> list[ImageRow]:
        rows = await conn.fetch(
            "SELECT id::text AS id, user_id::text AS user_id, status::text AS status, attempt, "
            "original_key, staged_key, error, "
            "extract(epoch FROM now() - updated_at)::float8 AS age FROM images"
        )
        return [
            ImageRow(
                id=r["id"],
                user_id=r["user_id"],
                status=r["status"],
                attempt=int(r["attempt"]),
                original_key=r["original_key"],
                staged_key=r["staged_key"],
                error=r["error"],
                age_seconds=float(r["age"]),
            )
            for r in rows
        ]

    async def _job_keys(self, conn: asyncpg.Connection) -> list[tuple[str, str]]:
        # Staging may keep a backend result apart from the recorded photo (`result_key`).
        columns = await _columns(conn, "jobs") & {"staged_key", "result_key"}
        keys: list[tuple[str, str]] = []
        for column in sorted(columns):
            rows = await conn.fetch(
                f"SELECT image_id::text AS image_id, {column} AS key FROM jobs "
                f"WHERE {column} IS NOT NULL"
            )
            keys += [(r["image_id"], r["key"]) for r in rows]
        return keys

    async def _users(self) -> set[str]:
        queries = {
            "gateway": ["SELECT id::text AS id FROM users"],
            "projects": [
                "SELECT DISTINCT user_id::text AS id FROM projects",
                "SELECT DISTINCT user_id::text AS id FROM usage_charges",
            ],
            "staging": ["SELECT DISTINCT user_id::text AS id FROM jobs"],
        }
        users: set[str] = set()
        for service, sqls in queries.items():
            conn = self.conns.get(service)
            if conn is None:
                continue
            for sql in sqls:
                users |= {r["id"] for r in await conn.fetch(sql)}
        return users

    def _s3(self) -> Minio:
        parts = urlsplit(self.target.s3_endpoint)
        return Minio(
            parts.netloc,
            access_key=self.target.s3_access_key,
            secret_key=self.target.s3_secret_key,
            secure=parts.scheme == "https",
            region="us-east-1",
        )

    def _list(self, client: Minio, prefixes: Sequence[str]) -> list[ObjectRow]:
        now = datetime.now().astimezone()
        out: list[ObjectRow] = []
        for prefix in prefixes:
            for obj in client.list_objects(self.target.s3_bucket, prefix=prefix, recursive=True):
                if obj.object_name is None or obj.is_dir:
                    continue
                modified = obj.last_modified or now
                out.append(ObjectRow(obj.object_name, (now - modified).total_seconds()))
        return out

    def _exists(self, client: Minio, key: str) -> bool:
        try:
            client.stat_object(self.target.s3_bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound", "NotFound"):
                return False
            raise
        return True

    async def _objects(
        self, images: list[ImageRow], job_keys: list[tuple[str, str]], users: set[str]
    ) -> None:
        if self.options.whole_bucket:
            prefixes: list[str] = list(PREFIXES)
        else:
            # The bucket may be shared with other stacks (tests do): look only at our users'.
            prefixes = [f"{p}{u}/" for u in sorted(users) for p in PREFIXES]
        client = self._s3()
        try:
            objects = await asyncio.to_thread(self._list, client, prefixes)
            listed = {o.key for o in objects}
            wanted = {k for i in images for k in (i.original_key, i.staged_key) if k}
            # A key outside the listed prefixes is looked up on its own.
            unlisted = sorted(wanted - listed)
            found = await asyncio.gather(
                *(asyncio.to_thread(self._exists, client, k) for k in unlisted)
            )
        except Exception as exc:
            self.violate("unreachable", f"bucket {self.target.s3_bucket}: {exc!r}", "s3")
            return
        self.report.checked["objects"] = len(objects)
        present = listed | {k for k, ok in zip(unlisted, found, strict=True) if ok}
        self.report.violations += check_objects_present(images, present)
        self.report.violations += check_orphans(objects, images, job_keys, self.options)

    async def _charges(self, conn: asyncpg.Connection, images: list[ImageRow]) -> None:
        columns = await _columns(conn, "usage_charges")
        refunded = refund_condition(columns)
        rows = await conn.fetch(
            "SELECT user_id::text AS user_id, image_id::text AS image_id, attempt, "
            f"({refunded}) AS refunded FROM usage_charges"
        )
        charges = [
            ChargeRow(r["user_id"], r["image_id"], int(r["attempt"]), bool(r["refunded"]))
            for r in rows
        ]
        self.report.checked["charges"] = len(charges)
        refunds_exist = refunded != "FALSE"
        self.report.violations += check_charges(charges, images, refunds_exist=refunds_exist)
        users = sorted({c.user_id for c in charges})
        reported = await self._reported_usage(conn, users, refunded)
        if reported is not None:
            self.report.checked["users' usage"] = len(reported)
            self.report.violations += check_usage(reported)

    async def _reported_usage(
        self, conn: asyncpg.Connection, users: list[str], refunded: str
    ) -> list[ReportedUsage] | None:
        gateway_db = self.conns.get("gateway")
        if self.target.gateway_url is None or gateway_db is None or not users:
            if self.target.gateway_url is None:
                self.report.notes.append("usage as projects reports it not read (no gateway)")
            return None
        subs = {
            r["id"]: r["auth0_sub"]
            for r in await gateway_db.fetch(
                "SELECT id::text AS id, auth0_sub FROM users WHERE id = ANY($1::uuid[])", users
            )
        }
        out: list[ReportedUsage] = []
        async with httpx.AsyncClient(base_url=self.target.gateway_url, timeout=15) as client:
            for user_id in users:
                sub = subs.get(user_id)
                if sub is None:
                    self.violate("usage", "charged user unknown to the gateway", user_id)
                    continue
                try:
                    token = await client.post("/v1/dev/token", json={"sub": sub})
                    if token.status_code == 404:
                        self.report.notes.append(
                            "usage as projects reports it not read (the gateway has no dev "
                            "sign-in); charges were still checked per attempt"
                        )
                        return None
                    token.raise_for_status()
                    auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
                    resp = await client.get("/v1/usage", headers=auth)
                    resp.raise_for_status()
                except httpx.HTTPError as exc:
                    self.violate("unreachable", f"usage of a user through the gateway: {exc!r}")
                    return None
                body: dict[str, Any] = resp.json()
                start = datetime.fromisoformat(body["period_start"])
                end = datetime.fromisoformat(body["period_end"])
                row = await conn.fetchrow(
                    f"SELECT count(*) AS charged, count(*) FILTER (WHERE {refunded}) AS refunded "
                    "FROM usage_charges WHERE user_id = $1::uuid "
                    "AND charged_at >= $2 AND charged_at < $3",
                    user_id,
                    start,
                    end,
                )
                assert row is not None
                out.append(
                    ReportedUsage(
                        user_id, int(body["used"]), int(row["charged"]), int(row["refunded"])
                    )
                )
        return out

    async def _outboxes(self) -> None:
        grace = timedelta(seconds=self.options.outbox_grace_seconds)
        for service, conn in self.conns.items():
            if await conn.fetchval("SELECT to_regclass('outbox') IS NOT NULL") is not True:
                continue
            rows = await conn.fetch(
                "SELECT id::text AS id, routing_key, attempts, last_error, "
                "extract(epoch FROM now() - created_at)::float8 AS age FROM outbox "
                "WHERE published_at IS NULL AND created_at < now() - $1::interval "
                "ORDER BY created_at",
                grace,
            )
            for r in rows:
                error = f"; last error {r['last_error']}" if r["last_error"] else ""
                self.violate(
                    "outbox",
                    f"{service} {r['routing_key']} unpublished for {r['age']:.0f} s "
                    f"({r['attempts']} attempt(s){error})",
                    r["id"],
                )

    async def _dead_letters(self) -> None:
        counts: dict[str, int] = {}
        try:
            connection = await aio_pika.connect(self.target.amqp_url, timeout=10)
        except Exception as exc:
            self.violate("unreachable", f"broker: {exc!r}", "amqp")
            return
        async with connection:
            for spec in ALL_QUEUES:
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(spec.dead_letter, passive=True)
                    counts[spec.dead_letter] = int(queue.declaration_result.message_count or 0)
                except aio_pika.exceptions.ChannelClosed:
                    # Never declared: nothing was ever parked there.
                    counts[spec.dead_letter] = 0
                finally:
                    with contextlib.suppress(Exception):
                        await channel.close()
        self.report.checked["dead-letter queues"] = len(counts)
        self.report.violations += check_dead_letters(counts)


async def audit(target: AuditTarget, options: AuditOptions | None = None) -> AuditReport:
    """Check every invariant of the stack at `target`; return the violations and figures."""
    return await _Auditor(target, options or AuditOptions()).run()


async def run_audit(target: AuditTarget, options: AuditOptions | None = None) -> list[Violation]:
    """Check every invariant of the stack at `target`; return the violations (none: sound)."""
    return (await audit(target, options)).violations
