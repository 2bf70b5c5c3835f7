"""Object storage through the MinIO client, kept off the event loop."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error

from servicekit.settings import S3Settings


@dataclass(frozen=True)
class ObjectInfo:
    """What storage knows about a stored object."""

    key: str
    size: int
    content_type: str | None


@dataclass(frozen=True)
class ListedObject:
    """An object found by listing a prefix."""

    key: str
    size: int
    last_modified: datetime | None


def _client(endpoint: str, settings: S3Settings) -> Minio:
    parts = urlsplit(endpoint)
    return Minio(
        parts.netloc,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=parts.scheme == "https",
        region=settings.s3_region,
        http_client=urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60),
            maxsize=16,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(502, 503, 504)),
        ),
    )


class Storage:
    """The bucket that holds originals and staged photos."""

    def __init__(self, settings: S3Settings) -> None:
        self.bucket = settings.s3_bucket
        self._client = _client(settings.s3_endpoint, settings)
        # Presigned URLs are signed for the host the browser sees, which may differ from ours.
        self._public = _client(settings.s3_public_endpoint or settings.s3_endpoint, settings)

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""

        def run() -> None:
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        await asyncio.to_thread(run)

    async def ping(self) -> None:
        """Raise unless the bucket answers."""
        await asyncio.to_thread(self._client.bucket_exists, self.bucket)

    async def presign_put(self, key: str, expires: timedelta) -> str:
        """A URL the browser can PUT the object to until it expires."""
        return await asyncio.to_thread(
            self._public.presigned_put_object, self.bucket, key, expires=expires
        )

    async def presign_get(
        self, key: str, expires: timedelta, *, filename: str | None = None
    ) -> str:
        """A short-lived download URL, as an attachment named `filename` when given."""
        params: dict[str, Any] = {}
        if filename:
            params["response-content-disposition"] = f'attachment; filename="{filename}"'
        return await asyncio.to_thread(
            self._public.presigned_get_object,
            self.bucket,
            key,
            expires=expires,
            response_headers=params or None,
        )

    async def stat(self, key: str) -> ObjectInfo | None:
        """The object's size and type, or None when it does not exist."""

        def run() -> ObjectInfo | None:
            try:
                st = self._client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                    return None
                raise
            return ObjectInfo(key=key, size=st.size or 0, content_type=st.content_type)

        return await asyncio.to_thread(run)

    async def read(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The object's bytes (refusing more than `max_bytes`)."""

        def run() -> bytes:
            resp = self._client.get_object(self.bucket, key)
            try:
                data = resp.read(max_bytes + 1 if max_bytes else None)
            finally:
                resp.close()
                resp.release_conn()
            if max_bytes is not None and len(data) > max_bytes:
                raise ValueError(f"object {key} is larger than {max_bytes} bytes")
            return data

        return await asyncio.to_thread(run)

    async def read_head(self, key: str, length: int) -> bytes:
        """The first `length` bytes of an object (for sniffing its real type)."""

        def run() -> bytes:
            resp = self._client.get_object(self.bucket, key, offset=0, length=length)
            try:
                return bytes(resp.read())
            finally:
                resp.close()
                resp.release_conn()

        return await asyncio.to_thread(run)

    def iter_chunks(self, key: str, chunk_size: int = 256 * 1024) -> Iterator[bytes]:
        """Stream an object in chunks (blocking; call from a worker thread)."""
        resp = self._client.get_object(self.bucket, key)
        try:
            yield from resp.stream(chunk_size)
        finally:
            resp.close()
            resp.release_conn()

    async def write(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` under `key`."""
        await asyncio.to_thread(
            self._client.put_object,
            self.bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type=content_type,
        )

    async def write_stream(self, key: str, stream: BinaryIO, size: int, content_type: str) -> None:
        """Store `size` bytes read from `stream` under `key`."""
        await asyncio.to_thread(
            self._client.put_object,
            self.bucket,
            key,
            stream,
            size,
            content_type=content_type,
        )

    async def remove(self, *keys: str) -> None:
        """Delete objects; missing ones are not an error."""

        def run() -> None:
            for key in keys:
                self._client.remove_object(self.bucket, key)

        await asyncio.to_thread(run)

    async def copy(self, source: str, destination: str) -> None:
        """Copy an object server-side (no bytes pass through this process)."""
        await asyncio.to_thread(
            self._client.copy_object, self.bucket, destination, CopySource(self.bucket, source)
        )

    async def list(
        self,
        prefix: str,
        *,
        older_than: datetime | None = None,
        limit: int = 1000,
        start_after: str | None = None,
    ) -> list[ListedObject]:
        """Up to `limit` objects under `prefix` past `start_after`, modified before `older_than`."""

        def run() -> list[ListedObject]:
            found: list[ListedObject] = []
            for obj in self._client.list_objects(
                self.bucket, prefix=prefix, recursive=True, start_after=start_after
            ):
                if obj.is_dir or obj.object_name is None:
                    continue
                modified = obj.last_modified
                if older_than is not None and (modified is None or modified >= older_than):
                    continue
                found.append(ListedObject(obj.object_name, obj.size or 0, modified))
                if len(found) >= limit:
                    break
            return found

        return await asyncio.to_thread(run)
