"""corosync.conf syntax: text → a tree of sections and ``key: value`` items.

The grammar is corosync's (``exec/coroparse.c`` in 3.1.7), reproduced as behaviour:

* one statement per line; a line is at most 510 characters (longer: ``Line too long``);
  a trailing ``\\r`` is dropped, so CRLF files work;
* blank lines and lines whose first non-blank character is ``#`` are ignored; there are
  **no** trailing comments (``key: a # b`` has the value ``a # b``);
* a line containing ``{`` opens a section named by the text before it (trailing blanks
  and ``:`` removed, so ``totem: {`` is accepted); anything after the ``{`` is an error;
* otherwise a line containing ``:`` is an item: key = text before the first ``:``,
  value = the rest, both stripped of blanks and tabs; quotes are **not** special;
* otherwise a line that is exactly ``}`` closes the current section;
* anything else is an error. Sections nest freely; a section or key may repeat (later
  values win when turned into cmap keys, as in corosync).

Syntax errors raise :class:`ConfigError` with corosync's exact wording and line number
(``parser error: FILE:LINE: Missing closing brace`` …).  Every item and section keeps
its line number so the semantic checks can point at the offending line.
"""

from __future__ import annotations

from attrs import define, field

from .errors import ConfigError

#: fgets() buffer of the real parser: 512 bytes incl. newline and NUL.
MAX_LINE_CHARS = 510
#: ICMAP_KEYNAME_MAXLEN: a dotted key must be shorter than this.
KEYNAME_MAXLEN = 255

_BLANKS = " \t"


@define
class Item:
    """``key: value`` as written, with its 1-based line number."""

    key: str
    value: str
    line: int


@define
class Section:
    """``name { ... }``; ``path`` is the dotted path from the top (``totem.interface``)."""

    name: str
    path: str
    line: int
    end_line: int = 0
    items: list[Item] = field(factory=list)
    sections: list["Section"] = field(factory=list)
    #: items and sections in file order, for consumers where order matters
    children: list["Item | Section"] = field(factory=list)

    def find_items(self, key: str) -> list[Item]:
        return [i for i in self.items if i.key == key]

    def find_sections(self, name: str) -> list["Section"]:
        return [s for s in self.sections if s.name == name]


def _strip_name(text: str) -> str:
    """Strip blanks on both sides and trailing ``:``/``{`` (coroparse's section/key trim)."""
    text = text.lstrip(_BLANKS)
    end = len(text)
    while end > 1 and text[end - 1] in " \t:{":
        end -= 1
    return text[:end]


def parse(text: str, path: str = "<text>") -> Section:
    """Parse corosync.conf ``text``; ``path`` only appears in messages.

    Returns the root section (name ``""``).  Raises :class:`ConfigError` (parser style).
    """
    root = Section(name="", path="", line=0)
    stack: list[Section] = [root]
    line_no = 0

    def fail(message: str, at: int) -> ConfigError:
        return ConfigError(message, path=path, line=at, parser_style=True)

    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # text ending in "\n" has no extra empty line
    for raw in lines:
        line_no += 1
        if len(raw) > MAX_LINE_CHARS:
            raise fail("Line too long", line_no)
        if "\0" in raw:
            raise fail("Line contains a NUL character", line_no)
        line = raw[:-1] if raw.endswith("\r") else raw
        line = line.rstrip(_BLANKS)
        stripped = line.lstrip(_BLANKS)
        if not stripped or stripped.startswith("#"):
            continue
        current = stack[-1]

        brace = line.find("{")
        if brace >= 0:
            name = _strip_name(line[:brace]) if line[:brace].strip(_BLANKS) else ""
            if name == "":
                raise fail("Missing section name before opening bracket '{'", line_no)
            if line[brace + 1 :].strip(_BLANKS):
                raise fail("Extra characters after opening bracket '{'", line_no)
            new_path = f"{current.path}.{name}" if current.path else name
            if len(new_path) >= KEYNAME_MAXLEN:
                raise fail("Start of section makes total cmap path too long", line_no)
            section = Section(name=name, path=new_path, line=line_no)
            current.sections.append(section)
            current.children.append(section)
            stack.append(section)
            continue

        colon = line.find(":")
        if colon >= 0:
            key = _strip_name(line[:colon]) if line[:colon].strip(_BLANKS) else ""
            value = line[colon + 1 :].strip(_BLANKS)
            if key == "":
                raise fail("Missing key name before ':'", line_no)
            full = f"{current.path}.{key}" if current.path else key
            if len(full) >= KEYNAME_MAXLEN:
                raise fail("New key makes total cmap path too long", line_no)
            item = Item(key=key, value=value, line=line_no)
            current.items.append(item)
            current.children.append(item)
            continue

        if "}" in line:
            if stripped != "}":
                raise fail("Extra characters before or after closing bracket '}'", line_no)
            if len(stack) == 1:
                raise fail("Unexpected closing brace", line_no)
            stack.pop().end_line = line_no
            continue

        raise fail("Line is not opening or closing section or key value", line_no)

    if len(stack) > 1:
        raise fail("Missing closing brace", line_no)
    root.end_line = line_no
    return root
