"""Which backends this worker can run, and which one (and model) is in use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from staging.backends.base import StagingBackend
from staging.backends.offline import LOCAL_MODEL, LocalBackend
from staging.backends.openai import MODEL as OPENAI_MODEL
from staging.backends.openai import OpenAIBackend, OpenAIConfig
from staging.backends.remote import RemoteLimits
from staging.backends.replicate import MODELS as REPLICATE_MODELS
from staging.backends.replicate import ReplicateBackend, ReplicateConfig
from staging.settings import TOKEN_SETTINGS, StagingSettings

KNOWN_MODELS: dict[str, tuple[str, ...]] = {
    "local": (LOCAL_MODEL,),
    "replicate": tuple(REPLICATE_MODELS),
    "openai": (OPENAI_MODEL,),
}
"""Every backend this code knows, with the models it can run (first is the default)."""


@dataclass(frozen=True)
class BackendChoice:
    """The backend and model new jobs use."""

    backend: str
    model: str


class InvalidChoice(ValueError):
    """An admin asked for a backend or model this deployment cannot run."""


def default_choice(settings: StagingSettings) -> BackendChoice:
    """The choice from settings, used until an admin picks another."""
    if settings.backend == "replicate":
        return BackendChoice("replicate", settings.replicate_model)
    if settings.backend == "openai":
        return BackendChoice("openai", settings.openai_model)
    return BackendChoice("local", LOCAL_MODEL)


def normalise_choice(backend: str, model: str | None) -> BackendChoice:
    """The choice with its model filled in, or InvalidChoice for an unknown backend or model."""
    if backend not in KNOWN_MODELS:
        raise InvalidChoice(
            f"Unknown backend {backend!r}; expected one of {', '.join(KNOWN_MODELS)}."
        )
    models = KNOWN_MODELS[backend]
    chosen = model or models[0]
    if chosen not in models:
        raise InvalidChoice(
            f"The {backend} backend has no model {chosen!r}; expected one of {', '.join(models)}."
        )
    return BackendChoice(backend, chosen)


def validate_choice(
    backend: str, model: str | None, available: Mapping[str, StagingBackend]
) -> BackendChoice:
    """A choice this deployment can run, or InvalidChoice saying what is wrong."""
    choice = normalise_choice(backend, model)
    if backend not in available:
        raise InvalidChoice(
            f"The {backend} backend is not configured on this deployment: set "
            f"{TOKEN_SETTINGS.get(backend, 'its credentials')} first."
        )
    return choice


def limits(settings: StagingSettings) -> RemoteLimits:
    """Input and output bounds of the remote backends."""
    return RemoteLimits(
        input_max_side=settings.remote_input_max_side,
        input_max_bytes=settings.remote_input_max_bytes,
        output_max_bytes=settings.remote_output_max_bytes,
        request_timeout_seconds=settings.remote_request_timeout_seconds,
        max_retry_after_seconds=settings.remote_max_retry_after_seconds,
        output_max_pixels=settings.max_input_pixels,
        output_hosts=tuple(settings.remote_output_hosts),
        output_require_https=settings.remote_output_require_https,
    )


def build_backends(settings: StagingSettings) -> dict[str, StagingBackend]:
    """Every backend whose credentials are configured; `local` always."""
    backends: dict[str, StagingBackend] = {"local": LocalBackend()}
    if settings.replicate_api_token is not None and settings.has_token("replicate"):
        backends["replicate"] = ReplicateBackend(
            ReplicateConfig(
                token=settings.replicate_api_token.get_secret_value(),
                api_base=settings.replicate_api_base,
                default_model=settings.replicate_model,
                poll_initial_seconds=settings.replicate_poll_initial_seconds,
                poll_max_seconds=settings.replicate_poll_max_seconds,
                timeout_seconds=settings.replicate_timeout_seconds,
                limits=limits(settings),
            )
        )
    if settings.openai_api_key is not None and settings.has_token("openai"):
        backends["openai"] = OpenAIBackend(
            OpenAIConfig(
                api_key=settings.openai_api_key.get_secret_value(),
                api_base=settings.openai_api_base,
                quality=settings.openai_quality,
                timeout_seconds=settings.openai_timeout_seconds,
                limits=limits(settings),
            )
        )
    return backends
