"""Settings of the projects service (env prefix `PROJECTS_`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from servicekit.settings import S3Settings, ServiceSettings


class ProjectsSettings(ServiceSettings, S3Settings):
    """Projects, images, uploads and the monthly allowance."""

    model_config = SettingsConfigDict(env_prefix="PROJECTS_", extra="forbid", case_sensitive=False)

    service_name: ClassVar[str] = "projects"

    port: int = 8001
    max_upload_bytes: int = 25 * 1024 * 1024
    upload_url_ttl_seconds: int = 15 * 60
    download_url_ttl_seconds: int = 10 * 60
    default_monthly_limit: int = 5
    """The allowance of a user until billing's first `subscription.updated` for them arrives
    (billing announces the free plan when a user is created, so this lasts seconds). Billing is
    the one source of plan limits; keep this no higher than its free plan's."""
    settle_after_seconds: float = 900.0
    """An unfinished image with no progress for this long is asked to settle (the slowest
    backend's timeout, 300 s, plus a wide margin for a queue backlog)."""
    give_up_after_seconds: float = 6 * 3600.0
    """An attempt still unfinished this long after it was queued ends in `error`."""
    reconcile_batch_size: int = 500
    """Unfinished images handled per reconciler pass."""
    sweep_interval_seconds: float = 15 * 60.0
    """How often old uploads, orphan originals and old idempotency keys are removed."""
    sweep_batch_size: int = 1000
    """Objects or rows removed per sweeper pass (the rest go at the next one)."""
    upload_retention_seconds: float = 24 * 3600.0
    """Uploads are copied at create, so after this long every upload can go."""
    orphan_grace_seconds: float = 3600.0
    """An original with no image this old was left by a create that rolled back."""
    idempotency_retention_seconds: float = 7 * 24 * 3600.0
    """How long a retried create request gets its first answer."""
