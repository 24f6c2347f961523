# -*- coding: utf-8 -*-
# Copyright: cleanroom developers
# MIT OR Apache-2.0
"""Calls cleanroomctl with --json and reads its answer: shared by the cleanroom modules."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

# The options every module takes to reach the daemon.
CONNECTION_ARGS = dict(
    socket=dict(type="path"),
    cleanroomctl=dict(type="path", default="cleanroomctl"),
)


class Ctl(object):
    """cleanroomctl as the module's parameters say to call it; TIMEOUT its --timeout."""

    def __init__(self, module, timeout=None):
        self.module = module
        params = module.params
        binary = params["cleanroomctl"]
        found = module.get_bin_path(binary) if "/" not in binary else binary
        if not found:
            module.fail_json(
                msg="cleanroomctl not found (%s): install the cleanroom package or set the "
                "cleanroomctl option to its path" % binary
            )
        self.argv = [found, "--json"]
        if params.get("socket"):
            self.argv += ["--socket", params["socket"]]
        if timeout:
            self.argv += ["--timeout", timeout]

    def call(self, args):
        """Runs cleanroomctl ARGS: (exit code, the JSON answer or None, stderr)."""
        rc, out, err = self.module.run_command(self.argv + list(args))
        answer = None
        if out.strip():
            try:
                answer = json.loads(out)
            except ValueError:
                answer = None
        return rc, answer, err.strip()

    def must(self, args):
        """Runs cleanroomctl ARGS and returns its answer; fails the task on an error."""
        rc, answer, err = self.call(args)
        if answer is None:
            self.module.fail_json(
                msg="cleanroomctl %s failed (exit %d): %s"
                % (" ".join(args), rc, err or "no answer"),
                rc=rc,
            )
        return rc, answer, err
