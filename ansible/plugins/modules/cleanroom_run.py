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
  - Fails when the command does not exit 0, and when it is slower than its C(baseline)
    (the verdict of the comparison, a 95 % interval of the ratio of medians against a
    2 % margin), naming the medians and the interval.
  - C(changed) when it saved a baseline; a run itself changes nothing on the host.
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
    description: Save this batch as the baseline of this name.
    type: str
  metric:
    description: What the comparison uses.
    type: str
    choices: [wall, cpu, instructions, cycles]
    default: wall
  fail_inconclusive:
    description: Fail when the comparison cannot decide either way too.
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
median_ms:
  description: Median wall time of the measured runs, milliseconds.
  returned: when it ran
  type: float
output:
  description: The command's output (stdout and stderr), at most 64 KiB of its end.
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
    connection = dict(CONNECTION_ARGS)
    connection.pop("timeout")
    module = AnsibleModule(
        argument_spec=dict(
            command=dict(type="list", elements="str", required=True),
            repeat=dict(type="int", default=1),
            warmup=dict(type="int", default=0),
            label=dict(type="str"),
            baseline=dict(type="str"),
            save_baseline=dict(type="str"),
            metric=dict(type="str", default="wall", choices=["wall", "cpu", "instructions", "cycles"]),
            fail_inconclusive=dict(type="bool", default=False),
            exclusive=dict(type="bool", default=False),
            memory=dict(type="str"),
            run_timeout=dict(type="str"),
            **connection
        ),
        supports_check_mode=False,
    )
    p = module.params
    if not p["command"]:
        module.fail_json(msg="command is empty: give the program and its arguments")
    if p["repeat"] < 1 or p["warmup"] < 0:
        module.fail_json(msg="repeat must be at least 1 and warmup at least 0")
    p["timeout"] = p.pop("run_timeout")
    ctl = Ctl(module)
    args = ["run", "--repeat", str(p["repeat"]), "--warmup", str(p["warmup"])]
    for flag in ("label", "baseline", "save_baseline", "memory"):
        if p[flag]:
            args += ["--" + flag.replace("_", "-"), p[flag]]
    if p["baseline"]:
        args += ["--metric", p["metric"]]
        if p["fail_inconclusive"]:
            args.append("--fail-inconclusive")
    if p["exclusive"]:
        args.append("--exclusive")
    rc, result, err = ctl.must(args + ["--"] + p["command"])
    output = err[-OUTPUT_CAP:]
    stats = result.get("stats", {}).get("wall_ms")
    median = stats["median"] if stats else result.get("wall_ms")
    ret = dict(
        result=result,
        output=output,
        median_ms=median,
        changed=bool(p["save_baseline"]) and rc == 0,
    )
    comparison = result.get("comparison")
    if comparison:
        ret["verdict"] = comparison["verdict"]
    last_exit = result.get("exit_code")
    if result.get("end_reason") != "exited" or last_exit != 0:
        module.fail_json(
            msg="%s ended: %s%s"
            % (
                " ".join(p["command"]),
                result.get("end_reason"),
                "" if last_exit is None else " (exit code %s)" % last_exit,
            ),
            **ret
        )
    if comparison and comparison["verdict"] == "slower":
        module.fail_json(msg="regression: " + comparison_words(comparison), **ret)
    if comparison and p["fail_inconclusive"] and comparison["verdict"] == "inconclusive":
        module.fail_json(msg="inconclusive: " + comparison_words(comparison), **ret)
    if rc != 0:
        module.fail_json(msg="cleanroomctl run exited %d: %s" % (rc, err[-2000:]), **ret)
    module.exit_json(**ret)


if __name__ == "__main__":
    main()
