"""Strings, string-keyed inverted lists and Arrow text as plain numpy arrays.

Why: ``np.savez``/``np.load(allow_pickle=False)`` keep only numeric arrays safely; a list of
strings becomes UTF-8 bytes plus offsets (no pickle, no fixed-width padding), and loads back
without a Python loop over rows. Every unpack checks what it can, since a caller may skip checksums.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pyarrow as pa


def pack_strings(name: str, strings: list[str]) -> dict[str, np.ndarray]:
    """Strings as UTF-8 bytes plus character end offsets: no pickle, no fixed-width padding."""
    text = "".join(strings)
    return {f"{name}__text": np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8),
            f"{name}__ends": np.cumsum([len(s) for s in strings], dtype=np.int64)}


def unpack_strings(arrays: Mapping[str, np.ndarray], name: str) -> list[str]:
    """``pack_strings``' strings back, in order."""
    text = arrays[f"{name}__text"].tobytes().decode("utf-8", "surrogatepass")
    ends = arrays[f"{name}__ends"].tolist()
    if ends and ends[-1] != len(text):
        raise ValueError(f"{name} offsets do not match its text")
    return [text[a:b] for a, b in zip([0, *ends[:-1]], ends)]


def pack_rows(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(int64 bounds from 0, int32 rows end to end) of row arrays: group i is ``rows[bounds[i]:bounds[i + 1]]``."""
    bounds = np.zeros(len(groups) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, groups), dtype=np.int64, count=len(groups)), out=bounds[1:])
    rows = np.concatenate(groups).astype(np.int32, copy=False) if groups else np.empty(0, np.int32)
    return bounds, rows


def pack_inverted(name: str, inverted: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """key → int32 rows as (keys, bounds, all rows concatenated), keys in the dict's order."""
    bounds, rows = pack_rows(list(inverted.values()))
    return {**pack_strings(name, list(inverted)), f"{name}__bounds": bounds, f"{name}__rows": rows}


def pack_text(name: str, text: pa.Array) -> dict[str, np.ndarray]:
    """An Arrow string array as its (int64 offsets from 0, UTF-8 bytes): ``unpack_text`` wraps them back."""
    text = text.cast(pa.large_string())
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64, count=len(text) + 1, offset=text.offset * 8)
    data = np.frombuffer(text.buffers()[2] or b"", dtype=np.uint8)[offsets[0]:offsets[-1]]
    return {f"{name}__offsets": offsets - offsets[0], f"{name}__data": data}


def unpack_text(arrays: Mapping[str, np.ndarray], name: str, n: int) -> pa.Array:
    """An Arrow string array over the saved offsets and bytes, without copying or a Python string per row."""
    offsets, data = arrays[f"{name}__offsets"], arrays[f"{name}__data"]
    if offsets.shape != (n + 1,) or offsets.dtype != np.int64:
        raise ValueError(f"{name} offsets {offsets.shape}/{offsets.dtype}, expected ({n + 1},)/int64")
    text = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        text.validate(full=True)  # offsets in range and UTF-8: the checksum may not have been verified
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{name} is not valid text: {exc}") from exc
    return text


def unpack_inverted(arrays: Mapping[str, np.ndarray], name: str, n: int) -> dict[str, np.ndarray]:
    """``pack_inverted``'s dict back, each value a view of one rows array; every row must be below ``n``."""
    keys = unpack_strings(arrays, name)
    rows, bounds = arrays[f"{name}__rows"], arrays[f"{name}__bounds"]
    if len(bounds) != len(keys) + 1 or bounds[-1] != len(rows) or (len(rows) and not 0 <= rows.min() <= rows.max() < n):
        raise ValueError(f"{name} does not fit a table of {n} rows")
    edges = bounds.tolist()
    return {key: rows[a:b] for key, a, b in zip(keys, edges[:-1], edges[1:])}
