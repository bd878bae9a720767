"""Where each key of a TOML document is: `tomllib` parses but keeps no positions, and a
configuration error must name the file, line and column of the key it is about.

`key_positions(text)` scans a document that `tomllib` has already accepted and maps every
key path to the 1-based (line, column) of its key. A path is a tuple of table and key
names, with the index of the element for arrays of tables (`[[notifiers]]`) and arrays:
`("limits", "max_body")`, `("notifiers", 1, "url")`, `("a", "b", "c")` for `a.b.c = 1`.
A table header maps its table's path to the header's position. The scanner knows just
enough TOML to never mistake a string's or an array's content for a key: quoted and
dotted keys, the four kinds of strings (multi-line ones too), arrays and inline tables,
nested, over several lines.
"""

from __future__ import annotations

import bisect
import tomllib

Path = tuple[str | int, ...]
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def key_positions(text: str) -> dict[Path, tuple[int, int]]:
    """(line, column) of every key and table header of a valid TOML document, by path."""
    return _Scanner(text).scan()


def locate(positions: dict[Path, tuple[int, int]], path: Path) -> tuple[int, int]:
    """The position of `path`, else of its longest prefix that has one, else (1, 1)."""
    for end in range(len(path), 0, -1):
        found = positions.get(tuple(path[:end]))
        if found is not None:
            return found
    return (1, 1)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.positions: dict[Path, tuple[int, int]] = {}
        self.tables: dict[Path, int] = {}  # array-of-tables path → index of its last element
        self.line_starts = [0] + [n + 1 for n, c in enumerate(text) if c == "\n"]

    def where(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.line_starts, offset)
        return line, offset - self.line_starts[line - 1] + 1

    def note(self, path: Path, offset: int) -> None:
        self.positions.setdefault(path, self.where(offset))

    def scan(self) -> dict[Path, tuple[int, int]]:
        table: Path = ()
        text = self.text
        while True:
            self.skip(newlines=True)
            if self.i >= len(text):
                return self.positions
            start = self.i
            if text.startswith("[[", self.i):
                self.i += 2
                names = self.key()
                self.skip()
                self.i += 2  # ]]
                parent = self.resolve([name for name, _ in names[:-1]])
                whole = (*parent, names[-1][0])
                index = self.tables.get(whole, -1) + 1
                self.tables[whole] = index
                table = (*whole, index)
                self.note(whole, names[-1][1])
                self.note(table, start)
            elif text[self.i] == "[":
                self.i += 1
                names = self.key()
                self.skip()
                self.i += 1  # ]
                for end in range(1, len(names) + 1):  # `[a.b]` places `a` too, if nothing did
                    self.note(self.resolve([name for name, _ in names[:end]]), names[end - 1][1])
                table = self.resolve([name for name, _ in names])
            else:
                self.pair(table)

    def resolve(self, names: list[str]) -> Path:
        """A header's names as a path: an array of tables on the way stands for its last element."""
        path: Path = ()
        for name in names:
            path = (*path, name)
            if path in self.tables:
                path = (*path, self.tables[path])
        return path

    def pair(self, table: Path) -> None:
        """`key = value`, its key (and every dotted prefix) noted under `table`."""
        path = table
        for name, offset in self.key():
            path = (*path, name)
            self.note(path, offset)
        self.skip()
        self.i += 1  # =
        self.skip()
        self.value(path)

    def key(self) -> list[tuple[str, int]]:
        """A (dotted) key: its names and where each starts."""
        names = []
        while True:
            self.skip()
            start = self.i
            char = self.text[self.i]
            if char in "\"'":
                self.string()
                raw = self.text[start : self.i]
                names.append((tomllib.loads(f"k = {raw}")["k"], start))  # tomllib decodes the escapes
            else:
                while self.i < len(self.text) and self.text[self.i] in _BARE:
                    self.i += 1
                names.append((self.text[start : self.i], start))
            self.skip()
            if self.i < len(self.text) and self.text[self.i] == ".":
                self.i += 1
                continue
            return names

    def value(self, path: Path) -> None:
        text = self.text
        char = text[self.i]
        if char in "\"'":
            self.string()
        elif char == "[":
            self.i += 1
            index = 0
            while True:
                self.skip(newlines=True)
                if text[self.i] == "]":
                    self.i += 1
                    return
                self.note((*path, index), self.i)
                self.value((*path, index))
                index += 1
                self.skip(newlines=True)
                if text[self.i] == ",":
                    self.i += 1
        elif char == "{":
            self.i += 1
            while True:
                self.skip(newlines=True)
                if text[self.i] == "}":
                    self.i += 1
                    return
                self.pair(path)
                self.skip(newlines=True)
                if text[self.i] == ",":
                    self.i += 1
        else:  # a number, a boolean or a date (which may hold a space): up to what ends a value
            while self.i < len(text) and text[self.i] not in ",]}\n#":
                self.i += 1

    def string(self) -> None:
        """Past one string of any of the four kinds."""
        text = self.text
        quote = text[self.i]
        if text.startswith(quote * 3, self.i):
            self.i += 3
            while not text.startswith(quote * 3, self.i):
                self.i += 2 if quote == '"' and text[self.i] == "\\" else 1
            self.i += 3
            while self.i < len(text) and text[self.i] == quote:  # up to two quotes end the content
                self.i += 1
            return
        self.i += 1
        while text[self.i] != quote:
            self.i += 2 if quote == '"' and text[self.i] == "\\" else 1
        self.i += 1

    def skip(self, newlines: bool = False) -> None:
        """Past spaces and tabs (and comments and line ends, with `newlines`); a comment ends a line."""
        text = self.text
        while self.i < len(text):
            char = text[self.i]
            if char in " \t\r" or (newlines and char == "\n"):
                self.i += 1
            elif char == "#":
                end = text.find("\n", self.i)
                self.i = len(text) if end < 0 else end
            else:
                return
