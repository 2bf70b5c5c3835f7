"""Fixtures shared by every test tier (real PostgreSQL, RabbitMQ and S3)."""

pytest_plugins = ("servicekit.testing",)
