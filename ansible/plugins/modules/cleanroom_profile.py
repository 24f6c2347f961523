#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: cleanroom developers
# MIT OR Apache-2.0

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cleanroom_profile
short_description: Apply, revert or verify a cleanroom tuning profile
version_added: "1.0.0"
description:
  - Applies a cleanroom tuning profile through C(cleanroomctl) (originals journaled by
    the daemon before any write, so a revert puts them back), reverts the one in force,
    or verifies that the host still holds what the profile sets.
  - C(changed) only when a knob (or a pinned task) changed; a second apply of the same
    profile is C(changed=false).
  - In check mode an apply is the daemon's dry run, returned as a diff of the knobs that
    would change; a revert reports whether a profile is in force.
  - Needs the daemon's admin role (root, or a member of group C(cleanroom-admin)) to
    apply or revert.
options:
  name:
    description:
      - The profile (C(cleanroomctl profile list) lists them). Required to apply or
        verify.
    type: str
  state:
    description:
      - C(applied) makes NAME the profile in force; C(reverted) puts back every original
        value cleanroom changed.
    type: str
    choices: [applied, reverted]
    default: applied
  force:
    description:
      - With C(state=reverted), restore knobs someone else changed since cleanroom wrote
        them too (without it they are conflicts, left alone, and the task fails).
    type: bool
    default: false
  best_effort:
    description:
      - Apply what can be applied; without it a failed knob undoes the whole apply.
    type: bool
    default: false
  verify:
    description:
      - Change nothing; fail when NAME is not the profile in force or when any knob (or
        pinned task) no longer holds the profile's value, naming each.
    type: bool
    default: false
  timeout:
    description: How long to wait for the daemon's answer (C(10s), C(500ms)).
    type: str
extends_documentation_fragment:
  - cleanroom.host.connection
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author:
  - cleanroom developers
"""

EXAMPLES = r"""
- name: Tune for throughput
  cleanroom.host.cleanroom_profile:
    name: throughput-performance

- name: Fail when a tuned host drifted
  cleanroom.host.cleanroom_profile:
    name: throughput-performance
    verify: true

- name: Put the host back, whoever changed what since
  cleanroom.host.cleanroom_profile:
    state: reverted
    force: true
"""

RETURN = r"""
result:
  description: The daemon's answer (C(cleanroomctl --json profile apply|revert|verify)).
  returned: always
  type: dict
knobs:
  description: The knobs this task changed (or would change, in check mode).
  returned: always
  type: list
  elements: str
problems:
  description: What failed, drifted or conflicts, one line each, naming the knob.
  returned: on failure
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cleanroom.host.plugins.module_utils.cleanroomctl import (
    CONNECTION_ARGS,
    Ctl,
)

# Statuses that mean a knob's value changed (or, in a dry run, would).
CHANGING = ("applied", "restored", "forced", "planned")
# Statuses that mean the operation did not do what was asked.
BAD = ("failed", "conflict", "drifted", "rolled_back", "refused")


def knob_changes(result):
    """The knobs the result changed, and the pin rules that placed tasks."""
    knobs = [i["knob"] for i in result.get("items", []) if i["status"] in CHANGING]
    pins = [p["rule"] for p in result.get("pins", []) if p.get("changed", 0) > 0]
    return knobs, pins


def problems(result):
    """One line per knob or pinned task that went wrong, naming it."""
    lines = []
    for i in result.get("items", []):
        if i["status"] not in BAD:
            continue
        if i["status"] == "drifted":
            line = "%s: drifted: holds %s, the profile sets %s" % (i["knob"], i.get("after"), i.get("before"))
        elif i["status"] == "conflict":
            line = "%s: conflict: holds %s, changed by someone else since cleanroom wrote %s (force: true restores the original)" % (
                i["knob"],
                i.get("after"),
                i.get("before"),
            )
        else:
            line = "%s: %s" % (i["knob"], i["status"].replace("_", " "))
            if i.get("reason"):
                line += " (%s)" % i["reason"]
        lines.append(line)
    for p in result.get("pins", []):
        for t in p.get("problems", []):
            lines.append(
                "pin %s: task %s (%s) %s %s: wants %s, holds %s"
                % (p["rule"], t["tid"], t["comm"], t["attr"], t["status"], t["expected"], t.get("actual"))
            )
    return lines


def diff_of(result):
    """The knobs that change, as before/after text for --diff."""
    before, after = [], []
    for i in result.get("items", []):
        if i["status"] in CHANGING:
            before.append("%s = %s\n" % (i["knob"], i.get("before")))
            after.append("%s = %s\n" % (i["knob"], i.get("after")))
    return {"before": "".join(before), "after": "".join(after)}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            state=dict(type="str", default="applied", choices=["applied", "reverted"]),
            force=dict(type="bool", default=False),
            best_effort=dict(type="bool", default=False),
            verify=dict(type="bool", default=False),
            **CONNECTION_ARGS
        ),
        required_if=[("state", "applied", ("name",)), ("verify", True, ("name",))],
        supports_check_mode=True,
    )
    p = module.params
    ctl = Ctl(module)

    if p["verify"]:
        _, active, _ = ctl.must(["profile", "active"])
        if active.get("profile") != p["name"]:
            module.fail_json(
                msg="profile %s is not in force (%s is)" % (p["name"], active.get("profile") or "none"),
                result=active,
                knobs=[],
            )
        _, result, _ = ctl.must(["profile", "verify"])
        lines = problems(result)
        if not result.get("ok") or lines:
            module.fail_json(
                msg="profile %s drifted: %s" % (p["name"], "; ".join(lines)),
                problems=lines,
                result=result,
                knobs=[],
            )
        module.exit_json(changed=False, result=result, knobs=[])

    if p["state"] == "applied":
        args = ["profile", "apply", p["name"]]
        if module.check_mode:
            args.append("--dry-run")
        if p["best_effort"]:
            args.append("--best-effort")
    elif module.check_mode:
        # The daemon has no dry run of a revert: a profile in force (or journaled knobs)
        # would be reverted.
        _, active, _ = ctl.must(["profile", "active"])
        pending = bool(active.get("profile")) or active.get("journal_entries", 0) > 0
        module.exit_json(
            changed=pending,
            result=active,
            knobs=[],
            diff={
                "before": "profile = %s\n" % (active.get("profile") or "none"),
                "after": "profile = none\n",
            },
        )
    else:
        args = ["profile", "revert"] + (["--force"] if p["force"] else [])

    rc, result, err = ctl.must(args)
    knobs, pins = knob_changes(result)
    changed = bool(knobs or pins)
    lines = problems(result)
    if rc != 0 or not result.get("ok", False) or lines:
        module.fail_json(
            msg="%s %s: %s"
            % (
                "apply of" if p["state"] == "applied" else "revert from",
                result.get("profile") or p["name"] or "the journal",
                "; ".join(lines) or err or "failed",
            ),
            problems=lines,
            result=result,
            knobs=knobs,
            changed=changed,
        )
    module.exit_json(changed=changed, result=result, knobs=knobs, pins=pins, diff=diff_of(result))


if __name__ == "__main__":
    main()
