"""The retry policy's ladder and the classification of failures (no I/O)."""

from __future__ import annotations

import aiormq.exceptions
import asyncpg
import pytest
import urllib3.exceptions
from minio.error import S3Error
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from contracts.topology import STAGING_JOBS
from servicekit.messaging import PermanentError, RetryPolicy, is_infrastructure_error
from servicekit.settings import ServiceSettings


class TestRetryPolicy:
    """Delays come from settings; the last one repeats."""

    def test_the_last_delay_repeats(self) -> None:
        policy = RetryPolicy(delays_seconds=(1.0, 5.0, 30.0, 120.0))
        assert [policy.delay_ms(n) for n in range(1, 8)] == [
            1000,
            5000,
            30000,
            120000,
            120000,
            120000,
            120000,
        ]
        assert policy.delays_ms == (1000, 5000, 30000, 120000)

    def test_scaled_ladder_from_settings_names_its_delay_queues(self) -> None:
        settings = ServiceSettings(
            environment="test",
            retry_delays_seconds=(0.05, 0.1, 0.1),
            retry_max_age_seconds=3,
            dead_letter_max_length=10,
        )
        policy = RetryPolicy.from_settings(settings)
        assert policy.delays_ms == (50, 100)
        assert policy.max_age_seconds == 3
        assert policy.dead_letter_max_length == 10
        assert STAGING_JOBS.delay_queue(50) == "staging.jobs.delay.50"

    def test_production_defaults_are_real_durations(self) -> None:
        policy = RetryPolicy()
        assert sum(policy.delays_seconds) == 156
        assert policy.max_age_seconds == 7 * 24 * 3600


class TestClassification:
    """Which failures mean 'a dependency is away' and are retried for days."""

    @pytest.mark.parametrize(
        "error",
        [
            ConnectionRefusedError("db down"),
            TimeoutError(),
            OSError("no route to host"),
            OperationalError("SELECT 1", {}, Exception("server closed the connection")),
            InterfaceError("SELECT 1", {}, Exception("connection is closed")),
            IntegrityError("UPDATE images", {}, Exception("violates check constraint")),
            PoolTimeout("QueuePool limit reached"),
            asyncpg.exceptions.CannotConnectNowError("starting up"),
            asyncpg.exceptions.InterfaceError("closed"),
            S3Error("SlowDown", "busy", "r", "h", "id", None),  # type: ignore[arg-type]
            urllib3.exceptions.MaxRetryError(None, "/bucket", None),  # type: ignore[arg-type]
            aiormq.exceptions.AMQPConnectionError("broker away"),
            aiormq.exceptions.ChannelInvalidStateError("closed"),
        ],
    )
    def test_infrastructure_errors_are_transient(self, error: BaseException) -> None:
        assert is_infrastructure_error(error)

    @pytest.mark.parametrize(
        "error",
        [
            PermanentError("no such user"),
            ValueError("bad data"),
            KeyError("missing"),
            RuntimeError("a bug"),
        ],
    )
    def test_other_errors_are_not(self, error: BaseException) -> None:
        assert not is_infrastructure_error(error)
