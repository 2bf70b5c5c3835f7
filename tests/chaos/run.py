"""`make chaos`: photos in flight while services are SIGKILLed and the broker drops out.

A seeded, bounded run on loopback. A stack of its own, on the scaled time configuration (retry
ladder 0.2-2 s, reconcilers every second), reaches PostgreSQL, RabbitMQ and S3 through TCP
proxies; while photos are uploaded and staged, one random service is killed and restarted every
few seconds, the RabbitMQ proxy is cut once for a few seconds (every connection drops, as in a
broker restart; the machine's shared servers are never touched), and each long outage asked
for (the projects database, the staging database, the broker, S3) keeps its dependency away for
longer than the whole retry ladder. Then it checks that every photo settles, that no attempt
completed with two different results, that usage counts are exact and that no message was
dead-lettered, ends with the invariant audit, prints a summary, and exits non-zero on any
violation.

    uv run python -m tests.chaos.run [--photos 200] [--users 4] [--seed 7] [--outage-seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devstack.services import SERVICES
from tests.support.stackkit import (
    SCALED_LADDER,
    SCALED_ORPHAN_GRACE_SECONDS,
    SCALED_TIME,
    Api,
    ProxiedStack,
    dead_letter_counts,
    fetch,
    infra_from_env,
    jpeg,
    proxied_stack,
)

LONG_OUTAGES = ("projects", "staging", "amqp", "s3")
"""What a long outage can take away: a service's database, the broker or S3."""
AUDIT = {"unfinished_after_seconds": 30.0, "orphan_grace_seconds": SCALED_ORPHAN_GRACE_SECONDS}
"""Audit windows on the scaled time configuration (settle requests start after 5 s)."""

ROOMS = ("living_room", "bedroom", "kitchen", "office", "dining_room")
STYLES = ("modern", "scandinavian", "industrial", "coastal", "rustic")


@dataclass
class Options:
    """What to run."""

    photos: int = 200
    users: int = 4
    seed: int = 7
    kill_every: tuple[float, float] = (2.0, 6.0)
    min_chaos_seconds: float = 45.0
    broker_cut_seconds: tuple[float, float] = (3.0, 6.0)
    settle_seconds: float = 180.0
    photo_size: tuple[int, int] = (480, 320)
    long_outages: tuple[str, ...] = ()
    """Dependencies to keep away for `outage_seconds` each, one at a time."""
    outage_seconds: float = 8.0
    """Longer than the scaled retry ladder (3.7 s), so today's give-up would have parked."""

    @property
    def chaos_window(self) -> float:
        """The chaos phase's minimum length: kills pause during a long outage, so add them."""
        return self.min_chaos_seconds + len(self.long_outages) * self.outage_seconds


@dataclass
class Report:
    """What happened and what was wrong."""

    photos_requested: int = 0
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    kills: Counter[str] = field(default_factory=Counter)
    broker_cuts: int = 0
    outages: dict[str, float] = field(default_factory=dict)
    client_retries: int = 0
    chaos_seconds: float = 0.0
    settle_seconds: float | None = None
    runs_above_one: int = 0
    ready_reannounced: int = 0
    max_runs: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    usage: dict[str, tuple[int, int]] = field(default_factory=dict)
    audit: list[str] = field(default_factory=list)
    audit_seconds: float | None = None
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check held."""
        return not self.violations

    def ready_latencies(self) -> list[float]:
        """Seconds from creation to ready, for the photos that became ready."""
        out = []
        for body in self.images.values():
            if body.get("status") == "ready":
                created = datetime.fromisoformat(body["created_at"])
                updated = datetime.fromisoformat(body["updated_at"])
                out.append((updated - created).total_seconds())
        return sorted(out)

    def summary(self) -> str:
        """A table of the figures."""
        statuses = Counter(b.get("status", "?") for b in self.images.values())
        lat = self.ready_latencies()

        def pct(p: float) -> str:
            if not lat:
                return "-"
            return f"{lat[min(len(lat) - 1, round(p * (len(lat) - 1)))]:.1f} s"

        rows = [
            ("photos requested", str(self.photos_requested)),
            ("images created", str(len(self.images))),
            ("by status", ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))),
            (
                "kills (SIGKILL)",
                ", ".join(f"{s} {self.kills[s]}" for s in SERVICES)
                + f" (total {self.total_kills})",
            ),
            ("broker cuts", str(self.broker_cuts)),
            (
                "long outages",
                ", ".join(f"{k} {v:.1f} s" for k, v in self.outages.items())
                + f" (retry ladder {sum(SCALED_LADDER):.1f} s)"
                if self.outages
                else "-",
            ),
            ("client retries", str(self.client_retries)),
            ("chaos phase", f"{self.chaos_seconds:.1f} s"),
            (
                "time to settle",
                "-"
                if self.settle_seconds is None
                else f"{self.settle_seconds:.1f} s after last kill",
            ),
            ("time to ready p50 / p95", f"{pct(0.5)} / {pct(0.95)}"),
            ("mean time to ready", f"{statistics.fmean(lat):.1f} s" if lat else "-"),
            ("jobs with runs > 1", f"{self.runs_above_one} (max runs {self.max_runs})"),
            ("ready re-announced", f"{self.ready_reannounced} (answers to settle requests)"),
            ("dead letters", ", ".join(f"{k} {v}" for k, v in self.dead_letters.items()) or "-"),
            (
                "usage exact",
                f"{sum(1 for u, n in self.usage.values() if u == n)}/{len(self.usage)} users",
            ),
            ("audit", self.audit[0] if self.audit else "-"),
            (
                "audit clean after",
                "-" if self.audit_seconds is None else f"{self.audit_seconds:.1f} s",
            ),
            ("violations", str(len(self.violations))),
        ]
        width = max(len(k) for k, _ in rows)
        lines = ["", "chaos summary", "-" * (width + 40)]
        lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
        if self.violations:
            lines += ["", "VIOLATIONS:"] + [f"  - {v}" for v in self.violations[:60]]
            if len(self.violations) > 60:
                lines.append(f"  ... and {len(self.violations) - 60} more")
        return "\n".join(lines)

    @property
    def total_kills(self) -> int:
        """Kills across services."""
        return sum(self.kills.values())


class Chaos(threading.Thread):
    """Kills a random service every few seconds, cuts the broker once, and runs long outages."""

    def __init__(self, ps: ProxiedStack, opts: Options, report: Report, log: Any) -> None:
        super().__init__(name="chaos", daemon=True)
        self.ps = ps
        self.opts = opts
        self.report = report
        self.rng = random.Random(opts.seed)
        self.stop_event = threading.Event()
        self.last_kill = time.monotonic()
        self.log = log
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        started = time.monotonic()
        cut_at = started + self.rng.uniform(0.3, 0.6) * self.opts.chaos_window
        cut_done = False
        # The long outages, in a seeded order, spread evenly over the chaos window.
        outages = self.rng.sample(self.opts.long_outages, len(self.opts.long_outages))
        step = self.opts.chaos_window / (len(outages) + 1)
        due = [(started + step * (i + 0.5), kind) for i, kind in enumerate(outages)]
        bag: list[str] = []
        while not self.stop_event.wait(self.rng.uniform(*self.opts.kill_every)):
            if due and time.monotonic() >= due[0][0]:
                self._outage(due.pop(0)[1])
                continue
            if not cut_done and time.monotonic() >= cut_at:
                cut_done = True
                self._cut_broker()
                continue
            if not bag:
                # Every service is hit once per round, in a seeded random order.
                bag = self.rng.sample(SERVICES, len(SERVICES))
            name = bag.pop()
            process = self.ps.stack.process(name)
            process.kill()
            self.report.kills[name] += 1
            self.last_kill = time.monotonic()
            self.log(f"killed {name}")
            # A crashed pod comes back after a moment.
            self.stop_event.wait(self.rng.uniform(0.2, 1.5))
            self._start(name)
        for _, kind in due:
            self._outage(kind)
        if not cut_done:
            self._cut_broker()

    def _outage(self, kind: str) -> None:
        seconds = self.opts.outage_seconds
        self.log(f"long outage: {kind} away for {seconds:.1f} s")
        proxy = self.ps.proxy(kind)
        proxy.cut()
        self.last_kill = time.monotonic()
        try:
            # The outage's length, not a wait for something to happen: it runs in full even
            # when the photos are all in, so that its recovery is part of the run.
            time.sleep(seconds)
        finally:
            proxy.restore()
        self.report.outages[kind] = seconds
        self.last_kill = time.monotonic()

    def _cut_broker(self) -> None:
        seconds = self.rng.uniform(*self.opts.broker_cut_seconds)
        self.log(f"cutting RabbitMQ for {seconds:.1f} s")
        self.ps.amqp.cut()
        self.report.broker_cuts += 1
        self.last_kill = time.monotonic()
        time.sleep(seconds)
        self.ps.amqp.restore()
        self.last_kill = time.monotonic()

    def _start(self, name: str) -> None:
        process = self.ps.stack.process(name)
        deadline = time.monotonic() + 15
        while True:
            try:
                process.start()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def _retrying(
    report: Report, what: str, call: Any, ok: tuple[int, ...], within: float = 90
) -> httpx.Response:
    """Call until it answers one of `ok`; retry transport errors, 5xx and 429."""
    deadline = time.monotonic() + within
    while True:
        try:
            resp: httpx.Response = call()
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}"
        else:
            if resp.status_code in ok:
                return resp
            if resp.status_code < 500 and resp.status_code != 429:
                raise AssertionError(f"{what}: {resp.status_code} {resp.text[:300]}")
            last = f"{resp.status_code} {resp.text[:200]}"
        report.client_retries += 1
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: no success within {within} s (last: {last})")
        time.sleep(0.3)


def _list_images(api: Api, auth: Mapping[str, str], project_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        resp = api.client.get(f"/v1/projects/{project_id}/images", params=params, headers=auth)
        resp.raise_for_status()
        page = resp.json()
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items


def run_chaos(opts: Options, *, log: Any = print) -> Report:
    """Run the scenario on a stack of its own and return the report (never raises on checks)."""
    report = Report(photos_requested=opts.photos)
    infra = infra_from_env()
    extra = {**SCALED_TIME, "GATEWAY_RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING"}
    with (
        tempfile.TemporaryDirectory(prefix="chaos-") as tmp,
        proxied_stack(infra, Path(tmp), name="chaos", extra_env=extra) as ps,
        Api(ps.gateway, timeout=20) as api,
    ):
        log(f"stack up: gateway {ps.gateway}, logs {ps.stack.log_dir}")
        users = []
        for i in range(opts.users):
            auth = api.sign_in(f"dev|chaos-{opts.seed}-{i}-{time.time_ns()}")
            project_id = api.project(auth, f"Chaos house {i}")
            users.append((auth, project_id))
        photos = [jpeg(*opts.photo_size, seed=s) for s in range(5)]
        created: dict[str, tuple[int, str]] = {}

        chaos = Chaos(ps, opts, report, log)
        chaos_started = time.monotonic()
        chaos.start()
        # Photos arrive in bursts spread over the chaos window, so that kills land while work
        # is queued and in flight rather than on an idle stack.
        burst = max(1, opts.photos // 20)
        bursts = -(-opts.photos // burst)
        interval = opts.chaos_window * 0.8 / bursts
        try:
            for n in range(opts.photos):
                if n % burst == 0:
                    due = chaos_started + (n // burst) * interval - time.monotonic()
                    if due > 0:
                        chaos.stop_event.wait(due)
                user = n % opts.users
                auth, project_id = users[user]
                up = _retrying(
                    report,
                    f"upload {n}",
                    lambda a=auth, n=n: api.upload(a, photos[n % len(photos)], f"room-{n}.jpg"),
                    (201,),
                )
                key = up.json()["key"]
                resp = _retrying(
                    report,
                    f"create {n}",
                    # One key per photo: a retry after a lost response must not stage twice.
                    lambda a=auth, p=project_id, k=key, n=n: api.create_image(
                        a,
                        p,
                        k,
                        ROOMS[n % len(ROOMS)],
                        STYLES[n % len(STYLES)],
                        idempotency_key=f"chaos-photo-{n}",
                        seed=n,
                    ),
                    (201,),
                )
                created[resp.json()["id"]] = (user, key)
            # Keep the chaos going for a minimum time so that staging is hit mid-job too.
            remaining = opts.chaos_window - (time.monotonic() - chaos_started)
            if remaining > 0:
                chaos.stop_event.wait(remaining)
        except AssertionError as exc:
            report.violations.append(f"client could not get through: {exc}")
        finally:
            chaos.stop_event.set()
            chaos.join(60)
        report.chaos_seconds = time.monotonic() - chaos_started
        if chaos.error is not None:
            report.violations.append(f"chaos thread failed: {chaos.error!r}")
        log(f"chaos over after {report.chaos_seconds:.0f} s; {len(created)} photos created")

        for name in SERVICES:
            process = ps.stack.process(name)
            if not process.running:
                process.start()
        for name in SERVICES:
            ps.stack.process(name).wait_ready(60)

        _settle(api, users, report, chaos.last_kill, opts)
        _check_databases(ps, report)
        _check_usage(api, users, report)
        report.dead_letters = asyncio.run(dead_letter_counts(ps.amqp_url))
        for queue, count in report.dead_letters.items():
            if count != 0:
                report.violations.append(f"{count} message(s) dead-lettered in {queue}")
        if len(report.images) != opts.photos:
            report.violations.append(
                f"{len(report.images)} images exist for {opts.photos} photos asked for "
                "(a retried request must not stage a photo twice)"
            )
        missing = set(created) - set(report.images)
        for image_id in sorted(missing):
            report.violations.append(f"image {image_id} created but not listed")
        _audit(ps, report, log)
        if not report.ok:
            log(f"service logs kept while the run lasts: {ps.stack.log_dir}")
            _copy_logs(ps)
    return report


def _audit(ps: ProxiedStack, report: Report, log: Any) -> None:
    """End with the invariant audit, repeated for a while: deletions and sweeps settle late."""
    started = time.monotonic()
    deadline = started + 30
    while True:
        audit = ps.audit(**AUDIT)
        if audit.ok or time.monotonic() > deadline:
            break
        time.sleep(1)
    report.audit = audit.lines()
    for line in report.audit:
        log(f"audit: {line}")
    if audit.ok:
        report.audit_seconds = time.monotonic() - started
    report.violations += [f"audit: {v}" for v in audit.violations]


def _copy_logs(ps: ProxiedStack) -> None:
    target = Path(tempfile.gettempdir()) / f"chaos-logs-{int(time.time())}"
    target.mkdir(parents=True, exist_ok=True)
    for path in ps.stack.log_dir.glob("*.log"):
        with contextlib.suppress(OSError):
            (target / path.name).write_bytes(path.read_bytes())
    print(f"service logs copied to {target}")


def _settle(
    api: Api,
    users: list[tuple[dict[str, str], str]],
    report: Report,
    last_kill: float,
    opts: Options,
) -> None:
    deadline = last_kill + opts.settle_seconds
    while True:
        images: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(httpx.HTTPError):
            for auth, project_id in users:
                for body in _list_images(api, auth, project_id):
                    images[body["id"]] = body
        report.images = images
        pending = [b for b in images.values() if b["status"] not in ("ready", "error")]
        if images and not pending:
            report.settle_seconds = time.monotonic() - last_kill
            break
        if time.monotonic() > deadline:
            by_status = Counter(b["status"] for b in pending)
            report.violations.append(
                f"{len(pending)} photo(s) not settled {opts.settle_seconds:.0f} s after the "
                f"last kill: {dict(by_status)}; e.g. {[b['id'] for b in pending[:5]]}"
            )
            break
        time.sleep(1)
    for body in report.images.values():
        if body["status"] == "error" and not (body.get("error") or "").strip():
            report.violations.append(f"image {body['id']} is error without a reason")


def _check_databases(ps: ProxiedStack, report: Report) -> None:
    staging = ps.dsn("staging")
    dupes = asyncio.run(
        fetch(
            staging,
            "SELECT image_id, attempt, count(*) AS n FROM jobs "
            "GROUP BY image_id, attempt HAVING count(*) > 1",
        )
    )
    for row in dupes:
        report.violations.append(
            f"{row['n']} jobs rows for image {row['image_id']} attempt {row['attempt']}"
        )
    # Staging re-announces a finished attempt when projects asks it to settle: the same
    # result again is fine, two different staged photos for one attempt are not.
    readies = asyncio.run(
        fetch(
            staging,
            "SELECT payload->'data'->>'image_id' AS image_id, payload->'data'->>'attempt' AS "
            "attempt, count(*) AS n, count(DISTINCT payload->'data'->>'staged_key') AS results "
            "FROM outbox WHERE routing_key = 'image.ready' GROUP BY 1, 2",
        )
    )
    report.ready_reannounced = sum(int(r["n"]) - 1 for r in readies)
    for row in readies:
        if row["results"] > 1:
            report.violations.append(
                f"image {row['image_id']} attempt {row['attempt']} completed with "
                f"{row['results']} different results"
            )
    runs = asyncio.run(fetch(staging, "SELECT runs FROM jobs"))
    report.runs_above_one = sum(1 for r in runs if r["runs"] > 1)
    report.max_runs = max((r["runs"] for r in runs), default=0)
    jobs = {
        str(r["image_id"]): r
        for r in asyncio.run(fetch(staging, "SELECT image_id, status, runs, error FROM jobs"))
    }
    for image_id, body in report.images.items():
        job = jobs.get(image_id)
        if job is None:
            report.violations.append(f"image {image_id} ({body['status']}) has no staging job")
        elif body["status"] in ("queued", "processing"):
            report.violations.append(
                f"image {image_id} stuck {body['status']}: job {job['status']}, "
                f"runs {job['runs']}, error {job['error']!r}"
            )


def _check_usage(api: Api, users: list[tuple[dict[str, str], str]], report: Report) -> None:
    for index, (auth, project_id) in enumerate(users):
        images = _list_images(api, auth, project_id)
        # A photo whose attempt ended in error is released, not paid for.
        count = sum(1 for image in images if image.get("charge") != "released")
        used = int(api.client.get("/v1/usage", headers=auth).json()["used"])
        report.usage[f"user{index}"] = (used, count)
        if used != count:
            report.violations.append(
                f"user{index}: usage says {used}, but {count} images hold a charge"
            )


def main(argv: list[str] | None = None) -> int:
    """Run from the command line; exit 1 on any violation."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--min-chaos-seconds", type=float, default=60.0)
    parser.add_argument("--settle-seconds", type=float, default=180.0)
    parser.add_argument(
        "--outages",
        default=",".join(LONG_OUTAGES),
        help=f"long outages to run, comma-separated from {','.join(LONG_OUTAGES)} ('' for none)",
    )
    parser.add_argument("--outage-seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    outages = tuple(o for o in args.outages.split(",") if o)
    unknown = set(outages) - set(LONG_OUTAGES)
    if unknown:
        parser.error(f"unknown outage(s): {', '.join(sorted(unknown))}")
    opts = Options(
        photos=args.photos,
        users=args.users,
        seed=args.seed,
        min_chaos_seconds=args.min_chaos_seconds,
        settle_seconds=args.settle_seconds,
        long_outages=outages,
        outage_seconds=args.outage_seconds,
    )
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

    report = run_chaos(opts, log=log)
    print(report.summary(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
