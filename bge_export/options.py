"""Command-line options that families and targets declare (the CLI is generated from them), and the parsers of
option values shared by the build, the benchmark and the family variants."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bge_export.errors import InputError, InternalError


def parse_int_list(text, what: str, *, minimum: int = 1, example: str = "128,512",
                   error: type[Exception] = InputError) -> tuple[int, ...] | None:
    """'128, 512' / [128, 512] / 128 -> (128, 512); None stays None. Anything else (no values, a non-integer, a
    value below ``minimum``) raises ``error`` naming the option, what it needs and an example."""
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        values = (text,)
    elif isinstance(text, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in text):
        values = tuple(text)
    else:
        try:
            values = tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
        except ValueError:
            values = ()
    if not values or any(v < minimum for v in values):
        kind = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        raise error(f"{what} must be {kind} separated by commas (e.g. {example}), got {text!r}")
    return values


@dataclass(frozen=True)
class Option:
    """A command-line option that a family (an export-time variant) or a target (a builder option) declares; the
    CLI builds its flags, choices and help from these. ``dest`` is the keyword the family constructor or the
    target's builder takes; ``group`` the --help section it is listed in (None: the main options); ``convert``
    turns the flag's text into the value (e.g. an integer list), raising a typed error naming the flag."""

    dest: str
    flag: str
    help: str
    metavar: str | None = None
    choices: tuple | None = None
    type: Callable | None = None
    group: str | None = None
    convert: Callable | None = None

    def add_to(self, parser) -> None:
        kwargs = {"dest": self.dest, "default": None, "help": self.help}
        for name in ("metavar", "choices", "type"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        parser.add_argument(self.flag, **kwargs)

    def value(self, args):
        raw = getattr(args, self.dest)
        return self.convert(raw) if self.convert is not None and raw is not None else raw


def unique_options(groups) -> list[Option]:
    """The options of several declarers (families, targets) once each, in first-declared order; one ``dest`` with
    two different declarations is a bug."""
    seen: dict[str, Option] = {}
    for options in groups:
        for opt in options:
            if opt.dest in seen and seen[opt.dest] != opt:
                raise InternalError(f"option {opt.dest} is declared twice, differently ({seen[opt.dest].flag} and "
                                    f"{opt.flag})")
            seen.setdefault(opt.dest, opt)
    return list(seen.values())
