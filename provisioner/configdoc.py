"""The configuration reference and the commented default file, generated from the model.

``docs/configuration.md`` (every key: type, default, what it does) and ``debian/slotwarden.toml``
(every key commented out at its default) are written from :mod:`provisioner.config`, so a key
that is read is documented, and one place says what it does. A unit test keeps both files up to
date; ``python -m provisioner.configdoc`` rewrites them.

>>> "| `pair_deny` | integer 1-1000000 | `5` |" in reference()
True
"""

from __future__ import annotations

import json
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from provisioner import config
from provisioner.names import format_size

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "configuration.md"
DEFAULT_FILE = REPO / "debian" / "slotwarden.toml"


def _info(cls: type[Any], name: str) -> FieldInfo:
    info: FieldInfo = cls.__pydantic_fields__[name]
    return info


def _kind(cls: type[Any], name: str) -> str:
    hints = typing.get_type_hints(cls, include_extras=True)
    for meta in getattr(hints[name], "__metadata__", ()):
        if isinstance(meta, config.Kind):
            return meta.label
    return "table"


def _default(cls: type[Any], name: str) -> Any:
    info = _info(cls, name)
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return MISSING if info.is_required() else info.default


def _toml(value: Any, kind: str) -> str:
    """VALUE as TOML, written the way an operator would (sizes and durations with units)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind.startswith("duration") and isinstance(value, (int, float)):
        for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
            if value % seconds == 0 and (unit != "d" or value > 86400):
                return f'"{int(value // seconds)}{unit}"'
        return repr(value)
    if kind.startswith("size") and isinstance(value, int) and value > 0:
        return f'"{format_size(value)}"'
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(str(v), "") for v in value) + "]"
    # JSON's escapes are TOML's, but for DEL, which TOML wants escaped too.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def _keys(cls: type[Any]) -> list[tuple[str, str, str, str]]:
    """(key, type, default as TOML or "", description) of each scalar key of section CLS."""
    out = []
    own_first = sorted(fields(cls), key=lambda f: f.name in config.LIMIT_KEYS and cls is config.PlanConfig)
    for f in own_first:
        kind = _kind(cls, f.name)
        if kind in ("table", "internal"):
            continue
        default = _default(cls, f.name)
        shown = "(required)" if default is MISSING else "" if default is None else _toml(default, kind)
        out.append((f.name, kind, shown, _info(cls, f.name).description or ""))
    return out


def _subtables(cls: type[Any]) -> list[tuple[str, type[Any]]]:
    return [(f.name, _default(cls, f.name).__class__) for f in fields(cls) if _kind(cls, f.name) == "table"]


def _summary(cls: type[Any]) -> str:
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(doc.split()).replace("``", "`")


def _tables() -> list[tuple[str, type[Any]]]:
    """Every table of the file in the reference's order (sub-tables after their parent)."""
    out: list[tuple[str, type[Any]]] = []
    for name, cls in config.SECTIONS.items():
        out.append((name, cls))
        out += [(f"{name}.{sub}", sub_cls) for sub, sub_cls in _subtables(cls)]
    out.append(("plans.NAME", config.PlanConfig))
    return out


def reference() -> str:
    """``docs/configuration.md``."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated from provisioner/config.py by `python -m provisioner.configdoc`: do not edit -->",
        "",
        "One TOML file: `$SLOTWARDEN_CONFIG` or `/etc/slotwarden/slotwarden.toml` (absent: every default",
        "below). Every key is validated when the file is loaded — by `slotctl`, the API, the Hub, the",
        "exporter and (for `[guard]`, `[retention] attempts`, `state_dir` and `[host] admin_group`) the",
        "guard service — and a bad value is refused in one line naming it (`hub.idle_timeout: expected a",
        "duration like 900, '15m' or '1.5h', got 'soon'`), exit code 2, nothing changed. Unknown keys",
        "and sections are refused the same way.",
        "",
        "- **duration**: seconds as a number (`900`), or a number with a unit `s`, `m`, `h`, `d`",
        "  (`\"90s\"`, `\"15m\"`, `\"1.5h\"`, `\"30d\"`), more than zero and at most 100 years; keys",
        "  counted in whole seconds refuse a fraction of a second.",
        "- **size**: bytes as an integer, or a number with a binary unit `K`, `M`, `G`, `T`",
        "  (`\"500M\"`, `\"5G\"`, `\"5GiB\"`), more than zero and at most 1P.",
        "",
        "## Top level",
        "",
        "| key | type | default | what it does |",
        "|---|---|---|---|",
    ]
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def rows(cls: type[Any]) -> list[str]:
        return [f"| `{k}` | {cell(kind)} | {f'`{d}`' if d and d != '(required)' else d or '(absent)'} | {cell(desc)} |"
                for k, kind, d, desc in _keys(cls)]

    lines += rows(config.TopLevel)
    for name, cls in _tables():
        lines += ["", f"## [{name}]", "", _summary(cls), "", "| key | type | default | what it does |",
                  "|---|---|---|---|", *rows(cls)]
    return "\n".join(lines) + "\n"


DEFAULT_HEADER = """\
# slotwarden's configuration (slotctl, the guard, the API, the Hub, the metrics exporter read it).
# Every key is shown with its default, commented out: uncomment what you change. A bad value is
# refused at load with an error naming the key. What each key does: docs/configuration.md
# (generated from the model with this file: `python -m provisioner.configdoc`).
# After changing [guard] socket, timeout_ms or fail_mode: the PAM module reads those from its
# pam-auth-update profile (/usr/share/pam-configs/slotwarden) — keep the two in step.
"""


def default_file() -> str:
    """``debian/slotwarden.toml``: every key commented out at its default."""
    def commented(keys: list[tuple[str, str, str, str]]) -> list[str]:
        out = []
        for k, _kind, d, desc in keys:
            line = f"# {k} = {d}" if d else f"# {k} ="
            out.append(f"{line:<40} # {desc}" if d else f"{line:<40} # absent by default: {desc}")
        return out

    lines = [DEFAULT_HEADER.rstrip("\n"), ""]
    lines += commented(_keys(config.TopLevel))
    for name, cls in _tables():
        if name == "plans.NAME":
            continue
        lines += ["", f"[{name}]", *commented(_keys(cls))]
    lines += ["", "# One table per plan sold (keys: docs/configuration.md, [plans.NAME]), e.g.:",
              "# [plans.small]", '# quota = "5G"', '# apps = ["transmission"]', "# max_apps = 1",
              '# description = "Starter"', "# cpu_cores = 0.5", '# memory_max = "512M"']
    return "\n".join(lines) + "\n"


def as_toml(cfg: config.Config) -> str:
    """CFG as a TOML document that loads back into CFG (every key written, absent ones left out)."""
    def table(obj: Any) -> list[str]:
        out = []
        for f in fields(obj):
            kind = _kind(type(obj), f.name)
            value = getattr(obj, f.name)
            if kind not in ("table", "internal") and value is not None:
                out.append(f"{f.name} = {_toml(value, kind)}")
        return out

    lines = [f"state_dir = {_toml(cfg.state_dir, '')}"]
    for name in config.SECTIONS:
        section = getattr(cfg, name)
        lines += ["", f"[{name}]", *table(section)]
        for sub, _cls in _subtables(type(section)):
            lines += ["", f"[{name}.{sub}]", *table(getattr(section, sub))]
    for plan_name, plan in cfg.plans.items():
        lines += ["", f"[plans.{plan_name}]", *table(plan)]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Write both files (``--check``: exit 1 if either is out of date)."""
    stale = [p for p, text in ((REFERENCE, reference()), (DEFAULT_FILE, default_file()))
             if not p.exists() or p.read_text() != text]
    if "--check" in argv:
        for p in stale:
            print(f"{p}: out of date (python -m provisioner.configdoc)", file=sys.stderr)
        return 1 if stale else 0
    REFERENCE.write_text(reference())
    DEFAULT_FILE.write_text(default_file())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
