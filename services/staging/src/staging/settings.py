"""Settings of the staging service (env prefix `STAGING_`)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from servicekit.settings import Environment, S3Settings, ServiceSettings

CommaList = Annotated[list[str], NoDecode]
BackendName = Literal["local", "replicate", "openai"]
ReplicateModel = Literal["qwen/qwen-image-edit", "black-forest-labs/flux-kontext-max"]

TOKEN_SETTINGS: dict[str, str] = {
    "replicate": "STAGING_REPLICATE_API_TOKEN",
    "openai": "STAGING_OPENAI_API_KEY",
}
"""The variable each remote backend needs."""


class StagingSettings(ServiceSettings, S3Settings):
    """Staging workers: backends, limits and the disclosure mark."""

    model_config = SettingsConfigDict(env_prefix="STAGING_", extra="forbid", case_sensitive=False)

    service_name: ClassVar[str] = "staging"

    port: int = 8002
    backend: BackendName = "local"
    backend_cache_seconds: float = 5.0
    consumer_prefetch: int = 4
    job_lease_seconds: float = 60.0
    shutdown_grace_seconds: float = 20.0
    max_input_bytes: int = 60 * 1024 * 1024
    max_input_pixels: int = 50_000_000
    max_output_side: int = 2048
    jpeg_quality: int = 90
    disclosure_mark: bool = True
    disclosure_text: str = "Virtually staged"

    job_lease_margin_seconds: float = 30.0
    job_stale_seconds: float = 600.0
    job_deadline_seconds: float = 24 * 3600.0
    reconcile_batch: int = 200
    orphan_grace_seconds: float = 24 * 3600.0
    sweep_interval_seconds: float = 3600.0
    sweep_batch: int = 1000
    job_retention_seconds: float = 90 * 24 * 3600.0
    cancellation_retention_seconds: float = 30 * 24 * 3600.0

    remote_input_max_side: int = 1536
    remote_input_max_bytes: int = 4 * 1024 * 1024
    remote_output_max_bytes: int = 40 * 1024 * 1024
    remote_request_timeout_seconds: float = 30.0
    remote_max_retry_after_seconds: float = 30.0
    remote_output_hosts: CommaList = Field(
        default_factory=lambda: ["replicate.delivery", "*.replicate.delivery"]
    )
    """Hosts output files may be downloaded from (`*.host` for its subdomains), comma-separated."""
    remote_output_require_https: bool = True
    """Download output files over https only; production refuses to turn this off."""

    replicate_api_base: str = "https://api.replicate.com"
    replicate_api_token: SecretStr | None = None
    replicate_model: ReplicateModel = "black-forest-labs/flux-kontext-max"
    replicate_poll_initial_seconds: float = 1.0
    replicate_poll_max_seconds: float = 5.0
    replicate_timeout_seconds: float = 300.0

    openai_api_base: str = "https://api.openai.com"
    openai_api_key: SecretStr | None = None
    openai_model: Literal["gpt-image-1"] = "gpt-image-1"
    openai_quality: Literal["low", "medium", "high"] = "medium"
    openai_timeout_seconds: float = 180.0

    @field_validator("remote_output_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("remote_output_require_https")
    @classmethod
    def _https_in_production(cls, value: bool, info: ValidationInfo) -> bool:
        # A field check, so it is reported whatever else production refuses.
        if not value and info.data.get("environment") == Environment.PRODUCTION:
            raise ValueError(
                "STAGING_REMOTE_OUTPUT_REQUIRE_HTTPS=false is refused in production: output "
                "files must be downloaded over https"
            )
        return value

    def has_token(self, backend: str) -> bool:
        """Whether the credentials a backend needs are configured."""
        token = {"replicate": self.replicate_api_token, "openai": self.openai_api_key}.get(backend)
        if backend not in TOKEN_SETTINGS:
            return True
        return token is not None and bool(token.get_secret_value().strip())

    @model_validator(mode="after")
    def _chosen_backend_has_its_token(self) -> StagingSettings:
        if not self.has_token(self.backend):
            raise ValueError(
                f"STAGING_BACKEND={self.backend} needs {TOKEN_SETTINGS[self.backend]}; set it, "
                "or choose STAGING_BACKEND=local"
            )
        if self.replicate_poll_initial_seconds <= 0 or self.replicate_poll_max_seconds <= 0:
            raise ValueError("replicate poll intervals must be positive")
        if self.job_lease_seconds < 3:
            raise ValueError("job_lease_seconds must be at least 3 seconds")
        return self
