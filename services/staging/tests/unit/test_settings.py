"""Staging settings: a remote backend is refused at start without its credentials."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from staging.backends.registry import (
    InvalidChoice,
    build_backends,
    default_choice,
    validate_choice,
)
from staging.settings import StagingSettings

SECRET = "test-internal-secret-0123456789-abcdefghijklmnop"


def _settings(**values: object) -> StagingSettings:
    return StagingSettings(environment="test", internal_secret=SECRET, **values)  # type: ignore[arg-type]


class TestStagingSettings:
    """Backend choice and credentials."""

    def test_local_is_the_default_and_needs_no_token(self) -> None:
        settings = _settings()
        assert settings.backend == "local"
        assert default_choice(settings).backend == "local"
        assert set(build_backends(settings)) == {"local"}

    @pytest.mark.parametrize(
        ("backend", "variable"),
        [("replicate", "STAGING_REPLICATE_API_TOKEN"), ("openai", "STAGING_OPENAI_API_KEY")],
    )
    def test_a_remote_backend_without_its_token_is_refused(
        self, backend: str, variable: str
    ) -> None:
        with pytest.raises(ValidationError, match=variable):
            _settings(backend=backend)

    def test_a_blank_token_counts_as_missing(self) -> None:
        with pytest.raises(ValidationError, match="STAGING_REPLICATE_API_TOKEN"):
            _settings(backend="replicate", replicate_api_token="  ")

    def test_tokens_come_from_the_environment_and_stay_secret(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("STAGING_BACKEND", "replicate")
        monkeypatch.setenv("STAGING_REPLICATE_API_TOKEN", "r8_abc123")
        monkeypatch.setenv("STAGING_REPLICATE_MODEL", "qwen/qwen-image-edit")
        settings = _settings()
        assert settings.replicate_api_token is not None
        assert settings.replicate_api_token.get_secret_value() == "r8_abc123"
        assert "r8_abc123" not in repr(settings)
        assert default_choice(settings).model == "qwen/qwen-image-edit"
        assert set(build_backends(settings)) == {"local", "replicate"}

    def test_unknown_backends_and_models_are_refused(self) -> None:
        with pytest.raises(ValidationError):
            _settings(backend="midjourney")
        with pytest.raises(ValidationError):
            _settings(replicate_model="stability-ai/sdxl")

    def test_the_default_api_bases_are_the_real_services(self) -> None:
        settings = _settings()
        assert settings.replicate_api_base == "https://api.replicate.com"
        assert settings.openai_api_base == "https://api.openai.com"


class TestBackendChoice:
    """What an admin may choose at run time."""

    def test_a_configured_backend_gets_its_default_model(self) -> None:
        backends = build_backends(_settings(openai_api_key="sk-test"))
        choice = validate_choice("openai", None, backends)
        assert (choice.backend, choice.model) == ("openai", "gpt-image-1")

    @pytest.mark.parametrize(
        ("backend", "model", "message"),
        [
            ("dalle", None, "Unknown backend"),
            ("replicate", "stability-ai/sdxl", "has no model"),
            ("replicate", None, "STAGING_REPLICATE_API_TOKEN"),
        ],
    )
    def test_invalid_choices_say_why(self, backend: str, model: str | None, message: str) -> None:
        with pytest.raises(InvalidChoice, match=message):
            validate_choice(backend, model, build_backends(_settings()))


class TestRemoteOutputs:
    """Where output files may come from."""

    def test_the_allow_list_defaults_to_replicates_delivery_hosts_over_https(self) -> None:
        settings = _settings()
        assert settings.remote_output_hosts == ["replicate.delivery", "*.replicate.delivery"]
        assert settings.remote_output_require_https is True

    def test_the_allow_list_is_read_comma_separated(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("STAGING_REMOTE_OUTPUT_HOSTS", "cdn.example.org, *.files.example.org")
        assert _settings().remote_output_hosts == ["cdn.example.org", "*.files.example.org"]

    def test_production_refuses_plain_http_downloads(self) -> None:
        with pytest.raises(ValidationError, match="REMOTE_OUTPUT_REQUIRE_HTTPS"):
            StagingSettings(
                environment="production",
                internal_secret=SECRET,
                remote_output_require_https=False,
            )
