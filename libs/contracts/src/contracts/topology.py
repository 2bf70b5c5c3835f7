"""Exchange and queue names, declared once and shared by every service.

One durable topic exchange carries every event, with the event name as routing key. Each
consumer owns a durable quorum queue named `<service>.<purpose>`, plus a dead-letter queue
`<queue>.dlq` and delay queues `<queue>.retry.<n>` whose messages return to the main queue
through the default exchange when their TTL runs out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EXCHANGE = "realstaging.events"

RETRY_DELAYS_MS: tuple[int, ...] = (1_000, 5_000, 30_000, 120_000)
"""Growing delays between redeliveries of a failing message; then it is parked."""


@dataclass(frozen=True)
class QueueSpec:
    """A consumer's queue and the routing keys bound to it."""

    name: str
    routing_keys: tuple[str, ...]
    retry_delays_ms: tuple[int, ...] = field(default=RETRY_DELAYS_MS)

    @property
    def dead_letter(self) -> str:
        """Where messages go after their last retry, with the reason in headers."""
        return f"{self.name}.dlq"

    def retry_queue(self, attempt: int) -> str:
        """The delay queue for retry number `attempt` (1-based)."""
        return f"{self.name}.retry.{attempt}"


BILLING_USERS = QueueSpec("billing.users", ("user.created",))
GATEWAY_CUSTOMERS = QueueSpec("gateway.customers", ("customer.linked",))
PROJECTS_IMAGE_STATUS = QueueSpec(
    "projects.image-status", ("image.processing", "image.ready", "image.failed")
)
PROJECTS_ENTITLEMENTS = QueueSpec("projects.entitlements", ("subscription.updated",))
STAGING_JOBS = QueueSpec("staging.jobs", ("image.queued", "image.settle"))
STAGING_CANCELLATIONS = QueueSpec("staging.cancellations", ("image.deleted", "project.deleted"))

ALL_QUEUES: tuple[QueueSpec, ...] = (
    BILLING_USERS,
    GATEWAY_CUSTOMERS,
    PROJECTS_IMAGE_STATUS,
    PROJECTS_ENTITLEMENTS,
    STAGING_JOBS,
    STAGING_CANCELLATIONS,
)
