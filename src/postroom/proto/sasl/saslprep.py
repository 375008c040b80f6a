"""SASLprep (RFC 4013), on the stdlib's RFC 3454 tables (``stringprep``, Unicode 3.2)."""

from __future__ import annotations

import re
import stringprep
import unicodedata
from typing import Final


class SaslPrepError(ValueError):
    """The string is not allowed by SASLprep (RFC 4013): prohibited or bidi-invalid text."""


_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")

# RFC 4013 section 2.3: prohibited output.
_PROHIBITED: Final = (
    stringprep.in_table_c12,  # non-ASCII space
    stringprep.in_table_c21,  # ASCII control
    stringprep.in_table_c22,  # non-ASCII control
    stringprep.in_table_c3,  # private use
    stringprep.in_table_c4,  # non-character code points
    stringprep.in_table_c5,  # surrogate codes
    stringprep.in_table_c6,  # inappropriate for plain text
    stringprep.in_table_c7,  # inappropriate for canonical representation
    stringprep.in_table_c8,  # change display properties / deprecated
    stringprep.in_table_c9,  # tagging characters
)


def saslprep(text: str, *, allow_unassigned: bool = True) -> str:
    """Prepare a username or password with SASLprep (RFC 4013).

    ``allow_unassigned`` is True for "queries" (what a client sends at login) and False for
    "stored strings" (a password being set), RFC 3454 section 7. Raises
    :class:`SaslPrepError`. Tables and normalization are Unicode 3.2 as the RFC requires,
    so the result does not change with the Python version.
    """
    if _PRINTABLE_ASCII.fullmatch(text):
        return text  # printable ASCII maps to itself and has nothing prohibited
    if not allow_unassigned:
        for ch in text:
            if stringprep.in_table_a1(ch):  # RFC 3454 section 7
                raise SaslPrepError(f"unassigned code point U+{ord(ch):04X}")
    # RFC 4013 section 2.1: non-ASCII spaces map to SPACE, "commonly mapped to nothing" go.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    # RFC 4013 section 2.2: Unicode normalization form KC.
    result = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for ch in result:
        for table in _PROHIBITED:
            if table(ch):
                raise SaslPrepError(f"prohibited character U+{ord(ch):04X}")
    # RFC 4013 section 2.4 / RFC 3454 section 6: bidirectional text rules.
    if any(stringprep.in_table_d1(ch) for ch in result):
        if any(stringprep.in_table_d2(ch) for ch in result):
            raise SaslPrepError("mixed right-to-left and left-to-right text")
        if not (stringprep.in_table_d1(result[0]) and stringprep.in_table_d1(result[-1])):
            raise SaslPrepError("right-to-left text must start and end with RTL characters")
    return result
