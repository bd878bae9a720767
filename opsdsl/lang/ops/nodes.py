"""The lean run's tree (driver.py's `parse_lean`, literals.py): Lark's shapes, lighter objects."""

from __future__ import annotations

from typing import NamedTuple


class Leaf(str):
    """A token: its text, terminal name and offsets in the source (no line or column: the
    data builder derives them from the offsets)."""

    __slots__ = ("end_pos", "start_pos", "type")


class Node(NamedTuple):
    """A rule's node: what Lark's Tree holds (`data`, `children`), in a tuple."""

    data: str
    children: list
