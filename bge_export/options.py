"""Parsers of command-line option values shared by the build, the benchmark and the family variants."""
from __future__ import annotations

from bge_export.errors import InputError


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
