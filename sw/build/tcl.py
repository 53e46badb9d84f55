"""Tcl scripts built command by command, with every word quoted by one rule.

Vivado reads Tcl, and a path with a space or a description with a bracket would
change the meaning of a script pasted together from strings. Here a script is a list
of commands, a command a list of words, and a word a Python value: :class:`str` and
:class:`int` are literals (quoted as needed), :class:`Var` is a variable
substitution (``$name``) and :class:`Call` a command substitution (``[cmd ...]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Call", "Script", "Var", "quote"]

_BARE = re.compile(r"[A-Za-z0-9_./:+=@%,-]+")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v", "\f": "\\f"}


def quote(word: str) -> str:
    """``word`` as one literal Tcl word.

    Plain words stay bare; words without braces, backslashes or line breaks go in
    braces (no substitution happens inside); anything else has each special character
    escaped, so that a command always fits on one line.
    """
    if _BARE.fullmatch(word):
        return word
    if word and not re.search(r"[{}\\\n\r]", word):
        return "{" + word + "}"
    return re.sub(r"([\s{}\[\]$\"\\;#])", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)),
                  word) or "{}"


@dataclass(frozen=True)
class Var:
    """The value of the Tcl variable ``name``."""

    name: str

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z_]\w*", self.name):
            raise ValueError(f"Tcl variable names are letters, digits and _, not {self.name!r}")


class Call:
    """The result of a Tcl command, ``[word word ...]``."""

    def __init__(self, *words):
        if not words:
            raise ValueError("a command needs at least one word")
        self.words = words

    def __repr__(self):
        return f"Call{self.words!r}"


def _word(word) -> str:
    if isinstance(word, Var):
        return "$" + word.name
    if isinstance(word, Call):
        return "[" + " ".join(_word(w) for w in word.words) + "]"
    if isinstance(word, bool):
        return "true" if word else "false"
    if isinstance(word, int):
        return str(word)
    if isinstance(word, str):
        return quote(word)
    raise TypeError(f"a Tcl word is a str, int, Var or Call, not {word!r}")


class Script:
    """A Tcl script: :meth:`command` appends one command, :attr:`text` is the script."""

    def __init__(self):
        self._lines: list[str] = []

    def comment(self, text: str) -> None:
        """One ``#`` line per line of ``text`` (blank ``text``: an empty line)."""
        if not text:
            self._lines.append("")
        for line in text.splitlines():
            self._lines.append(("# " + line).rstrip())

    def command(self, *words) -> None:
        """Append the command made of ``words``."""
        if not words:
            raise ValueError("a command needs at least one word")
        self._lines.append(" ".join(_word(w) for w in words))

    @property
    def text(self) -> str:
        return "\n".join(self._lines) + "\n"
