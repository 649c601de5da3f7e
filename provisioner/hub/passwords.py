"""The strength rule for a slot password a tenant chooses on the Hub.

At least 12 characters; not containing the username; not one repeated character; and at least
three of lower case, upper case, digits and others — unless it has 20 characters or more (a
passphrase). No control characters (they would not survive every login prompt).

>>> password_problem("correct horse battery staple", "alice") is None
True
>>> password_problem("Alice-2026-xy", "alice")
'it contains the username'
"""

from __future__ import annotations

MIN_LENGTH = 12
PASSPHRASE_LENGTH = 20
MAX_LENGTH = 256


def password_problem(password: str, username: str) -> str | None:
    """Why PASSWORD is refused for USERNAME, or None when it passes."""
    if len(password) < MIN_LENGTH:
        return f"it is shorter than {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} characters"
    if any(not c.isprintable() for c in password):
        return "it contains control characters"
    if username and username.lower() in password.lower():
        return "it contains the username"
    if len(set(password)) < 4:
        return "it repeats too few characters"
    classes = sum([any(c.islower() for c in password), any(c.isupper() for c in password),
                   any(c.isdigit() for c in password), any(not c.isalnum() for c in password)])
    if classes < 3 and len(password) < PASSPHRASE_LENGTH:
        return "use three of: lower case, upper case, digits, other characters (or 20+ characters)"
    return None
