"""Staging backends: ways of turning an empty-room photo into a furnished one."""
