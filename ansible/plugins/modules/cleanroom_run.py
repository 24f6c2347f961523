#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: cleanroom developers
# MIT OR Apache-2.0

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cleanroom_run
short_description: Run a command in a cleanroom clean room, compared with a baseline
version_added: "1.0.0"
description:
  - Runs a command through C(cleanroomctl run) (every process of it ended when it ends,
    its CPU, memory and noise measured), repeated, and returns the result.
  - Fails when any run of the command does not exit 0, and when it is slower than its
    C(baseline) (the verdict of the comparison, a 95 % interval of the ratio of medians
    against a 2 % margin), naming the medians and the interval.
  - C(save_baseline) saves the batch as a baseline only when every run exited 0 and it
    is not slower than C(baseline); C(changed) when it did. A run itself changes nothing
    on the host.
  - Not run in check mode (a measurement cannot be simulated).
options:
  command:
    description: The command and its arguments (no shell; use C([sh, -c, "..."]) for one).
    type: list
    elements: str
    required: true
  repeat:
    description: Measured runs.
    type: int
    default: 1
  warmup:
    description: Runs before the measured ones, not measured.
    type: int
    default: 0
  label:
    description: Label stored with the batch (its history, C(cleanroomctl runs history)).
    type: str
  baseline:
    description: Compare with this baseline; a C(slower) verdict fails the task.
    type: str
  save_baseline:
    description: Save this batch as the baseline of this name, once it passed.
    type: str
  public:
    description: The saved baseline may be compared with by every user (else its owner and admins only).
    type: bool
    default: false
  metric:
    description: What the comparison with C(baseline) uses.
    type: str
    choices: [wall, cpu, instructions, cycles]
    default: wall
  fail_inconclusive:
    description: Fail when the comparison with C(baseline) cannot decide either way too.
    type: bool
    default: false
  exclusive:
    description: Whole cores of its own, every other task kept off them while it runs.
    type: bool
    default: false
  memory:
    description: Memory limit (bytes, or with K, M, G).
    type: str
  run_timeout:
    description: Each run's wall-clock limit (C(30s), C(5m)); every process of it killed then.
    type: str
extends_documentation_fragment:
  - cleanroom.host.connection
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: none
  diff_mode:
    support: none
author:
  - cleanroom developers
"""

EXAMPLES = r"""
- name: Benchmark against main, fail on a regression
  cleanroom.host.cleanroom_run:
    command: [/opt/app/bench, --quick]
    repeat: 20
    warmup: 3
    baseline: main
    label: app-bench

- name: Record a new baseline
  cleanroom.host.cleanroom_run:
    command: [/opt/app/bench, --quick]
    repeat: 20
    save_baseline: main
"""

RETURN = r"""
result:
  description: The run's result (C(cleanroomctl --json run)); C(batch) is its id.
  returned: when it ran
  type: dict
verdict:
  description: C(slower), C(faster), C(equivalent) or C(inconclusive), with a baseline.
  returned: with baseline
  type: str
baseline_saved:
  description: The baseline saved (C(save_baseline)), when it was.
  returned: when it ran
  type: str
median_ms:
  description: Median wall time of the measured runs, milliseconds.
  returned: when it ran
  type: float
output:
  description: The command's output (stdout and stderr) and the client's summary, at most 64 KiB of its end.
  returned: when it ran
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cleanroom.host.plugins.module_utils.cleanroomctl import (
    CONNECTION_ARGS,
    Ctl,
)

OUTPUT_CAP = 64 * 1024


def comparison_words(c):
    """The comparison in one line."""
    return "%s: median %.3f -> %.3f (ratio x%.3f, %d %% interval %.3f .. %.3f, margin %.0f %%) against %s" % (
        c["verdict"],
        c["baseline_median"],
        c["median"],
        c["ratio"],
        round(c["level"] * 100),
        c["low"],
        c["high"],
        c["delta_percent"],
        c["against"],
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            command=dict(type="list", elements="str", required=True),
            repeat=dict(type="int", default=1),
            warmup=dict(type="int", default=0),
            label=dict(type="str"),
            baseline=dict(type="str"),
            save_baseline=dict(type="str"),
            public=dict(type="bool", default=False),
            metric=dict(type="str", default="wall", choices=["wall", "cpu", "instructions", "cycles"]),
            fail_inconclusive=dict(type="bool", default=False),
            exclusive=dict(type="bool", default=False),
            memory=dict(type="str"),
            run_timeout=dict(type="str"),
            **CONNECTION_ARGS
        ),
        supports_check_mode=False,
    )
    p = module.params
    if not p["command"]:
        module.fail_json(msg="command is empty: give the program and its arguments")
    if p["repeat"] < 1 or p["warmup"] < 0:
        module.fail_json(msg="repeat must be at least 1 and warmup at least 0")
    for option, needs in (("fail_inconclusive", "baseline"), ("public", "save_baseline")):
        if p[option] and not p[needs]:
            module.fail_json(msg="%s goes with %s: give %s" % (option, needs, needs))
    if p["metric"] != "wall" and not p["baseline"]:
        module.fail_json(msg="metric is what the comparison with a baseline uses: give baseline")
    # The client's --timeout is each run's limit for `run`.
    ctl = Ctl(module, p["run_timeout"])
    args = ["run", "--repeat", str(p["repeat"]), "--warmup", str(p["warmup"])]
    for flag in ("label", "baseline", "memory"):
        if p[flag]:
            args += ["--" + flag, p[flag]]
    if p["baseline"]:
        args += ["--metric", p["metric"]]
        if p["fail_inconclusive"]:
            args.append("--fail-inconclusive")
    if p["exclusive"]:
        args.append("--exclusive")
    rc, result, err = ctl.must(args + ["--"] + p["command"])
    stats = result.get("stats", {}).get("wall_ms")
    ret = dict(
        result=result,
        output=err[-OUTPUT_CAP:],
        median_ms=stats["median"] if stats else result.get("wall_ms"),
        baseline_saved=None,
        changed=False,
    )
    comparison = result.get("comparison")
    if comparison:
        ret["verdict"] = comparison["verdict"]
    command = " ".join(p["command"])
    # Every measured run's exit code (one run: the result's own).
    codes = result.get("exit_codes") or [result.get("exit_code")]
    failed = [i + 1 for i, code in enumerate(codes) if code != 0]
    if result.get("end_reason") != "exited" or failed:
        why = result.get("end_reason")
        if result.get("error"):
            why += ": " + result["error"]
        module.fail_json(
            msg="%s: %s; runs not exiting 0: %s (of %d), the last exit code %s"
            % (command, why, ", ".join(str(i) for i in failed) or "none", len(codes), result.get("exit_code")),
            **ret
        )
    if comparison and comparison["verdict"] == "slower":
        module.fail_json(msg="regression: " + comparison_words(comparison), **ret)
    if comparison and p["fail_inconclusive"] and comparison["verdict"] == "inconclusive":
        module.fail_json(msg="inconclusive: " + comparison_words(comparison), **ret)
    if rc != 0:
        module.fail_json(msg="cleanroomctl run exited %d: %s" % (rc, err[-2000:]), **ret)
    if p["save_baseline"]:
        save = ["baseline", "save", p["save_baseline"], result["batch"]]
        if p["public"]:
            save.append("--public")
        ctl.must(save)
        ret.update(baseline_saved=p["save_baseline"], changed=True)
    module.exit_json(**ret)


if __name__ == "__main__":
    main()
