"""The guard socket's line protocol and the field escaping shared with the C module.

One request per line, fields separated by TAB, every field escaped so that it
can hold neither TAB, newline, NUL nor anything non-printable::

    AUTH <service> <user> <rhost> [<prev-token>]  ->  ALLOW <token> | DENY <rule> <until>
    SUCC <token>                                  ->  OK
    FAIL <token>                                  ->  OK
    ACCT <service> <user> <rhost>                 ->  ALLOW | DENY <rule> <until>
    JSON <escaped json object>                    ->  one line of JSON (operator requests)

Escaping (identical in pam_hooks/c/pam_slotwarden.c): bytes 0x21..0x7e except
``%`` pass through, every other byte becomes ``%XX``; only the first
``MAX_FIELD_BYTES`` raw bytes are kept and a cut value ends with ``%..``
(which an escaped value can never contain otherwise).

>>> escape(b"bob")
'bob'
>>> escape(b"a b\\n%")
'a%20b%0A%25'
"""

from __future__ import annotations

MAX_FIELD_BYTES = 256
TRUNCATED = "%.."
MAX_LINE = 8192


def escape(raw: bytes, cap: int = MAX_FIELD_BYTES) -> str:
    """Escape and cap one field exactly like the C module does."""
    out = []
    for b in raw[:cap]:
        if 0x21 <= b <= 0x7E and b != 0x25:
            out.append(chr(b))
        else:
            out.append(f"%{b:02X}")
    if len(raw) > cap:
        out.append(TRUNCATED)
    return "".join(out)


def escape_text(text: str) -> str:
    """Escape an operator-typed name (UTF-8) so it matches what the hook records."""
    return escape(text.encode("utf-8", "surrogateescape"))


def name_key(text: str) -> str:
    """The recorded form of an operator-given name: typed (``bob``) or as displayed (``b%FFob``).

    Linux usernames never contain ``%``, so a clean field with a ``%`` is taken as
    already escaped (copied from ``guard list``); anything else is escaped.
    """
    if "%" in text and is_clean_field(text):
        return text
    return escape_text(text)


def unescape(field: str) -> bytes:
    """Reverse :func:`escape` (a ``%..`` marker is dropped)."""
    field = field.removesuffix(TRUNCATED)
    out = bytearray()
    i = 0
    while i < len(field):
        c = field[i]
        if c == "%" and _ishex(field[i + 1 : i + 3]):
            out.append(int(field[i + 1 : i + 3], 16))
            i += 3
        else:
            out.extend(c.encode("utf-8"))
            i += 1
    return bytes(out)


def _ishex(s: str) -> bool:
    return len(s) == 2 and all(ch in "0123456789abcdefABCDEF" for ch in s)


def is_clean_field(field: str) -> bool:
    """True when ``field`` could have been produced by :func:`escape`."""
    if len(field) > 3 * MAX_FIELD_BYTES + len(TRUNCATED):
        return False
    body = field.removesuffix(TRUNCATED)
    i = 0
    while i < len(body):
        c = body[i]
        if c == "%":
            if not _ishex(body[i + 1 : i + 3]):
                return False
            i += 3
            continue
        if not ("\x21" <= c <= "\x7e"):
            return False
        i += 1
    return True
