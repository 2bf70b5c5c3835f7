"""Contracts shared by Real Staging services: events, topology, enums, internal identity."""
