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
    free_monthly_limit: int = 5
