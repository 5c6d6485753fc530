"""The one exception type users need to catch, and the hint its messages give for misspelt names."""

import difflib
from collections.abc import Sequence


class NormGradError(ValueError):
    """Bad input to normgrad: the message says what was wrong and what is valid."""


def did_you_mean(name: str, valid: Sequence[str], n: int = 4) -> str:
    """`` (did you mean 'a' or 'b'?)`` with the up to ``n`` closest valid names, or ``""`` if none is close."""
    close = difflib.get_close_matches(name, list(valid), n=n, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
