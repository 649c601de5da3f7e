#!/usr/bin/python
"""Ansible module slotwarden_slot: ensure slots are present or absent on a slotwarden host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: slotwarden_slot
short_description: Ensure slotwarden slots are present or absent
description:
  - Creates, updates or removes slots through the slotwarden provisioner's Python API (the
    same code C(slotctl) runs), so a slot means the same thing locally and across a fleet.
  - Many slots go in one task (O(slots)), so bulk provisioning costs one round trip per host,
    not one per slot.
  - A generated slot password is never returned in clear. When I(recipient) is given it is
    returned sealed to that public key (only the controller that made the key can open it);
    otherwise it is not returned at all and C(slotctl slot passwd) makes a new one.
  - Runs with the Python of the venv C(site.yml) installed (C(ansible_python_interpreter)).
options:
  slots:
    description: The slots to ensure; each item takes the single-slot options below.
    type: list
    elements: dict
    default: []
  username:
    description: One slot's username (instead of I(slots)).
    type: str
  state:
    description: Whether the slot should exist.
    type: str
    choices: [present, absent]
    default: present
  email:
    description: The customer's email; needed to create.
    type: str
  country:
    description: ISO 3166-1 alpha-2 country code; needed to create.
    type: str
  quota:
    description: Disk quota like C(5G); default from the host's configuration.
    type: str
  payment_ref:
    description: PayPal transaction id or Coinbase payment id.
    type: str
  keep_data:
    description: On removal, keep the home moved aside and owned by root.
    type: bool
    default: false
  apps:
    description: Apps to install in a new slot (needs the apps catalog on the host).
    type: list
    elements: str
    default: []
  strict:
    description: Behave like C(slotctl slot create/remove) (an existing or missing slot is an error).
    type: bool
    default: false
  config:
    description: The slotwarden configuration file on the host (C(SLOTWARDEN_CONFIG)).
    type: path
  recipient:
    description: Base64 X25519 public key to seal generated passwords to.
    type: str
  host_label:
    description: The name to report results under (default the host's name).
    type: str
author: slotwarden developers
"""

EXAMPLES = r"""
- name: One slot
  slotwarden_slot:
    username: alice
    email: alice@example.com
    country: DE
    quota: 5G

- name: Many slots in one round trip
  slotwarden_slot:
    slots:
      - {username: bob, email: bob@example.com, country: FR}
      - {username: carol, state: absent}
"""

RETURN = r"""
results:
  description: One entry per slot, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    username: {description: The slot, type: str}
    action: {description: created, resumed, updated, removed, unchanged or failed, type: str}
    changed: {description: Whether this slot changed (or would, in check mode), type: bool}
    ok: {description: False when this slot failed, type: bool}
    error: {description: Why it failed, type: str}
    password_sealed: {description: The new password sealed to I(recipient), type: str}
    apps_sealed: {description: Credentials of the apps installed, a JSON list sealed to I(recipient), type: str}
failed_count:
  description: How many slots failed.
  returned: always
  type: int
"""

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

SLOT_KEYS = ("username", "state", "email", "country", "quota", "payment_ref", "keep_data", "apps", "strict")


def _record_view(record):
    """The part of a record shown in --diff (no timestamps, which differ run to run)."""
    if not record:
        return {}
    return {k: record.get(k) for k in ("username", "email", "country", "quota_bytes", "payment_ref", "state")}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            slots=dict(type="list", elements="dict", default=[]),
            username=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            email=dict(type="str"),
            country=dict(type="str"),
            quota=dict(type="str"),
            payment_ref=dict(type="str"),
            keep_data=dict(type="bool", default=False),
            apps=dict(type="list", elements="str", default=[]),
            strict=dict(type="bool", default=False),
            config=dict(type="path"),
            recipient=dict(type="str", no_log=False),
            host_label=dict(type="str"),
        ),
        mutually_exclusive=[("slots", "username")],
        supports_check_mode=True,
    )
    p = module.params
    try:
        from provisioner.config import load_config
        from provisioner.context import Context
        from provisioner.errors import SlotError
        from provisioner.executors import SlotChange
        from provisioner.executors.local import apply_changes
        from provisioner.executors.sealed import seal
    except ImportError as exc:
        module.fail_json(msg=f"slotwarden is not installed for {sys.executable} ({exc}); run playbooks/site.yml")

    raw = list(p["slots"] or [])
    if p["username"]:
        raw.append({k: p[k] for k in SLOT_KEYS})
    if p["config"]:
        os.environ["SLOTWARDEN_CONFIG"] = p["config"]
    try:
        changes = [SlotChange.parse({k: v for k, v in item.items() if v is not None}) for item in raw]
        ctx = Context(load_config())
        outcomes = apply_changes(ctx, changes, check=module.check_mode, host=p["host_label"])
    except SlotError as exc:
        module.fail_json(msg=" ".join(str(exc).split()), results=[], failed_count=len(raw))

    results, diffs = [], []
    for o in outcomes:
        item = o.as_dict()
        if o.password is not None and p["recipient"]:
            item["password_sealed"] = seal(p["recipient"], o.password)
        if o.apps and p["recipient"]:
            item["apps_sealed"] = seal(p["recipient"], json.dumps(o.apps))
        item["exit_code"] = o.exit_code
        results.append(item)
        if o.changed:
            before = _record_view(o.before if o.action == "updated" else o.record) if o.action in (
                "removed", "updated") else {}
            after = {} if o.action == "removed" else _record_view(o.record) or {"username": o.username}
            diffs.append({"before": before, "after": after,
                          "before_header": f"slot {o.username}", "after_header": f"slot {o.username}"})
    failed = [r for r in results if not r["ok"]]
    out = dict(changed=any(r["changed"] for r in results), results=results, failed_count=len(failed))
    if module._diff:
        out["diff"] = diffs
    if failed:
        module.fail_json(msg=f"{len(failed)} of {len(results)} slot changes failed: "
                             + "; ".join(f"{r['username']}: {r['error']}" for r in failed[:5]), **out)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
