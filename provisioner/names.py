"""Validators for everything an operator or a purchase hands us: names, emails, countries, sizes.

Each validator returns the normalized value or raises :class:`BadInput` with a one-line message
that quotes the offending value safely (``repr``, capped), so hostile input never reaches a
terminal or a log raw.

>>> parse_size("5G")
5368709120
>>> validate_username("alice")
'alice'
"""

from __future__ import annotations

import re

from pam_hooks import grammar
from pam_hooks.grammar import shown as shown
from provisioner.errors import BadInput

USERNAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,30}")
# Names no slot may take whatever the host's passwd says: they are roles, not customers.
RESERVED_NAMES = frozenset(
    {
        "root", "admin", "administrator", "www-data", "sudo", "wheel", "daemon", "bin", "sys",
        "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "backup", "list", "irc",
        "gnats", "nobody", "nogroup", "systemd-network", "systemd-resolve", "messagebus",
        "sshd", "postmaster", "hostmaster", "webmaster", "abuse", "support", "security",
        "operator", "staff", "users", "adm", "shadow", "utmp", "tty", "disk", "kmem",
        "slotwarden", "slotwarden-admin", "mysql", "postgres", "debian-transmission",
    }
)
EMAIL_RE = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@(?=.{1,253}$)"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_UNITS = grammar.SIZE_UNITS

# ISO 3166-1 alpha-2, officially assigned codes.
COUNTRIES = frozenset(
    """AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR
    BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC
    EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK
    HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB
    LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ
    NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU
    RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN
    TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW""".split()
)


def validate_username(name: object, extra_reserved: frozenset[str] = frozenset()) -> str:
    """Return NAME if it may name a slot; raise BadInput otherwise.

    Rule: ``[a-z][a-z0-9_-]{0,30}``, no trailing ``-``, not a reserved or catalog name. Whether
    the name is free on *this host* (existing accounts, UIDs below UID_MIN) is a fact checked by
    the planner, not here.
    """
    if not isinstance(name, str) or name == "":
        raise BadInput("username is empty")
    if not USERNAME_RE.fullmatch(name) or name.endswith("-"):
        raise BadInput(
            f"username {shown(name)} is invalid: use 1-31 of a-z 0-9 _ -, starting with a letter, "
            "not ending with -"
        )
    if name in RESERVED_NAMES or name in extra_reserved:
        raise BadInput(f"username {name!r} is reserved")
    return name


def validate_email(email: object) -> str:
    """Return the email (domain lowercased) if it is a plausible single address."""
    if not isinstance(email, str) or not email:
        raise BadInput("email is empty")
    if len(email) > 254 or not EMAIL_RE.fullmatch(email) or ".." in email:
        raise BadInput(f"email {shown(email)} is invalid")
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}"


def validate_country(country: object) -> str:
    """Return the ISO 3166-1 alpha-2 code, uppercased."""
    if not isinstance(country, str) or not country:
        raise BadInput("country is empty")
    code = country.upper()
    if not code.isascii() or code not in COUNTRIES:
        raise BadInput(f"country {shown(country)} is not an ISO 3166-1 alpha-2 code")
    return code


def parse_size(text: object) -> int:
    """Parse a size such as ``500M``, ``5G``, ``5GiB`` or ``1048576`` into bytes (binary units).

    The grammar is :func:`pam_hooks.grammar.parse_size`, the one the configuration uses.
    """
    try:
        return grammar.parse_size(text)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def format_size(n: int) -> str:
    """Render bytes with the largest exact binary unit (``5368709120`` -> ``5G``)."""
    for unit in ("T", "G", "M", "K"):
        if n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def validate_payment_ref(ref: object) -> str:
    """A PayPal transaction id / Coinbase payment id or hash: printable ASCII, no spaces, <=128."""
    if not isinstance(ref, str) or not ref:
        raise BadInput("payment reference is empty")
    if len(ref) > 128 or not re.fullmatch(r"[A-Za-z0-9:._/+=-]+", ref):
        raise BadInput(f"payment reference {shown(ref)} is invalid")
    return ref
