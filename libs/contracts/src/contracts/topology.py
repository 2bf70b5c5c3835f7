"""Exchange and queue names, declared once and shared by every service.

One durable topic exchange carries every event, with the event name as routing key. Each
consumer owns a durable quorum queue named `<service>.<purpose>`, plus a dead-letter queue
`<queue>.dlq` and delay queues `<queue>.delay.<ms>` whose messages return to the main queue
through the default exchange when their TTL runs out. Delays come from each service's settings,
not from here: a delay queue is named by its delay because RabbitMQ refuses to redeclare a queue
with other arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

EXCHANGE = "realstaging.events"


@dataclass(frozen=True)
class QueueSpec:
    """A consumer's queue and the routing keys bound to it."""

    name: str
    routing_keys: tuple[str, ...]

    @property
    def dead_letter(self) -> str:
        """Where messages go after their last retry, with the reason in headers."""
        return f"{self.name}.dlq"

    def delay_queue(self, delay_ms: int) -> str:
        """The queue where a message waits `delay_ms` before returning to this queue."""
        return f"{self.name}.delay.{delay_ms}"


def spec_for(queue: str) -> QueueSpec | None:
    """The spec of a main queue or of its dead-letter queue, if it is one of ours."""
    for spec in ALL_QUEUES:
        if queue in (spec.name, spec.dead_letter):
            return spec
    return None


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
