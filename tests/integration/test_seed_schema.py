"""Every seed column exists, with its seed type, in its owner's database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from servicekit.testing import downgrade, migrate

SEED: dict[str, dict[str, dict[str, str]]] = {
    "gateway": {
        "users": {
            "id": "uuid",
            "auth0_sub": "text",
            "stripe_customer_id": "text",
            "role": "text",
            "email": "text",
            "full_name": "text",
            "company_name": "text",
            "phone": "text",
            "billing_address": "jsonb",
            "profile_photo_url": "text",
            "preferences": "jsonb",
            "created_at": "timestamp with time zone",
            "updated_at": "timestamp with time zone",
        },
    },
    "projects": {
        "projects": {
            "id": "uuid",
            "user_id": "uuid",
            "name": "text",
            "created_at": "timestamp with time zone",
        },
        "images": {
            "id": "uuid",
            "project_id": "uuid",
            "original_url": "text",
            "staged_url": "text",
            "room_type": "text",
            "style": "text",
            "seed": "bigint",
            "status": "image_status",
            "error": "text",
            "created_at": "timestamp with time zone",
            "updated_at": "timestamp with time zone",
        },
    },
    "staging": {
        "jobs": {
            "id": "uuid",
            "image_id": "uuid",
            "type": "text",
            "payload_json": "jsonb",
            "status": "text",
            "error": "text",
            "created_at": "timestamp with time zone",
            "started_at": "timestamp with time zone",
            "finished_at": "timestamp with time zone",
        },
    },
    "billing": {
        "plans": {
            "id": "uuid",
            "code": "text",
            "price_id": "text",
            "monthly_limit": "integer",
        },
        "subscriptions": {
            "id": "uuid",
            "user_id": "uuid",
            "stripe_subscription_id": "text",
            "status": "text",
            "price_id": "text",
            "current_period_start": "timestamp with time zone",
            "current_period_end": "timestamp with time zone",
            "cancel_at": "timestamp with time zone",
            "canceled_at": "timestamp with time zone",
            "cancel_at_period_end": "boolean",
            "created_at": "timestamp with time zone",
            "updated_at": "timestamp with time zone",
        },
        "invoices": {
            "id": "uuid",
            "user_id": "uuid",
            "stripe_invoice_id": "text",
            "stripe_subscription_id": "text",
            "status": "text",
            "amount_due": "integer",
            "amount_paid": "integer",
            "currency": "text",
            "invoice_number": "text",
            "created_at": "timestamp with time zone",
            "updated_at": "timestamp with time zone",
        },
        "processed_events": {
            "id": "uuid",
            "stripe_event_id": "text",
            "type": "text",
            "payload": "jsonb",
            "received_at": "timestamp with time zone",
        },
    },
}

UNIQUE: dict[str, list[tuple[str, str]]] = {
    "gateway": [("users", "auth0_sub")],
    "projects": [],
    "staging": [],
    "billing": [
        ("plans", "code"),
        ("processed_events", "stripe_event_id"),
        ("subscriptions", "stripe_subscription_id"),
        ("invoices", "stripe_invoice_id"),
    ],
}


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _columns(conn: asyncpg.Connection) -> dict[tuple[str, str], str]:
    rows = await conn.fetch(
        """
        SELECT table_name, column_name,
               CASE WHEN data_type = 'USER-DEFINED' THEN udt_name ELSE data_type END AS type
        FROM information_schema.columns WHERE table_schema = 'public'
        """
    )
    return {(r["table_name"], r["column_name"]): r["type"] for r in rows}


async def _unique_columns(conn: asyncpg.Connection) -> set[tuple[str, str]]:
    rows = await conn.fetch(
        """
        SELECT tc.table_name, kcu.column_name
        FROM information_schema.table_constraints tc
        JOIN information_schema.key_column_usage kcu
          ON tc.constraint_name = kcu.constraint_name AND tc.table_schema = kcu.table_schema
        WHERE tc.constraint_type IN ('UNIQUE', 'PRIMARY KEY') AND tc.table_schema = 'public'
        """
    )
    return {(r["table_name"], r["column_name"]) for r in rows}


@pytest.mark.integration
class TestSeedSchema:
    """The migrated databases against the seed schema, column by column."""

    @pytest.mark.parametrize("service", sorted(SEED))
    async def test_every_seed_column_has_its_type(
        self, service: str, database_factory: Callable[..., Any]
    ) -> None:
        url = await database_factory(service)
        conn = await asyncpg.connect(_dsn(url))
        try:
            columns = await _columns(conn)
            uniques = await _unique_columns(conn)
            enum_labels = await conn.fetch(
                "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid "
                "WHERE t.typname = 'image_status' ORDER BY e.enumsortorder"
            )
        finally:
            await conn.close()
        for table, expected in SEED[service].items():
            for column, seed_type in expected.items():
                assert (table, column) in columns, f"{service}: {table}.{column} is missing"
                assert columns[(table, column)] == seed_type, (
                    f"{service}: {table}.{column} is {columns[(table, column)]}, "
                    f"the seed says {seed_type}"
                )
        for table, column in UNIQUE[service]:
            assert (table, column) in uniques, f"{service}: {table}.{column} is not unique"
        if service == "projects":
            assert [r["enumlabel"] for r in enum_labels] == [
                "queued",
                "processing",
                "ready",
                "error",
            ]

    async def test_tables_live_only_in_their_owners_database(
        self, database_factory: Callable[..., Any]
    ) -> None:
        for service in SEED:
            url = await database_factory(service)
            conn = await asyncpg.connect(_dsn(url))
            try:
                tables = {
                    r[0]
                    for r in await conn.fetch(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema='public'"
                    )
                }
            finally:
                await conn.close()
            for other, owned in SEED.items():
                if other != service:
                    assert not tables & set(owned), f"{service} holds {other}'s tables"

    @pytest.mark.parametrize("service", sorted(SEED))
    async def test_downgrade_to_base_and_back(
        self, service: str, database_factory: Callable[..., Any]
    ) -> None:
        url = await database_factory(service)
        await asyncio.to_thread(downgrade, service, url)
        conn = await asyncpg.connect(_dsn(url))
        try:
            left = await conn.fetch(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema='public' AND table_name <> 'alembic_version'"
            )
            assert left == []
        finally:
            await conn.close()
        await asyncio.to_thread(migrate, service, url)
