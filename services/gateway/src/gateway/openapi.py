"""The public OpenAPI document: the gateway's own routes plus what it forwards to.

Each internal service serves its own `/openapi.json`. The gateway fetches them at startup and
every few minutes, keeps the last good copy of each (a service that is down keeps its last
document, or is left out until it answers), and merges their forwarded `/v1/...` paths and
their components into its own schema. A component whose name is taken by a different schema
is renamed with the service's name as prefix, and every reference to it follows.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.proxy import Forwarder
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

SECURITY_SCHEME = "HTTPBearer"
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "An Auth0 access token (RS256).",
}
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
RETRY_MISSING_SECONDS = 10.0


def merge(
    base: dict[str, Any],
    upstreams: dict[str, dict[str, Any]],
    *,
    forwarded: Callable[[str], bool],
    public: Callable[[str, str], bool],
) -> dict[str, Any]:
    """Merge the upstream documents' forwarded paths and components into `base`."""
    merged = copy.deepcopy(base)
    paths: dict[str, Any] = merged.setdefault("paths", {})
    components: dict[str, Any] = merged.setdefault("components", {})
    operation_ids = {
        op.get("operationId") for item in paths.values() for op in _operations(item)
    } - {None}
    for service in sorted(upstreams):
        doc = copy.deepcopy(upstreams[service])
        renames = _renames(components, doc.get("components", {}), prefix=_prefix(service))
        doc = _rewrite_refs(doc, renames)
        for section, items in doc.get("components", {}).items():
            if section == "securitySchemes" or not isinstance(items, dict):
                continue
            target = components.setdefault(section, {})
            for name, value in items.items():
                target.setdefault(renames.get((section, name), name), value)
        for path, item in doc.get("paths", {}).items():
            if not path.startswith("/v1/") or not forwarded(path) or path in paths:
                continue
            for method, op in _method_operations(item):
                if op.get("operationId") in operation_ids:
                    op["operationId"] = f"{service}_{op['operationId']}"
                operation_ids.add(op.get("operationId"))
                op.setdefault("tags", [service])
                if not public(method.upper(), path):
                    op["security"] = [{SECURITY_SCHEME: []}]
            paths[path] = item
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = BEARER
    merged["paths"] = dict(sorted(paths.items()))
    return merged


def _prefix(service: str) -> str:
    return "".join(part.capitalize() for part in service.replace("-", "_").split("_"))


def _operations(item: Any) -> Iterable[dict[str, Any]]:
    return (op for _, op in _method_operations(item))


def _method_operations(item: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(item, dict):
        return []
    return [(m, item[m]) for m in HTTP_METHODS if isinstance(item.get(m), dict)]


def _ref(section: str, name: str) -> str:
    return f"#/components/{section}/{name}"


def _renames(
    existing: dict[str, Any], incoming: dict[str, Any], *, prefix: str
) -> dict[tuple[str, str], str]:
    """Which incoming components need a new name: taken by a different schema, or pointing
    (directly or not) at one that was renamed."""
    renamed: set[tuple[str, str]] = set()
    for section, items in incoming.items():
        if section == "securitySchemes" or not isinstance(items, dict):
            continue
        for name, value in items.items():
            current = existing.get(section, {}).get(name)
            if current is not None and current != value:
                renamed.add((section, name))
    changed = True
    while changed:
        changed = False
        for section, items in incoming.items():
            if section == "securitySchemes" or not isinstance(items, dict):
                continue
            for name, value in items.items():
                if (section, name) in renamed or name not in existing.get(section, {}):
                    continue
                text = json.dumps(value)
                if any(f'"{_ref(s, n)}"' in text for s, n in renamed):
                    renamed.add((section, name))
                    changed = True
    result: dict[tuple[str, str], str] = {}
    for section, name in renamed:
        taken = set(existing.get(section, {})) | set(incoming.get(section, {}))
        new = f"{prefix}{name}"
        n = 2
        while new in taken:
            new = f"{prefix}{name}{n}"
            n += 1
        result[(section, name)] = new
    return result


def _rewrite_refs(node: Any, renames: dict[tuple[str, str], str]) -> Any:
    if not renames:
        return node
    refs = {_ref(s, n): _ref(s, new) for (s, n), new in renames.items()}

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (refs.get(v, v) if k == "$ref" and isinstance(v, str) else walk(v))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(node)


class PublicOpenApi:
    """The merged document, cached, refreshed in the background."""

    def __init__(
        self,
        app: FastAPI,
        settings: GatewaySettings,
        forwarder: Forwarder,
        *,
        forwarded: Callable[[str], bool],
        public: Callable[[str, str], bool],
    ) -> None:
        self.app = app
        self.settings = settings
        self.forwarder = forwarder
        self.forwarded = forwarded
        self.public = public
        self.documents: dict[str, dict[str, Any]] = {}
        self._base: dict[str, Any] | None = None
        self._merged: dict[str, Any] | None = None

    def schema(self) -> dict[str, Any]:
        """The merged document (what `GET /openapi.json` serves)."""
        if self._merged is None:
            if self._base is None:
                app = self.app
                self._base = get_openapi(
                    title=app.title,
                    version=app.version,
                    openapi_version=app.openapi_version,
                    description=app.description,
                    routes=app.routes,
                )
            self._merged = merge(
                self._base, self.documents, forwarded=self.forwarded, public=self.public
            )
        return self._merged

    async def refresh(self) -> bool:
        """Fetch every service's document; True when all of them answered."""
        names = sorted(self.forwarder.upstreams)
        results = await asyncio.gather(*(self._fetch(name) for name in names))
        changed = False
        for name, doc in zip(names, results, strict=True):
            if doc is not None and doc != self.documents.get(name):
                self.documents[name] = doc
                changed = True
        if changed:
            self._merged = None
        return all(doc is not None for doc in results)

    async def _fetch(self, name: str) -> dict[str, Any] | None:
        upstream = self.forwarder.upstreams[name]
        try:
            response = await self.forwarder.client.get(
                f"{upstream.base_url}/openapi.json",
                timeout=self.settings.openapi_fetch_timeout_seconds,
                headers={"accept": "application/json"},
            )
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.info("no OpenAPI document from %s yet: %s", name, type(exc).__name__)
            return None
        return doc if isinstance(doc, dict) and isinstance(doc.get("paths"), dict) else None

    async def run(self) -> None:
        """Refresh for the life of the service; sooner while a service has not answered."""
        every = self.settings.openapi_refresh_seconds
        while True:
            try:
                complete = await self.refresh()
            except Exception:
                logger.exception("OpenAPI refresh failed")
                complete = False
            await asyncio.sleep(every if complete else min(every, RETRY_MISSING_SECONDS))
