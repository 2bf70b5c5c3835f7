"""A small chaos run for `make test`, and a staging crash aimed at the middle of a job."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from servicekit.testing import InfraUrls
from tests.chaos.run import Options, run_chaos
from tests.support.stackkit import Api, ProxiedStack, fetch, jpeg, proxied_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def crash_stack(infra: InfraUrls) -> Iterator[ProxiedStack]:
    """A stack of its own, whose processes this module kills."""
    with (
        tempfile.TemporaryDirectory(prefix="crash-") as tmp,
        # A short lease, so that a crashed worker's job is taken over in seconds, not a minute.
        proxied_stack(
            infra, Path(tmp), name="crash", extra_env={"STAGING_JOB_LEASE_SECONDS": "6"}
        ) as ps,
    ):
        yield ps


class TestChaos:
    """Kills and a broker drop while photos are in flight."""

    def test_small_chaos_run_keeps_every_guarantee(self, infra: InfraUrls) -> None:
        report = run_chaos(
            Options(photos=20, users=2, seed=11, min_chaos_seconds=25, settle_seconds=90)
        )
        print(report.summary())
        assert report.total_kills >= 3
        assert report.broker_cuts == 1
        assert report.audit, "the run ends with the invariant audit"
        assert report.ok, report.summary()

    def test_staging_killed_mid_job_still_finishes(self, crash_stack: ProxiedStack) -> None:
        ps = crash_stack
        with Api(ps.gateway) as api:
            auth = api.sign_in()
            project_id = api.project(auth, "Crash mid-job")
            # A large photo keeps the job busy long enough to be caught in the middle.
            key = api.upload_key(auth, jpeg(3000, 2000, seed=5))
            image_id = api.create_image(auth, project_id, key).json()["id"]
            deadline = time.monotonic() + 30
            while True:
                jobs = asyncio.run(
                    fetch(
                        ps.dsn("staging"),
                        "SELECT status FROM jobs WHERE image_id = $1::uuid",
                        image_id,
                    )
                )
                if jobs and jobs[0]["status"] == "processing":
                    break
                assert not jobs or jobs[0]["status"] == "queued", jobs
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.02)
            staging = ps.stack.process("staging")
            staging.kill()
            staging.start()
            staging.wait_ready(60)
            settled = api.wait_settled(auth, [image_id], within=90)[image_id]
        jobs = asyncio.run(
            fetch(
                ps.dsn("staging"),
                "SELECT status, runs, lease_until FROM jobs WHERE image_id = $1::uuid",
                image_id,
            )
        )
        assert settled["status"] == "ready", (settled, jobs)
        assert [j["status"] for j in jobs] == ["completed"], jobs
        assert jobs[0]["runs"] == 2, "the crashed run, then the one that finished"
