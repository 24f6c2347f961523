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
      - With C(state=reverted) only, restore knobs someone else changed since cleanroom
        wrote them too (without it they are conflicts, left alone, and the task fails).
    type: bool
    default: false
  best_effort:
    description:
      - With C(state=applied) only, apply what can be applied; without it a failed knob
        undoes the whole apply.
    type: bool
    default: false
  verify:
    description:
      - With C(state=applied) only, change nothing; fail when NAME is not the profile in
        force or when any knob (or pinned task) no longer holds the profile's value,
        naming each.
    type: bool
    default: false
  timeout:
    description:
      - How long to wait for the daemon's answer. An apply that writes the boot loader's
        configuration regenerates it, which the daemon allows five minutes.
    type: str
    default: 360s
extends_documentation_fragment:
  - cleanroom.host.connection
  - ansible.builtin.action_common_attributes
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
  description: >-
    The daemon's answer (C(cleanroomctl --json profile apply|revert|verify)); for a revert
    in check mode, C(profile active)'s.
  returned: when the daemon answered
  type: dict
knobs:
  description: The knobs this task changed (or would change, in check mode).
  returned: when the daemon answered
  type: list
  elements: str
pins:
  description: The pin rules that placed tasks (changed their affinity, policy, nice or I/O priority).
  returned: when the daemon answered
  type: list
  elements: str
reboot_required:
  description: A kernel command-line argument was written to the boot loader's configuration and takes effect at the next boot.
  returned: when the daemon answered
  type: bool
problems:
  description: What failed, drifted, conflicts or was refused, one line each, naming the knob (warnings when the operation still succeeded).
  returned: when the daemon answered
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cleanroom.host.plugins.module_utils.cleanroomctl import (
    CONNECTION_ARGS,
    Ctl,
)

# Statuses that mean a knob's value changed (or, in a dry run, would). A kernel
# command-line argument written to the boot loader's configuration is pending a reboot.
CHANGING = ("applied", "restored", "forced", "planned", "pending_reboot")
# Statuses worth a line: failures (the operation says not ok), and what it left undone.
WORTH_SAYING = ("failed", "conflict", "drifted", "rolled_back", "refused")


def knob_changes(result):
    """The knobs the result changed, and the pin rules that placed tasks."""
    knobs = [i["knob"] for i in result.get("items", []) if i["status"] in CHANGING]
    pins = [p["rule"] for p in result.get("pins", []) if p.get("changed", 0) > 0]
    return knobs, pins


def problems(result, state):
    """One line per knob or pinned task not as asked, naming it."""
    lines = []
    for i in result.get("items", []):
        status = i["status"]
        if status not in WORTH_SAYING:
            continue
        if status == "drifted":
            line = "%s: drifted: holds %s, the profile sets %s" % (i["knob"], i.get("after"), i.get("before"))
        elif status == "conflict":
            line = "%s: conflict: holds %s, changed by someone else since cleanroom wrote %s%s" % (
                i["knob"],
                i.get("after"),
                i.get("before"),
                " (state: reverted with force: true restores the original)" if state == "reverted" else "",
            )
        else:
            line = "%s: %s" % (i["knob"], status.replace("_", " "))
        if i.get("reason") and status != "drifted":
            line += " (%s)" % i["reason"]
        lines.append(line)
    for p in result.get("pins", []):
        for t in p.get("problems", []):
            lines.append(
                "pin %s: task %s (%s) %s %s: wants %s, holds %s"
                % (p["rule"], t["tid"], t["comm"], t["attr"], t["status"], t["expected"], t.get("actual"))
            )
        if p.get("more_problems"):
            lines.append("pin %s: %d more tasks not as asked" % (p["rule"], p["more_problems"]))
    return lines


def diff_of(result, before_profile, after_profile):
    """The profile in force and the knobs that change, as before/after text for --diff."""
    before = ["profile = %s\n" % (before_profile or "none")]
    after = ["profile = %s\n" % (after_profile or "none")]
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
            timeout=dict(type="str", default="360s"),
            **CONNECTION_ARGS
        ),
        required_if=[("state", "applied", ("name",)), ("verify", True, ("name",))],
        supports_check_mode=True,
    )
    p = module.params
    state = p["state"]
    for option, wants in (("force", "reverted"), ("best_effort", "applied"), ("verify", "applied")):
        if p[option] and state != wants:
            module.fail_json(msg="%s is for state: %s (state is %s)" % (option, wants, state))
    ctl = Ctl(module, p["timeout"])
    _, active, _ = ctl.must(["profile", "active"])
    in_force = active.get("profile")

    if p["verify"]:
        if in_force != p["name"]:
            module.fail_json(
                msg="profile %s is not in force (%s is)" % (p["name"], in_force or "none"),
                result=active,
                knobs=[],
            )
        _, result, _ = ctl.must(["profile", "verify"])
        lines = problems(result, state)
        if not result.get("ok") or lines:
            module.fail_json(
                msg="profile %s drifted: %s" % (p["name"], "; ".join(lines)),
                problems=lines,
                result=result,
                knobs=[],
            )
        module.exit_json(changed=False, result=result, knobs=[], pins=[], problems=[], reboot_required=False)

    if state == "applied":
        args = ["profile", "apply", p["name"]]
        if module.check_mode:
            args.append("--dry-run")
        if p["best_effort"]:
            args.append("--best-effort")
        target = p["name"]
    elif module.check_mode:
        # The daemon has no dry run of a revert: a profile in force (or journaled knobs)
        # would be reverted.
        pending = bool(in_force) or active.get("journal_entries", 0) > 0
        module.exit_json(
            changed=pending,
            result=active,
            knobs=[],
            pins=[],
            problems=[],
            reboot_required=False,
            diff={
                "before": "profile = %s\n" % (in_force or "none"),
                "after": "profile = none\n",
            },
        )
    else:
        args = ["profile", "revert"] + (["--force"] if p["force"] else [])
        target = None

    rc, result, err = ctl.must(args)
    knobs, pins = knob_changes(result)
    # A different profile in force is a change even when every value already held.
    changed = bool(knobs or pins) or in_force != target
    lines = problems(result, state)
    ret = dict(
        result=result,
        knobs=knobs,
        pins=pins,
        problems=lines,
        reboot_required=any(i["status"] == "pending_reboot" for i in result.get("items", [])),
        changed=changed,
    )
    if rc != 0 or not result.get("ok", False):
        module.fail_json(
            msg="%s %s: %s"
            % (
                "apply of" if state == "applied" else "revert from",
                result.get("profile") or p["name"] or in_force or "the journal",
                "; ".join(lines) or err or "failed",
            ),
            **ret
        )
    for line in lines:
        module.warn(line)
    module.exit_json(diff=diff_of(result, in_force, target), **ret)


if __name__ == "__main__":
    main()
