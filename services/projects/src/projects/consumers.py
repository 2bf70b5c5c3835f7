"""What the projects service consumes: staging status and billing entitlements."""

from __future__ import annotations

import functools
from typing import Any

from contracts.events import Envelope, ImageFailed, ImageProcessing, ImageReady, SubscriptionUpdated
from contracts.topology import PROJECTS_ENTITLEMENTS, PROJECTS_IMAGE_STATUS
from projects.service import apply_entitlement, apply_status
from servicekit.outbox import apply_once
from servicekit.runtime import Runtime


def register(runtime: Runtime, *, bucket: str) -> None:
    """Subscribe the projects consumers."""
    status_effect = functools.partial(apply_status, bucket=bucket)

    async def on_status(envelope: Envelope[Any]) -> None:
        """Move an image forward as staging reports progress."""
        await apply_once(runtime.sessionmaker, PROJECTS_IMAGE_STATUS.name, envelope, status_effect)

    async def on_entitlement(envelope: Envelope[Any]) -> None:
        """Record a user's plan and allowance."""
        await apply_once(
            runtime.sessionmaker, PROJECTS_ENTITLEMENTS.name, envelope, apply_entitlement
        )

    runtime.consumer(
        PROJECTS_IMAGE_STATUS,
        {
            ImageProcessing.routing_key: ImageProcessing,
            ImageReady.routing_key: ImageReady,
            ImageFailed.routing_key: ImageFailed,
        },
        on_status,
    )
    runtime.consumer(
        PROJECTS_ENTITLEMENTS,
        {SubscriptionUpdated.routing_key: SubscriptionUpdated},
        on_entitlement,
    )
