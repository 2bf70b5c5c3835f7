"""Settings of the staging service (env prefix `STAGING_`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic_settings import SettingsConfigDict

from servicekit.settings import S3Settings, ServiceSettings


class StagingSettings(ServiceSettings, S3Settings):
    """Staging workers: backends, limits and the disclosure mark."""

    model_config = SettingsConfigDict(env_prefix="STAGING_", extra="forbid", case_sensitive=False)

    service_name: ClassVar[str] = "staging"

    port: int = 8002
    backend: Literal["local"] = "local"
    consumer_prefetch: int = 4
    job_lease_seconds: int = 900
    max_input_bytes: int = 60 * 1024 * 1024
    max_input_pixels: int = 50_000_000
    max_output_side: int = 2048
    jpeg_quality: int = 90
    disclosure_mark: bool = True
    disclosure_text: str = "Virtually staged"
