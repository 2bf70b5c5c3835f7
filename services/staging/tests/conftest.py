"""Fixtures of the staging tests: fake Replicate and OpenAI servers on 127.0.0.1."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests import with --import-mode=importlib, which puts no test directory on sys.path: make
# the helper module beside this file (fakes) importable.
sys.path.insert(0, str(Path(__file__).parent))

import fakes


@pytest.fixture
def replicate_api() -> Iterator[fakes.FakeReplicate]:
    """A fake Replicate for one test."""
    with fakes.fake_replicate() as fake:
        yield fake


@pytest.fixture
def openai_api() -> Iterator[fakes.FakeOpenAI]:
    """A fake OpenAI for one test."""
    with fakes.fake_openai() as fake:
        yield fake
