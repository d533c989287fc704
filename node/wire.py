"""What crosses between coordinator and node: JSON, with numpy arrays as tagged base64 of their bytes.

Never pickle (a pickle runs code when loaded): only dicts, lists, strings, numbers, booleans, None and
arrays of plain numeric dtypes cross, and a message that holds anything else is refused.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import numpy as np

from errors import FedriskError

_DTYPES = {"float32", "float64", "int32", "int64", "bool", "uint8"}


class WireError(FedriskError, ValueError):
    """A message that is not fedrisk's wire format."""


def _tag(value):
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        array = np.asarray(value)  # tobytes() is C order; ascontiguousarray would make a scalar (1,)
        if array.dtype.name not in _DTYPES:
            raise WireError(f"cannot send an array of dtype {array.dtype}")
        return {
            "__array__": base64.b64encode(array.tobytes()).decode(),
            "dtype": array.dtype.name,
            "shape": list(array.shape),
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _tag(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _tag(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tag(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise WireError(f"cannot send a {type(value).__name__}")


def _untag(value):
    if isinstance(value, dict):
        if "__array__" in value:
            if value.get("dtype") not in _DTYPES:
                raise WireError(f"refused an array of dtype {value.get('dtype')!r}")
            raw = base64.b64decode(value["__array__"])
            return np.frombuffer(raw, dtype=value["dtype"]).reshape(value["shape"]).copy()
        return {k: _untag(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untag(v) for v in value]
    return value


def encode(message) -> bytes:
    return json.dumps(_tag(message), allow_nan=True).encode()


def decode(data: bytes):
    try:
        return _untag(json.loads(data))
    except (ValueError, TypeError, KeyError) as error:
        raise WireError(f"not a fedrisk message ({error})") from None
