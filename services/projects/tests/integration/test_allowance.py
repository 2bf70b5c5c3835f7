"""A fair allowance on real PostgreSQL, RabbitMQ and S3: charges follow outcomes, periods follow
the subscription, and limits come only from billing's announcements."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.enums import PlanCode
from contracts.events import (
    Envelope,
    Event,
    ImageFailed,
    ImageProcessing,
    ImageReady,
    SubscriptionUpdated,
)
from contracts.identity import Identity, Role
from projects.allowance import add_months
from projects.maintenance import reconcile_images
from projects.models import UsageCharge
from projects.service import GAVE_UP_REASON, ProjectsService, apply_entitlement, apply_status
from projects.settings import ProjectsSettings
from servicekit.db import create_engine, create_sessionmaker, unit_of_work
from servicekit.outbox import apply_once
from servicekit.storage import Storage

pytestmark = pytest.mark.integration

BUCKET = "realstaging-test"


async def _project(client: httpx.AsyncClient, owner: Any) -> str:
    resp = await client.post("/v1/projects", json={"name": "Listing"}, headers=owner.headers)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def _upload(storage: Storage, owner: Any, data: bytes) -> str:
    key = f"uploads/{owner.id}/{uuid.uuid4().hex}-room.jpg"
    await storage.ensure_bucket()
    await storage.write(key, data, "image/jpeg")
    return key


async def _create(
    client: httpx.AsyncClient, storage: Storage, owner: Any, project_id: str, jpeg: bytes
) -> httpx.Response:
    key = await _upload(storage, owner, jpeg)
    return await client.post(
        f"/v1/projects/{project_id}/images",
        json={"key": key, "room_type": "living_room", "style": "modern"},
        headers=owner.headers,
    )


async def _image(client: httpx.AsyncClient, storage: Storage, owner: Any, jpeg: bytes) -> str:
    resp = await _create(client, storage, owner, await _project(client, owner), jpeg)
    assert resp.status_code == 201, resp.text
    assert resp.json()["charge"] == "reserved"
    return str(resp.json()["id"])


async def _status(
    sessions: async_sessionmaker[AsyncSession], event: Event, producer: str = "staging"
) -> bool:
    async def effect(session: AsyncSession, env: Envelope[Any]) -> None:
        await apply_status(session, env, bucket=BUCKET)

    return await apply_once(sessions, "t", Envelope.wrap(event, producer=producer), effect)


async def _announce(
    sessions: async_sessionmaker[AsyncSession],
    user_id: uuid.UUID,
    *,
    plan: str,
    limit: int,
    start: datetime,
    end: datetime,
    at: datetime,
    status: str = "active",
    grace_until: datetime | None = None,
    fallback_limit: int | None = None,
) -> None:
    event = SubscriptionUpdated(
        user_id=user_id,
        plan_code=PlanCode(plan),
        monthly_limit=limit,
        period_start=start,
        period_end=end,
        status=status,
        renewal_grace_until=grace_until,
        fallback_plan_code=PlanCode.FREE if fallback_limit is not None else None,
        fallback_limit=fallback_limit,
    )
    envelope = Envelope.wrap(event, producer="billing").model_copy(update={"occurred_at": at})
    await apply_once(sessions, "e", envelope, apply_entitlement)


async def _usage(client: httpx.AsyncClient, owner: Any) -> dict[str, Any]:
    resp = await client.get("/v1/usage", headers=owner.headers)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _charges(sessions: async_sessionmaker[AsyncSession], image_id: str) -> list[UsageCharge]:
    async with sessions() as session:
        rows = await session.scalars(
            select(UsageCharge)
            .where(UsageCharge.image_id == uuid.UUID(image_id))
            .order_by(UsageCharge.attempt)
        )
        return list(rows.all())


async def _charge_used_earlier(
    sessions: async_sessionmaker[AsyncSession], user_id: uuid.UUID, at: datetime, n: int
) -> None:
    """Photos charged at `at` (their images long deleted)."""
    async with unit_of_work(sessions) as session:
        for _ in range(n):
            session.add(
                UsageCharge(user_id=user_id, image_id=uuid.uuid4(), attempt=1, charged_at=at)
            )


class TestChargesFollowOutcomes:
    """A reservation is released when its attempt ends in error, once, whatever the order."""

    async def test_failure_releases_the_charge_once_with_duplicates_and_late_events(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        owner: Any,
        jpeg: bytes,
    ) -> None:
        image_id = await _image(client, storage, owner, jpeg)
        usage = await _usage(client, owner)
        assert (usage["used"], usage["in_flight"], usage["staged"], usage["failed"]) == (1, 1, 0, 0)
        failed = ImageFailed(image_id=uuid.UUID(image_id), user_id=owner.id, reason="bad photo")
        late = ImageProcessing(image_id=uuid.UUID(image_id), user_id=owner.id, backend="local")
        # The same failure delivered twice (two event ids), and progress arriving after it.
        for event in (failed, failed, late):
            assert await _status(sessions, event)
        body = (await client.get(f"/v1/images/{image_id}", headers=owner.headers)).json()
        assert (body["status"], body["charge"]) == ("error", "released")
        (charge,) = await _charges(sessions, image_id)
        assert charge.refunded_at is not None
        assert charge.refund_reason == "bad photo"
        first_release = charge.refunded_at
        assert await _status(sessions, failed)
        (charge,) = await _charges(sessions, image_id)
        assert charge.refunded_at == first_release
        usage = await _usage(client, owner)
        assert (usage["used"], usage["in_flight"], usage["staged"], usage["failed"]) == (0, 0, 0, 1)
        assert usage["remaining"] == usage["limit"]

    async def test_a_failure_reported_after_the_photo_was_staged_charges_it(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        owner: Any,
        jpeg: bytes,
    ) -> None:
        image_id = await _image(client, storage, owner, jpeg)
        ready = ImageReady(
            image_id=uuid.UUID(image_id), user_id=owner.id, staged_key="s/a.jpg", backend="local"
        )
        failed = ImageFailed(image_id=uuid.UUID(image_id), user_id=owner.id, reason="late")
        for event in (ready, failed):
            assert await _status(sessions, event)
        body = (await client.get(f"/v1/images/{image_id}", headers=owner.headers)).json()
        assert (body["status"], body["charge"]) == ("ready", "charged")
        usage = await _usage(client, owner)
        assert (usage["used"], usage["staged"], usage["failed"]) == (1, 1, 0)

    async def test_an_admin_retry_that_succeeds_after_the_release_charges_once(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        owner: Any,
        jpeg: bytes,
    ) -> None:
        image_id = await _image(client, storage, owner, jpeg)
        failed = ImageFailed(image_id=uuid.UUID(image_id), user_id=owner.id, reason="timeout")
        ready = ImageReady(
            image_id=uuid.UUID(image_id), user_id=owner.id, staged_key="s/b.jpg", backend="local"
        )
        assert await _status(sessions, failed)
        assert (await _usage(client, owner))["used"] == 0
        # Staging's admin retry re-runs the same attempt; its success may be announced twice,
        # and the first failure may be redelivered after it.
        for event in (ready, ready, failed):
            assert await _status(sessions, event)
        body = (await client.get(f"/v1/images/{image_id}", headers=owner.headers)).json()
        assert (body["status"], body["charge"], body["attempt"]) == ("ready", "charged", 1)
        charges = await _charges(sessions, image_id)
        assert [(c.attempt, c.refunded_at, c.refund_reason) for c in charges] == [(1, None, None)]
        usage = await _usage(client, owner)
        assert (usage["used"], usage["staged"], usage["failed"]) == (1, 1, 0)

    async def test_giving_up_releases_the_charge_and_a_late_success_takes_it_once(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        settings: ProjectsSettings,
        owner: Any,
        jpeg: bytes,
    ) -> None:
        image_id = await _image(client, storage, owner, jpeg)
        late = datetime.now(UTC) + timedelta(seconds=settings.give_up_after_seconds + 60)
        after = late + timedelta(seconds=settings.settle_after_seconds + 1)
        async with unit_of_work(sessions) as session:
            assert (await reconcile_images(session, settings, now=late)).settle_requested == 1
        async with unit_of_work(sessions) as session:
            assert (await reconcile_images(session, settings, now=after)).gave_up == 1
        (charge,) = await _charges(sessions, image_id)
        assert charge.refund_reason == GAVE_UP_REASON
        # Projects' own image.failed comes back to it, then staging's answer, then success.
        gave_up = ImageFailed(image_id=uuid.UUID(image_id), user_id=owner.id, reason=GAVE_UP_REASON)
        assert await _status(sessions, gave_up, producer="projects")
        staging_says = ImageFailed(image_id=uuid.UUID(image_id), user_id=owner.id, reason="oom")
        assert await _status(sessions, staging_says)
        usage = await _usage(client, owner)
        assert (usage["used"], usage["failed"]) == (0, 1)
        ready = ImageReady(
            image_id=uuid.UUID(image_id), user_id=owner.id, staged_key="s/c.jpg", backend="local"
        )
        assert await _status(sessions, ready)
        (charge,) = await _charges(sessions, image_id)
        assert charge.refunded_at is None
        usage = await _usage(client, owner)
        assert (usage["used"], usage["staged"], usage["failed"]) == (1, 1, 0)

    async def test_restaging_a_failed_photo_is_charged_only_if_it_succeeds(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        owner: Any,
        jpeg: bytes,
    ) -> None:
        image_id = await _image(client, storage, owner, jpeg)
        uid = uuid.UUID(image_id)
        assert await _status(sessions, ImageFailed(image_id=uid, user_id=owner.id, reason="a"))
        restaged = await client.post(
            f"/v1/images/{image_id}/restage", json={}, headers=owner.headers
        )
        assert restaged.status_code == 200, restaged.text
        assert (restaged.json()["attempt"], restaged.json()["charge"]) == (2, "reserved")
        usage = await _usage(client, owner)
        assert (usage["used"], usage["in_flight"], usage["failed"]) == (1, 1, 1)
        failed_again = ImageFailed(image_id=uid, user_id=owner.id, reason="b", attempt=2)
        assert await _status(sessions, failed_again)
        usage = await _usage(client, owner)
        assert (usage["used"], usage["in_flight"], usage["failed"]) == (0, 0, 2)
        third = await client.post(f"/v1/images/{image_id}/restage", json={}, headers=owner.headers)
        assert third.json()["attempt"] == 3
        ready = ImageReady(
            image_id=uid, user_id=owner.id, staged_key="s/d.jpg", backend="local", attempt=3
        )
        assert await _status(sessions, ready)
        body = (await client.get(f"/v1/images/{image_id}", headers=owner.headers)).json()
        assert (body["status"], body["charge"]) == ("ready", "charged")
        charges = await _charges(sessions, image_id)
        assert [(c.attempt, c.refunded_at is None) for c in charges] == [
            (1, False),
            (2, False),
            (3, True),
        ]
        usage = await _usage(client, owner)
        assert (usage["used"], usage["staged"], usage["failed"]) == (1, 1, 2)

    async def test_twenty_parallel_creates_with_released_photos_left_create_exactly_those(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        owner: Any,
        jpeg: bytes,
    ) -> None:
        project_id = await _project(client, owner)
        made = [await _create(client, storage, owner, project_id, jpeg) for _ in range(5)]
        assert [r.status_code for r in made] == [201] * 5
        for resp in made[:3]:
            failed = ImageFailed(
                image_id=uuid.UUID(resp.json()["id"]), user_id=owner.id, reason="x"
            )
            assert await _status(sessions, failed)
        keys = [await _upload(storage, owner, jpeg) for _ in range(20)]
        responses = await asyncio.gather(
            *(
                client.post(
                    f"/v1/projects/{project_id}/images",
                    json={"key": k, "room_type": "bedroom", "style": "rustic"},
                    headers=owner.headers,
                )
                for k in keys
            )
        )
        assert sorted(r.status_code for r in responses) == [201] * 3 + [402] * 17
        usage = await _usage(client, owner)
        assert (usage["used"], usage["limit"], usage["remaining"], usage["failed"]) == (5, 5, 0, 3)


class TestPeriods:
    """Usage counts the period in force, which follows billing's announcements."""

    async def test_nothing_announced_yet_uses_the_default_allowance(
        self,
        make_settings: Callable[..., ProjectsSettings],
        owner: Any,
    ) -> None:
        settings = make_settings(default_monthly_limit=2)
        async with _service(settings) as svc:
            usage = await svc.usage(_who(owner))
        assert (usage.plan, usage.limit, usage.status, usage.used) == ("free", 2, "default", 0)

    async def test_a_paid_period_ending_without_news_keeps_the_plan_through_the_grace(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        settings: ProjectsSettings,
        owner: Any,
        jpeg: bytes,
    ) -> None:
        now = datetime.now(UTC)
        start, end = now - timedelta(days=30), now - timedelta(minutes=1)
        grace = end + timedelta(hours=48)
        await _announce(
            sessions,
            owner.id,
            plan="pro",
            limit=3,
            start=start,
            end=end,
            at=start,
            grace_until=grace,
            fallback_limit=2,
        )
        # The whole paid allowance was used in the period that just ended.
        await _charge_used_earlier(sessions, owner.id, end - timedelta(days=1), 3)
        resp = await _create(client, storage, owner, await _project(client, owner), jpeg)
        assert resp.status_code == 201, resp.text
        usage = await _usage(client, owner)
        assert (usage["plan"], usage["limit"], usage["used"], usage["status"]) == (
            "pro",
            3,
            1,
            "renewal_grace",
        )
        assert datetime.fromisoformat(usage["period_start"]) == end
        assert datetime.fromisoformat(usage["period_end"]) == grace
        assert datetime.fromisoformat(usage["renewal_grace_until"]) == grace
        # No renewal by the end of the grace: the free fallback, in a fresh period from there.
        async with _service(settings) as svc:
            lapsed = await svc.usage(_who(owner), now=grace + timedelta(minutes=5))
        assert (lapsed.plan, lapsed.limit, lapsed.used, lapsed.status) == ("free", 2, 0, "lapsed")
        assert (lapsed.period_start, lapsed.period_end) == (grace, add_months(grace, 1))
        assert lapsed.renewal_grace_until is None

    async def test_a_late_renewal_continues_the_paid_period_from_its_old_end(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        owner: Any,
        jpeg: bytes,
    ) -> None:
        now = datetime.now(UTC)
        start, end = now - timedelta(days=30), now - timedelta(hours=2)
        grace = end + timedelta(hours=48)
        await _announce(
            sessions,
            owner.id,
            plan="pro",
            limit=3,
            start=start,
            end=end,
            at=start,
            grace_until=grace,
            fallback_limit=2,
        )
        await _charge_used_earlier(sessions, owner.id, end - timedelta(days=1), 3)
        project_id = await _project(client, owner)
        assert (await _create(client, storage, owner, project_id, jpeg)).status_code == 201
        # Stripe's renewal arrives hours late: the photo used meanwhile belongs to the new period.
        new_end = add_months(end, 1)
        await _announce(
            sessions,
            owner.id,
            plan="pro",
            limit=3,
            start=end,
            end=new_end,
            at=now,
            grace_until=new_end + timedelta(hours=48),
            fallback_limit=2,
        )
        usage = await _usage(client, owner)
        assert (usage["plan"], usage["used"], usage["remaining"], usage["status"]) == (
            "pro",
            1,
            2,
            "active",
        )
        assert usage["renewal_grace_until"] is None
        assert datetime.fromisoformat(usage["period_start"]) == end
        assert datetime.fromisoformat(usage["period_end"]) == new_end

    async def test_paid_to_free_mid_month_starts_a_fresh_free_period(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        owner: Any,
        jpeg: bytes,
    ) -> None:
        now = datetime.now(UTC)
        month_start = now - timedelta(days=12)
        await _announce(
            sessions,
            owner.id,
            plan="pro",
            limit=100,
            start=month_start,
            end=month_start + timedelta(days=30),
            at=month_start,
        )
        await _charge_used_earlier(sessions, owner.id, now - timedelta(days=5), 8)
        changed_at = now - timedelta(minutes=1)
        # Billing announces free over a window that includes the paid photos.
        await _announce(
            sessions,
            owner.id,
            plan="free",
            limit=5,
            start=month_start,
            end=month_start + timedelta(days=30),
            at=changed_at,
            status="free",
        )
        usage = await _usage(client, owner)
        assert (usage["plan"], usage["limit"], usage["used"], usage["remaining"]) == (
            "free",
            5,
            0,
            5,
        )
        assert datetime.fromisoformat(usage["period_start"]) == changed_at
        assert (
            await _create(client, storage, owner, await _project(client, owner), jpeg)
        ).status_code == 201
        # Announcing the same free plan again later keeps the fresh period's start.
        await _announce(
            sessions,
            owner.id,
            plan="free",
            limit=5,
            start=month_start,
            end=month_start + timedelta(days=30),
            at=now,
            status="free",
        )
        usage = await _usage(client, owner)
        assert (usage["used"], usage["remaining"]) == (1, 4)
        assert datetime.fromisoformat(usage["period_start"]) == changed_at

    async def test_an_upgrade_mid_period_takes_effect_at_once(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        owner: Any,
        jpeg: bytes,
    ) -> None:
        now = datetime.now(UTC)
        month_start = now - timedelta(days=3)
        await _announce(
            sessions,
            owner.id,
            plan="free",
            limit=2,
            start=month_start,
            end=month_start + timedelta(days=30),
            at=month_start,
            status="free",
        )
        project_id = await _project(client, owner)
        for _ in range(2):
            assert (await _create(client, storage, owner, project_id, jpeg)).status_code == 201
        refused = await _create(client, storage, owner, project_id, jpeg)
        assert refused.status_code == 402
        assert refused.json()["details"]["limit"] == 2
        # Pro bought mid-month (Stripe's period starts then), then Business in the same period.
        period_start = datetime.now(UTC)
        upgrades = (
            ("pro", 3, period_start),
            ("business", 5, period_start + timedelta(milliseconds=1)),
        )
        for plan, limit, at in upgrades:
            await _announce(
                sessions,
                owner.id,
                plan=plan,
                limit=limit,
                start=period_start,
                end=add_months(period_start, 1),
                at=at,
                grace_until=add_months(period_start, 1) + timedelta(hours=48),
                fallback_limit=2,
            )
            assert (await _create(client, storage, owner, project_id, jpeg)).status_code == 201
        usage = await _usage(client, owner)
        assert (usage["plan"], usage["limit"], usage["used"], usage["remaining"]) == (
            "business",
            5,
            2,
            3,
        )
        # An announcement older than the one held arrives late and changes nothing.
        await _announce(
            sessions,
            owner.id,
            plan="pro",
            limit=3,
            start=period_start,
            end=add_months(period_start, 1),
            at=period_start + timedelta(microseconds=500),
        )
        assert (await _usage(client, owner))["plan"] == "business"


def _who(owner: Any) -> Identity:
    return Identity(user_id=owner.id, role=Role.USER, request_id="test")


@contextlib.asynccontextmanager
async def _service(settings: ProjectsSettings) -> AsyncIterator[ProjectsService]:
    """A projects service on its own session, for calls that take an injected `now`."""
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            yield ProjectsService(session, Storage(settings), settings)
    finally:
        await engine.dispose()
