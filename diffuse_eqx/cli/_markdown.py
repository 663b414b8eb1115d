"""Markdown for the command's reports: tables rendered from rows of data, documents from sections."""

import dataclasses
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal


#: The width that paragraphs and list items are wrapped to.
WIDTH = 100


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a [`table`][]: its header, where a row keeps its value, how the value is written.

    **Arguments:**

    - `header`: the column's heading.
    - `value`: the key of the value in a row (a mapping), or a function of the row.
    - `fmt`: a format string (`"{:.4f}"`) or a function from the value to its text.
    - `align`: `"left"` or `"right"`.
    """

    header: str
    value: str | Callable[[Any], Any]
    fmt: str | Callable[[Any], str] = "{}"
    align: Literal["left", "right"] = "right"

    def cell(self, row: Any) -> str:
        value = row[self.value] if isinstance(self.value, str) else self.value(row)
        return self.fmt(value) if callable(self.fmt) else self.fmt.format(value)


def table(rows: Iterable[Any], columns: Sequence[Column]) -> str:
    """A markdown table with one line per row and one cell per column."""
    lines = [
        [c.header for c in columns],
        ["---:" if c.align == "right" else ":---" for c in columns],
        *([c.cell(row) for c in columns] for row in rows),
    ]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def key_value_table(items: Mapping[str, str], header: tuple[str, str] = ("Quantity", "Value")) -> str:
    """A two-column table: a name (left) and its value (right) per line."""
    return table(
        items.items(),
        [Column(header[0], lambda kv: kv[0], align="left"), Column(header[1], lambda kv: kv[1])],
    )


# Spaces that must not become line breaks: inside `$math$` and `code` spans, and before a word that
# would start a list item, a heading or a quote at the beginning of a line ("- x", "+ y", "1. z", "# w").
_SPANS = re.compile(r"\$[^$]+\$|`[^`]+`")
_LINE_STARTS = re.compile(r" (?=(?:[-+*>]|#+|\d+[.)])(?: |$))")
_GLUE = "\x00"


def _wrap(text: str, first: str = "", rest: str = "") -> str:
    glued = _SPANS.sub(lambda m: m.group(0).replace(" ", _GLUE), text)
    glued = _LINE_STARTS.sub(_GLUE, glued)
    lines = textwrap.wrap(
        glued, WIDTH, initial_indent=first, subsequent_indent=rest, break_long_words=False,
        break_on_hyphens=False,
    )  # fmt: skip
    return "\n".join(lines).replace(_GLUE, " ")


def paragraph(text: str) -> str:
    """A paragraph, wrapped at `WIDTH` columns without breaking a math or code span."""
    return _wrap(" ".join(text.split()))


def bullets(items: Iterable[str]) -> str:
    """A bulleted list, each item wrapped like a paragraph."""
    return "\n".join(_wrap(" ".join(item.split()), "- ", "  ") for item in items)


def image(alt: str, file: str) -> str:
    return f"![{alt}]({file})"


@dataclasses.dataclass(frozen=True)
class Section:
    """A heading and its blocks (paragraphs, lists, tables, images: markdown strings)."""

    title: str
    blocks: Sequence[str]
    level: int = 2

    def to_markdown(self) -> str:
        return "\n\n".join(["#" * self.level + " " + self.title, *self.blocks])


def document(title: str, intro: Sequence[str], sections: Sequence[Section]) -> str:
    """A whole markdown document: its title, the blocks before the first section, the sections."""
    blocks = [Section(title, intro, level=1), *sections]
    return "\n\n".join(block.to_markdown() for block in blocks) + "\n"
