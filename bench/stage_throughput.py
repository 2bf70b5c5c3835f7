"""Benchmark: photos staged per second through the whole stack, create to ready.

Runs a stack of its own (throwaway databases, a private RabbitMQ vhost, free ports), uploads
the photos first, then creates them all at once through the gateway and polls until each is
ready. Prints photos/s and the p50/p95 latency from creation to ready.

    uv run python bench/stage_throughput.py [--photos 50] [--size 960x640] [--users 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.stackkit import Api, infra_from_env, jpeg, proxied_stack


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark once and print its figures."""
    parser = argparse.ArgumentParser(description="Photos staged per second, create to ready.")
    parser.add_argument("--photos", type=int, default=50)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--size", default="960x640", help="photo size, WIDTHxHEIGHT")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    infra = infra_from_env()
    extra = {"GATEWAY_RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING"}
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as tmp,
        proxied_stack(infra, Path(tmp), name="bench", extra_env=extra) as ps,
        Api(ps.gateway, timeout=60) as api,
    ):
        users = []
        for i in range(args.users):
            auth = api.sign_in(f"dev|bench-{i}-{time.time_ns()}")
            users.append((auth, api.project(auth, f"Bench {i}")))
        photos = [jpeg(width, height, seed=s) for s in range(5)]
        keys = []
        for n in range(args.photos):
            auth, project_id = users[n % len(users)]
            keys.append((auth, project_id, api.upload_key(auth, photos[n % len(photos)])))

        def create(n: int) -> tuple[dict[str, str], str, float]:
            auth, project_id, key = keys[n]
            with Api(ps.gateway, timeout=60) as own:
                started = time.monotonic()
                resp = own.create_image(auth, project_id, key, seed=n)
                assert resp.status_code == 201, resp.text
                return auth, resp.json()["id"], started

        wall = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            created = list(pool.map(create, range(args.photos)))
        pending = {image_id: (auth, started) for auth, image_id, started in created}
        latencies: list[float] = []
        failed = 0
        deadline = time.monotonic() + args.timeout
        while pending:
            for image_id, (auth, started) in list(pending.items()):
                status = api.image(auth, image_id)["status"]
                if status in ("ready", "error"):
                    latencies.append(time.monotonic() - started)
                    failed += status == "error"
                    del pending[image_id]
            if pending and time.monotonic() > deadline:
                print(f"{len(pending)} photos not ready within {args.timeout:.0f} s")
                return 1
            time.sleep(0.05)
        elapsed = time.monotonic() - wall

    print(f"photos            {args.photos} ({width}x{height}, {args.users} users)")
    print(f"failed            {failed}")
    print(f"wall time         {elapsed:.1f} s (create of the first to ready of the last)")
    print(f"throughput        {args.photos / elapsed:.2f} photos/s")
    print(f"latency p50       {_percentile(latencies, 0.5):.2f} s")
    print(f"latency p95       {_percentile(latencies, 0.95):.2f} s")
    print(f"latency mean      {statistics.fmean(latencies):.2f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
