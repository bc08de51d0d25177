"""Reading a value at a path in a resource's nested attributes (JSON objects)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def dig(value: Any, path: Sequence[str], missing: Any = None) -> Any:
    """The value at `path` (keys, outermost first), or `missing` where the path stops: a key that
    is not there, or a value on the way that is not an object. A present `null` is returned as None."""
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return missing
        value = value[key]
    return value
