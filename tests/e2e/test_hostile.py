"""Hostile input through the gateway: never a 5xx, always the error envelope, nothing stuck.

Every case is tried and every problem collected before asserting, so one run names them all.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import socket
import struct
import sys
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import httpx
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from contracts.topology import ALL_QUEUES
from devstack.services import Stack
from tests.support.stackkit import Api, is_envelope, jpeg

pytestmark = pytest.mark.e2e

RTL = "\u202e"
ZERO_WIDTH = "\u200b\u200c\u200d\ufeff"
NASTY_TEXT = [
    "'; DROP TABLE projects; --",
    '" OR 1=1 --',
    "Robert'); DELETE FROM images WHERE ('1'='1",
    "<script>alert(document.cookie)</script>",
    '"><img src=x onerror=alert(1)>',
    "{{7*7}} ${7*7} %s %n",
    f"{RTL}gpj.exe",
    f"zero{ZERO_WIDTH}width",
    "🏠🛋️🪴 Émile's Château \u2013 家",
    "e\u0301" * 40,
]


class Problems:
    """Collects what went wrong across many cases, so a failing run lists every one."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def check(self, what: str, resp: httpx.Response, allowed: tuple[int, ...] = ()) -> None:
        """A response must be < 500, in `allowed` if given, and an error must be an envelope."""
        label = f"{what}: {resp.request.method} {resp.request.url.raw_path.decode()[:120]}"
        if resp.status_code >= 500:
            self.items.append(f"{label} -> {resp.status_code} {resp.text[:300]}")
            return
        if allowed and resp.status_code not in allowed:
            self.items.append(
                f"{label} -> {resp.status_code}, expected {allowed}: {resp.text[:200]}"
            )
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                self.items.append(f"{label} -> {resp.status_code} not JSON: {resp.text[:200]}")
                return
            if not is_envelope(body):
                self.items.append(f"{label} -> {resp.status_code} not the envelope: {body}")

    def add(self, text: str) -> None:
        """Record a problem found some other way."""
        self.items.append(text)

    def assert_none(self) -> None:
        """Fail listing every problem."""
        assert not self.items, f"{len(self.items)} problem(s):\n" + "\n".join(self.items)


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[Api]:
    """A client of the e2e stack's gateway."""
    with Api(stack.url("gateway"), timeout=60) as client:
        yield client


@pytest.fixture
def problems() -> Problems:
    """A fresh problem list."""
    return Problems()


def _json_bytes(resp_body: bytes, api: Api, path: str, auth: Mapping[str, str]) -> httpx.Response:
    return api.client.post(
        path, content=resp_body, headers={**auth, "Content-Type": "application/json"}
    )


class TestMalformedRequests:
    """Broken JSON, wrong content types, oversized bodies."""

    def test_malformed_json_is_a_4xx_envelope(self, api: Api, problems: Problems) -> None:
        auth = api.sign_in()
        project_id = api.project(auth)
        bodies = [
            b"",
            b"{",
            b'{"name": ',
            b'{"name": "x",}',
            b"[]",
            b"null",
            b"42",
            b'"just a string"',
            b'{"name": {"$ne": null}}',
            b'{"name": ["a", "b"]}',
            b'{"name": 1e999}',
            b"\xff\xfe\x00{",
            b"[" * 5_000 + b"]" * 5_000,
            b'{"name": "' + b"\\ud800" + b'"}',
            b'{"name": "ok", "name": "dup", "extra": true}',
        ]
        paths = ["/v1/projects", f"/v1/projects/{project_id}/images", "/v1/uploads/presign"]
        for path in paths:
            for body in bodies:
                resp = _json_bytes(body, api, path, auth)
                problems.check(f"malformed JSON {body[:30]!r}", resp, (400, 413, 415, 422))
        for body in bodies:
            problems.check(
                f"malformed dev token {body[:30]!r}",
                api.client.post(
                    "/v1/dev/token", content=body, headers={"Content-Type": "application/json"}
                ),
                (400, 415, 422),
            )
        problems.assert_none()

    def test_wrong_content_types_are_refused(self, api: Api, problems: Problems) -> None:
        auth = api.sign_in()
        cases: list[tuple[str, str, dict[str, Any]]] = [
            ("/v1/projects", "text/plain", {"content": b'{"name": "x"}'}),
            ("/v1/projects", "application/x-www-form-urlencoded", {"content": b"name=x"}),
            ("/v1/projects", "application/xml", {"content": b"<name>x</name>"}),
            ("/v1/projects", "multipart/form-data", {"content": b"--x\r\n\r\n"}),
            ("/v1/uploads", "application/json", {"content": b'{"file": "x"}'}),
            ("/v1/uploads", "multipart/form-data; boundary=zz", {"content": b"--zz\r\ngarbage"}),
            ("/v1/uploads", "multipart/form-data", {"content": b""}),
            ("/v1/uploads", "image/jpeg", {"content": jpeg(64, 64)}),
        ]
        for path, ctype, kwargs in cases:
            resp = api.client.post(path, headers={**auth, "Content-Type": ctype}, **kwargs)
            problems.check(f"content type {ctype}", resp, (400, 413, 415, 422))
        # A multipart upload under another field name, and with no file at all.
        resp = api.client.post(
            "/v1/uploads", files={"photo": ("a.jpg", jpeg(64, 64), "image/jpeg")}, headers=auth
        )
        problems.check("multipart without `file`", resp, (400, 422))
        resp = api.client.post("/v1/uploads", data={"file": "not a file"}, headers=auth)
        problems.check("multipart `file` as text", resp, (400, 422))
        problems.assert_none()

    def test_oversized_bodies_get_413(self, api: Api, stack: Stack, problems: Problems) -> None:
        auth = api.sign_in()
        limit = 30 * 1024 * 1024

        def chunks() -> Iterator[bytes]:
            block = b"\xff\xd8\xff" + b"\0" * (1024 * 1024 - 3)
            for _ in range(limit // len(block) + 2):
                yield block

        # A chunked body has no declared size: the gateway counts as it streams.
        try:
            resp = api.client.post(
                "/v1/uploads",
                content=chunks(),
                headers={**auth, "Content-Type": "multipart/form-data; boundary=b"},
            )
        except httpx.HTTPError as exc:
            problems.add(f"chunked 32 MiB upload: connection error instead of 413: {exc!r}")
        else:
            problems.check("chunked 32 MiB body", resp, (413,))

        # A declared size over the limit is refused before any of the body is read.
        host = urlsplit(stack.url("gateway"))
        token = auth["Authorization"]
        raw = (
            f"POST /v1/projects HTTP/1.1\r\nHost: {host.hostname}\r\n"
            f"Authorization: {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {limit * 4}\r\nConnection: close\r\n\r\n"
        ).encode() + b'{"name": "'
        with socket.create_connection((host.hostname, host.port), timeout=10) as sock:
            sock.sendall(raw)
            answer = b""
            while b"\r\n\r\n" not in answer:
                part = sock.recv(65536)
                if not part:
                    break
                answer += part
        status_line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 413 " not in status_line + " ":
            problems.add(f"declared 120 MiB body: {status_line!r}, expected 413")

        # A multipart photo over the projects limit but under the gateway's.
        big = b"\xff\xd8\xff\xe0" + b"\0" * (26 * 1024 * 1024)
        resp = api.upload(auth, big, "big.jpg")
        problems.check("26 MiB upload", resp, (413, 422))
        problems.assert_none()


class TestHostileText:
    """Odd Unicode, NUL bytes, SQL and markup in every string field."""

    def test_project_names(self, api: Api, problems: Problems) -> None:
        auth = api.sign_in()
        accepted: dict[str, str] = {}
        names = [
            *NASTY_TEXT,
            "a" * 100,
            "a" * 101,
            "b" * 100_000,
            "🏠" * 100,
            "🏠" * 101,
            " ",
            "\t\n",
            "",
            "nul\u0000byte",
            "\u0000",
            "bell\u0007 and escape\u001b[31m",
            "lone surrogate \ud83d",
        ]
        for name in names:
            body = json.dumps({"name": name}).encode()
            resp = _json_bytes(body, api, "/v1/projects", auth)
            problems.check(f"project name {name[:20]!r}", resp, (201, 422))
            if resp.status_code == 201:
                accepted[resp.json()["id"]] = name
                if "\u0000" in name:
                    problems.add(f"a NUL byte was accepted in {name!r}")
            elif name in NASTY_TEXT or name == "a" * 100 or name == "🏠" * 100:
                problems.add(f"legitimate name {name!r} refused: {resp.text[:200]}")
        for project_id, name in accepted.items():
            resp = api.client.get(f"/v1/projects/{project_id}", headers=auth)
            problems.check("read back", resp, (200,))
            if resp.status_code == 200 and resp.json()["name"] != name.strip():
                problems.add(f"name not stored verbatim: {name!r} -> {resp.json()['name']!r}")
            assert resp.headers["content-type"].startswith("application/json")
        # Renames take the same path through validation.
        some_id = next(iter(accepted))
        for name in ("nul\u0000", "x" * 101, "<script>alert(1)</script>"):
            resp = api.client.patch(f"/v1/projects/{some_id}", json={"name": name}, headers=auth)
            problems.check(f"rename {name[:12]!r}", resp, (200, 422))
        listing = api.client.get("/v1/projects?limit=100", headers=auth)
        problems.check("list after hostile names", listing, (200,))
        problems.assert_none()

    def test_image_and_upload_fields(self, api: Api, problems: Problems) -> None:
        texts = [*NASTY_TEXT, "nul\u0000.jpg", "../../etc/passwd", "a" * 300]
        for text in texts:
            # A user per case keeps each under the gateway's write rate limit.
            auth = api.sign_in()
            project_id = api.project(auth, text[:100] if "\u0000" not in text else "nul")
            resp = api.client.post(
                "/v1/uploads/presign",
                json={"filename": text, "content_type": "image/jpeg", "size": 100},
                headers=auth,
            )
            problems.check(f"presign filename {text[:20]!r}", resp, (200, 422))
            resp = api.upload(auth, jpeg(64, 64), filename=text)
            problems.check(f"multipart filename {text[:20]!r}", resp, (201, 422))
            resp = api.create_image(auth, project_id, text)
            problems.check(f"image key {text[:20]!r}", resp, (404, 422))
            for field in ("room_type", "style"):
                resp = api.create_image(auth, project_id, "k", **{field: text})
                problems.check(f"image {field} {text[:20]!r}", resp, (422,))
        # One image with a hostile display name: stored verbatim, returned as JSON.
        auth = api.sign_in()
        project_id = api.project(auth, "<script>alert(1)</script>'; DROP TABLE images; --")
        key = api.upload_key(auth, jpeg(320, 240))
        name = "<script>alert(1)</script>'; DROP TABLE images; --.jpg"
        resp = api.create_image(auth, project_id, key, filename=name)
        problems.check("hostile image filename", resp, (201,))
        if resp.status_code == 201:
            got = api.image(auth, resp.json()["id"])
            if got["original_filename"] != name:
                problems.add(f"filename not verbatim: {got['original_filename']!r}")
        resp = api.create_image(auth, project_id, key, filename="nul\u0000.jpg")
        problems.check("image filename with NUL", resp, (422,))
        for seed in (-1, 2**32, 2**64, "1", 1.5, None, True):
            resp = api.create_image(auth, project_id, key, seed=seed)
            problems.check(f"seed {seed!r}", resp, (201, 422))
        for text in ("<script>", "'; DROP TABLE users; --", "x" * 300, "nul\u0000"):
            resp = api.client.post("/v1/dev/token", json={"sub": text, "email": text})
            problems.check(f"dev token sub {text[:12]!r}", resp, (422,))
        problems.assert_none()

    def test_paths_queries_and_headers(self, api: Api, problems: Problems) -> None:
        auth = api.sign_in()
        project_id = api.project(auth)
        bad_ids = [
            "not-a-uuid",
            "123",
            "00000000-0000-0000-0000-000000000000",
            "' OR '1'='1",
            "<script>",
            "%00",
            "%2e%2e%2fadmin",
            "..",
            "a" * 2000,
            "😀",
            str(uuid.uuid4()).upper(),
            "{" + str(uuid.uuid4()) + "}",
        ]
        for bad in bad_ids:
            segment = bad if bad.startswith("%") else quote(bad, safe="")
            for path in (
                f"/v1/projects/{segment}",
                f"/v1/images/{segment}",
                f"/v1/projects/{segment}/images",
                f"/v1/images/{segment}/download",
                f"/v1/projects/{segment}/download.zip",
                f"/v1/projects/{segment}/summary",
            ):
                problems.check(
                    f"bad id {bad[:16]!r}", api.client.get(path, headers=auth), (404, 422)
                )
            resp = api.client.delete(f"/v1/images/{segment}", headers=auth)
            problems.check(f"delete bad id {bad[:16]!r}", resp, (404, 405, 422))
        naive = base64.urlsafe_b64encode(f"2020-01-01T00:00:00|{uuid.uuid4()}".encode()).decode()
        too_early = base64.urlsafe_b64encode(
            f"0001-01-01T00:00:00+14:00|{uuid.uuid4()}".encode()
        ).decode()
        queries = [
            "limit=-1",
            "limit=0",
            "limit=abc",
            "limit=99999999999999999999",
            "cursor=garbage",
            "cursor=' OR 1=1 --",
            "cursor=%3Cscript%3E",
            f"cursor={naive}",
            f"cursor={too_early}",
            "status=bogus",
            "status=ready&status=error",
        ]
        for query in queries:
            for path in ("/v1/projects", f"/v1/projects/{project_id}/images"):
                resp = api.client.get(f"{path}?{query}", headers=auth)
                problems.check(f"query {query[:30]}", resp, (200, 400, 422))
        for header in (
            "Bearer <script>",
            "Bearer " + "a" * 8000,
            "Bearer a.b.c",
            "Basic Zm9vOmJhcg==",
            "bearer",
            "Bearer " + base64.b64encode(b'{"alg":"none"}').decode() + "..",
        ):
            resp = api.client.get("/v1/me", headers={"Authorization": header})
            problems.check(f"auth header {header[:20]!r}", resp, (401, 403))
        resp = api.client.get("/v1/me", headers={**auth, "X-Request-ID": "<script>x</script>"})
        problems.check("hostile request id", resp, (200,))
        if resp.headers.get("x-request-id") == "<script>x</script>":
            problems.add("a hostile X-Request-ID was echoed back verbatim")
        resp = api.client.request("TRACE", "/v1/projects", headers=auth)
        problems.check("TRACE", resp, (404, 405))
        problems.assert_none()


def _png_bomb(side: int = 30_000) -> bytes:
    """A valid PNG declaring side x side grey pixels: under 1 MiB, 900 MB once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    parts = []
    rows_per_block = 256
    for start in range(0, side, rows_per_block):
        parts.append(comp.compress(row * min(rows_per_block, side - start)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims another size."""
    data = bytearray(jpeg(64, 48))
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at != -1:
            data[at + 5 : at + 9] = struct.pack(">HH", height, width)
            return bytes(data)
    raise AssertionError("no SOF marker")


def _zip_bytes() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("evil.html", "<script>alert(1)</script>")
    return buf.getvalue()


HTML_PAYLOAD = b"<html><script>alert('polyglot')</script></html>"


def _bad_images() -> dict[str, bytes]:
    good = jpeg(320, 240, seed=3)
    png = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 190, 180)).save(png, "PNG")
    return {
        "zero-byte": b"",
        "truncated JPEG": good[: len(good) // 2],
        "JPEG header only": good[:200],
        "JPEG magic then garbage": b"\xff\xd8\xff" + bytes(range(256)) * 40,
        "truncated PNG": png.getvalue()[:100],
        "PNG bomb 30000x30000": _png_bomb(),
        "JPEG declaring 65000x65000": _jpeg_declaring(65_000, 65_000),
        "polyglot JPEG + HTML": good + HTML_PAYLOAD,
        "polyglot JPEG + zip": good + _zip_bytes(),
        "HTML named .jpg": HTML_PAYLOAD,
        "zip named .jpg": _zip_bytes(),
        "WebP magic then garbage": b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 64,
        "HEIC brand then garbage": b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64,
    }


class TestHostileImages:
    """Broken, huge and two-faced files: refused up front, or `error` with a reason."""

    def test_each_bad_file_is_refused_or_fails_with_a_reason(
        self, api: Api, problems: Problems
    ) -> None:
        created: dict[str, str] = {}
        owner: dict[str, dict[str, str]] = {}
        for index, (label, data) in enumerate(_bad_images().items()):
            if index % 4 == 0:
                # The free plan allows 5 photos a month: a new user every 4 files.
                auth = api.sign_in()
                project_id = api.project(auth, "Bad files")
            up = api.upload(auth, data, filename="photo.jpg")
            problems.check(f"upload {label}", up, (201, 413, 422))
            if up.status_code != 201:
                continue
            resp = api.create_image(auth, project_id, up.json()["key"])
            problems.check(f"create {label}", resp, (201, 402, 422))
            if resp.status_code == 201:
                created[resp.json()["id"]] = label
                owner[resp.json()["id"]] = auth
            elif resp.status_code == 402:
                problems.add(f"allowance ran out before {label}: raise the test's user budget")
        settled: dict[str, dict[str, Any]] = {}
        for image_id in created:
            try:
                settled.update(api.wait_settled(owner[image_id], [image_id], within=60))
            except AssertionError as exc:
                problems.add(f"{created[image_id]} stuck: {exc}")
        for image_id, body in settled.items():
            label = created[image_id]
            if label.startswith("polyglot") and body["status"] == "ready":
                # A real JPEG with trailing bytes decodes; the staged copy must be re-encoded.
                link = api.client.get(f"/v1/images/{image_id}/download", headers=owner[image_id])
                staged = httpx.get(link.json()["url"]).content
                if HTML_PAYLOAD in staged or b"PK\x03\x04" in staged:
                    problems.add(f"{label}: the appended payload survived staging")
                continue
            if body["status"] != "error":
                problems.add(f"{label}: ended {body['status']}, expected error")
                continue
            reason = body.get("error") or ""
            if not reason or "Traceback" in reason or len(reason) > 300:
                problems.add(f"{label}: unhelpful reason {reason!r}")
        problems.assert_none()

    def test_presigned_put_of_a_non_image_is_refused_at_create(
        self, api: Api, problems: Problems
    ) -> None:
        auth = api.sign_in()
        project_id = api.project(auth)
        for label, data in (("html", HTML_PAYLOAD), ("zero", b"")):
            presign = api.client.post(
                "/v1/uploads/presign",
                json={"filename": "room.jpg", "content_type": "image/jpeg", "size": 10},
                headers=auth,
            )
            problems.check("presign", presign, (200,))
            upload = presign.json()
            put = httpx.put(upload["upload_url"], content=data, headers=upload["headers"])
            if put.status_code not in (200, 204):
                problems.add(f"S3 refused the PUT of {label}: {put.status_code}")
                continue
            resp = api.create_image(auth, project_id, upload["key"])
            problems.check(f"create from {label}", resp, (422,))
        problems.assert_none()


def _stripe_signature(payload: bytes, secret: str, at: int | None = None) -> str:
    at = at or int(time.time())
    mac = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


class TestStripeWebhooks:
    """Malformed, unsigned, mis-signed and replayed webhooks: 4xx, never 5xx."""

    def test_bad_webhooks_are_refused(self, api: Api, problems: Problems) -> None:
        path = "/v1/billing/webhooks/stripe"
        event = json.dumps(
            {
                "id": f"evt_{uuid.uuid4().hex}",
                "type": "invoice.paid",
                "data": {"object": {"id": "in_1", "customer": "cus_<script>"}},
            }
        ).encode()
        signed = _stripe_signature(event, "whsec_not_the_real_secret")
        old = _stripe_signature(event, "whsec_not_the_real_secret", at=int(time.time()) - 3600)
        cases: list[tuple[str, bytes, dict[str, str]]] = [
            ("no signature", event, {}),
            ("empty signature", event, {"Stripe-Signature": ""}),
            ("garbage signature", event, {"Stripe-Signature": "t=abc,v1=<script>"}),
            ("wrong secret", event, {"Stripe-Signature": signed}),
            ("replayed, an hour old", event, {"Stripe-Signature": old}),
            ("malformed JSON", b'{"id": ', {"Stripe-Signature": signed}),
            ("not JSON", b"\x00\xff" * 100, {"Stripe-Signature": signed}),
            ("empty", b"", {"Stripe-Signature": signed}),
        ]
        for label, body, headers in cases:
            for _ in range(2):  # The second one is a replay.
                resp = api.client.post(
                    path, content=body, headers={"Content-Type": "application/json", **headers}
                )
                problems.check(f"webhook {label}", resp, (400, 401, 403, 404, 422))
        problems.assert_none()


async def _publish_garbage(amqp_url: str, queue: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for i, body in enumerate(bodies):
            await channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    message_id=f"garbage-{i}-{uuid.uuid4().hex}",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json" if i % 2 else "application/octet-stream",
                ),
                routing_key=queue,
            )


async def _drain_dlq(amqp_url: str, queue: str, *, expect: int, within: float) -> list[Any]:
    """Take `expect` messages out of `queue` (acking them), waiting up to `within` seconds."""
    got: list[Any] = []
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        dlq = await channel.declare_queue(queue, passive=True)
        deadline = time.monotonic() + within
        while len(got) < expect and time.monotonic() < deadline:
            message = await dlq.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                await asyncio.sleep(0.2)
                continue
            got.append((message.body, message.headers))
            await message.ack()
    return got


async def _drain_all(amqp_url: str, *, expect: int, within: float) -> dict[str, list[Any]]:
    queues = [spec.dead_letter for spec in ALL_QUEUES]
    results = await asyncio.gather(
        *(_drain_dlq(amqp_url, q, expect=expect, within=within) for q in queues)
    )
    return dict(zip(queues, results, strict=True))


async def _consumers(amqp_url: str) -> dict[str, int]:
    connection = await aio_pika.connect(amqp_url, timeout=10)
    counts = {}
    async with connection:
        channel = await connection.channel()
        for spec in ALL_QUEUES:
            queue = await channel.declare_queue(spec.name, passive=True)
            counts[spec.name] = int(queue.declaration_result.consumer_count or 0)
    return counts


GARBAGE = [
    b"",
    b"not json at all \xff\xfe",
    b"[1, 2, 3]",
    b'"a string"',
    b"null",
    b'{"event_type": "image.queued"}',
    b'{"event_type": "no.such.event", "producer": "x", "data": {}}',
    json.dumps(
        {
            "event_id": "not-a-uuid",
            "event_type": "image.queued",
            "producer": "<script>",
            "data": {"image_id": "'; DROP TABLE jobs; --"},
        }
    ).encode(),
    b"{" * 10_000,
]


class TestPoisonMessages:
    """Garbage on every queue is parked with a reason; the queues keep flowing."""

    def test_garbage_is_dead_lettered_and_work_continues(
        self, api: Api, stack: Stack, problems: Problems
    ) -> None:
        amqp_url = stack.env("gateway")["AMQP_URL"]
        before = asyncio.run(_consumers(amqp_url))
        for spec in ALL_QUEUES:
            asyncio.run(_publish_garbage(amqp_url, spec.name, GARBAGE))
        drained = asyncio.run(_drain_all(amqp_url, expect=len(GARBAGE), within=20))
        for spec in ALL_QUEUES:
            parked = drained[spec.dead_letter]
            missing = [b[:40] for b in GARBAGE if b not in {body for body, _ in parked}]
            if missing:
                problems.add(f"{spec.dead_letter}: not parked: {missing}")
            for _, h in parked:
                reason = (h or {}).get("x-death-reason")
                if not reason:
                    problems.add(f"{spec.dead_letter}: parked without x-death-reason: {h}")
        after = asyncio.run(_consumers(amqp_url))
        for name, count in before.items():
            if after.get(name, 0) < max(count, 1):
                problems.add(f"{name}: {after.get(name)} consumers after the garbage ({count})")
        for name in ("gateway", "projects", "staging", "billing"):
            if not stack.process(name).running:
                problems.add(f"{name} died:\n{stack.process(name).log_tail()}")
        # The queues still flow: a good photo goes all the way.
        auth = api.sign_in()
        project_id = api.project(auth)
        image = api.create_image(auth, project_id, api.upload_key(auth, jpeg(480, 320)))
        problems.check("create after garbage", image, (201,))
        if image.status_code == 201:
            body = api.wait_settled(auth, [image.json()["id"]], within=60)
            if next(iter(body.values()))["status"] != "ready":
                problems.add(f"good photo after garbage ended {body}")
        problems.assert_none()
