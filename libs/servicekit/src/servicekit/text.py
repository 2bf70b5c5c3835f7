"""Validated text types for request bodies."""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, StringConstraints


def _printable(value: str) -> str:
    """Refuse control characters (NUL included): they break storage, logs and file names."""
    for char in value:
        if unicodedata.category(char) == "Cc" and char not in "\t":
            raise ValueError("must not contain control characters")
    return value


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(_printable),
]
"""A name a person typed: 1 to 100 characters, no control characters."""

FileName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=255),
    AfterValidator(_printable),
]
"""A file name as uploaded: 1 to 255 characters, no control characters."""

ObjectKey = Annotated[
    str, StringConstraints(min_length=1, max_length=1024), AfterValidator(_printable)
]
"""An object-storage key."""
