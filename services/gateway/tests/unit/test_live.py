"""Pure parts of live updates, tickets, the write limit and the OpenAPI merge."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from starlette.requests import Request

from contracts.events import Envelope, ImageFailed, ImageReady
from gateway import ratelimit, tickets
from gateway.live import (
    LiveHub,
    TooManyStreams,
    Truth,
    correction_id,
    merge_snapshot,
    sse,
    status_payload,
    truth_payload,
)
from gateway.openapi import merge
from gateway.proxy import is_admin_prefix, is_forwarded, is_public
from gateway.settings import GatewaySettings
from servicekit.errors import Unavailable
from servicekit.testing import TEST_INTERNAL_SECRET


def settings(**overrides: Any) -> GatewaySettings:
    return GatewaySettings(
        environment="development", internal_secret=TEST_INTERNAL_SECRET, **overrides
    )


class TestLiveHub:
    def test_only_the_users_streams_are_woken(self) -> None:
        hub = LiveHub()
        alice, bob = uuid.uuid4(), uuid.uuid4()
        a, b = hub.subscribe(alice), hub.subscribe(bob)
        hub.publish(alice, 7)
        assert a.queue.get_nowait() == 7
        assert b.queue.empty()

    def test_a_stream_that_falls_behind_is_dropped(self) -> None:
        hub = LiveHub(queue_size=2)
        user = uuid.uuid4()
        sub = hub.subscribe(user)
        for n in range(3):
            hub.publish(user, n)
        assert sub.dropped
        assert hub.streams(user) == 0

    def test_streams_per_user_are_capped(self) -> None:
        hub = LiveHub(max_per_user=2)
        user = uuid.uuid4()
        hub.subscribe(user)
        hub.subscribe(user)
        with pytest.raises(TooManyStreams):
            hub.subscribe(user)
        hub.subscribe(uuid.uuid4())

    def test_a_user_is_woken_once_for_rows_recorded_elsewhere(self) -> None:
        hub = LiveHub()
        user = uuid.uuid4()
        sub = hub.subscribe(user)
        hub.publish(user, 5)
        assert not hub.wake_up_to(user, 5)
        assert hub.wake_up_to(user, 8)
        assert not hub.wake_up_to(user, 8)
        assert [sub.queue.get_nowait(), sub.queue.get_nowait()] == [5, 8]
        assert not hub.wake_up_to(uuid.uuid4(), 1)

    def test_close_ends_streams_and_refuses_new_ones(self) -> None:
        hub = LiveHub()
        sub = hub.subscribe(uuid.uuid4())
        hub.close()
        assert sub.dropped
        with pytest.raises(Unavailable):
            hub.subscribe(uuid.uuid4())


def payload(image: uuid.UUID, status: str, attempt: int = 1, at: str = "1") -> dict[str, Any]:
    return {"image_id": str(image), "status": status, "attempt": attempt, "occurred_at": at}


class TestSnapshotMerge:
    def test_projects_truth_replaces_what_the_log_missed(self) -> None:
        stuck, gone, fine = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        log = [payload(stuck, "processing"), payload(gone, "queued"), payload(fine, "queued")]
        truth = Truth(
            {stuck: payload(stuck, "ready", at="3"), fine: payload(fine, "queued", at="2")},
            complete=True,
        )
        merged = merge_snapshot(log, truth, [stuck, gone, fine])
        assert merged.images == [payload(fine, "queued", at="2")]
        assert merged.recent == [payload(stuck, "ready", at="3")]
        assert merged.corrections == [stuck]
        assert merged.gone == [gone]

    def test_a_status_projects_has_not_applied_yet_is_kept(self) -> None:
        image = uuid.uuid4()
        truth = Truth({image: payload(image, "processing")}, complete=True)
        merged = merge_snapshot([payload(image, "ready")], truth, [])
        assert merged.recent == [payload(image, "ready")]
        assert merged.corrections == []

    def test_ready_after_an_error_of_the_same_attempt_wins(self) -> None:
        image = uuid.uuid4()
        truth = Truth({image: payload(image, "ready")}, complete=True)
        merged = merge_snapshot([payload(image, "error")], truth, [])
        assert merged.recent == [payload(image, "ready")]
        assert merged.corrections == [image]

    def test_a_cut_short_answer_keeps_the_log_and_forgets_nothing(self) -> None:
        image = uuid.uuid4()
        merged = merge_snapshot([payload(image, "queued")], Truth({}, complete=False), [image])
        assert merged.images == [payload(image, "queued")]
        assert merged.gone == []

    def test_without_projects_the_log_alone_gives_the_unfinished_images(self) -> None:
        a, b = uuid.uuid4(), uuid.uuid4()
        merged = merge_snapshot([payload(a, "queued"), payload(b, "ready")], None, [a])
        assert merged.images == [payload(a, "queued")]
        assert merged.recent == merged.corrections == merged.gone == []

    def test_projects_items_become_event_payloads(self) -> None:
        image = uuid.uuid4()
        item = {
            "id": str(image),
            "status": "error",
            "attempt": 2,
            "error": "Too dark.",
            "has_staged": False,
            "updated_at": "2026-12-01T00:00:00Z",
        }
        assert truth_payload(item) == {
            "image_id": str(image),
            "status": "error",
            "attempt": 2,
            "staged": False,
            "occurred_at": "2026-12-01T00:00:00Z",
            "error": "Too dark.",
        }

    def test_a_correction_has_one_id_per_state(self) -> None:
        image = uuid.uuid4()
        assert correction_id(payload(image, "ready")) == correction_id(
            payload(image, "ready", at="9")
        )
        assert correction_id(payload(image, "ready")) != correction_id(payload(image, "error"))
        assert correction_id(payload(image, "ready")) != correction_id(payload(image, "ready", 2))


class TestEventFormat:
    def test_ready_and_failed_payloads(self) -> None:
        image, user = uuid.uuid4(), uuid.uuid4()
        ready = Envelope.wrap(
            ImageReady(image_id=image, user_id=user, attempt=2, staged_key="k", backend="local"),
            producer="staging",
        )
        status, payload = status_payload(ready)
        assert status == "ready"
        assert payload == {
            "image_id": str(image),
            "status": "ready",
            "attempt": 2,
            "staged": True,
            "occurred_at": ready.occurred_at.isoformat(),
        }
        failed = Envelope.wrap(
            ImageFailed(image_id=image, user_id=user, reason="Too dark."), producer="staging"
        )
        _, payload = status_payload(failed)
        assert payload["status"] == "error"
        assert payload["error"] == "Too dark."
        assert payload["staged"] is False

    def test_sse_framing(self) -> None:
        text = sse({"a": 1}, event="image.status", event_id=12)
        assert text == 'id: 12\nevent: image.status\ndata: {"a":1}\n\n'


class TestTickets:
    def test_round_trip(self) -> None:
        s = settings()
        user = uuid.uuid4()
        ticket = tickets.verify(s, tickets.mint(s, user))
        assert ticket.user_id == user

    def test_another_gateway_secret_is_refused(self) -> None:
        raw = tickets.mint(settings(), uuid.uuid4())
        other = settings(stream_ticket_secret="another-ticket-secret-0123456789-abcdef")
        with pytest.raises(tickets.InvalidTicket):
            tickets.verify(other, raw)

    def test_ticket_key_is_not_the_internal_secret(self) -> None:
        assert settings().ticket_key != TEST_INTERNAL_SECRET.encode()


def request(method: str, path: str) -> Request:
    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
    return Request(scope)


class TestRateLimitScope:
    @pytest.mark.parametrize(
        ("method", "path", "limited"),
        [
            ("POST", "/v1/projects", True),
            ("DELETE", "/v1/images/x", True),
            ("PATCH", "/v1/admin/users/x", True),
            ("GET", "/v1/projects", False),
            ("POST", "/v1/billing/webhooks/stripe", False),
            ("POST", "/v1/events/ticket", False),
            ("POST", "/v1/dev/token-not-v1", True),
            ("POST", "/healthz", False),
        ],
    )
    def test_which_requests_count(self, method: str, path: str, limited: bool) -> None:
        assert ratelimit.is_limited(settings(), request(method, path)) is limited

    def test_disabled(self) -> None:
        s = settings(rate_limit_enabled=False)
        assert not ratelimit.is_limited(s, request("POST", "/v1/projects"))


class TestRoutes:
    def test_prefixes(self) -> None:
        assert is_admin_prefix("/v1/billing/admin")
        assert is_admin_prefix("/v1/admin/staging")
        assert not is_admin_prefix("/v1/billing")
        assert is_forwarded("/v1/projects/{project_id}/images")
        assert not is_forwarded("/v1/projectsx")
        assert is_public("GET", "/v1/plans")
        assert is_public("POST", "/v1/billing/webhooks/stripe")
        assert not is_public("POST", "/v1/plans")


class TestOpenApiMerge:
    def test_conflicting_components_are_renamed_with_their_references(self) -> None:
        base = {"openapi": "3.1.0", "paths": {}, "components": {"schemas": {"Item": {"a": 1}}}}
        wrap = {"$ref": "#/components/schemas/Wrap"}
        ok = {"200": {"content": {"application/json": {"schema": wrap}}}}
        upstream = {
            "paths": {
                "/v1/projects": {"get": {"operationId": "list", "responses": ok}},
                "/healthz": {"get": {}},
            },
            "components": {
                "schemas": {
                    "Item": {"b": 2},
                    "Wrap": {"properties": {"x": {"$ref": "#/components/schemas/Item"}}},
                }
            },
        }
        merged = merge(base, {"projects": upstream}, forwarded=is_forwarded, public=is_public)
        schemas = merged["components"]["schemas"]
        assert schemas["Item"] == {"a": 1}
        assert schemas["ProjectsItem"] == {"b": 2}
        assert schemas["Wrap"]["properties"]["x"]["$ref"] == "#/components/schemas/ProjectsItem"
        assert set(merged["paths"]) == {"/v1/projects"}
        assert json.dumps(merged).count("ProjectsItem") == 2
