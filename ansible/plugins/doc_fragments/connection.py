# -*- coding: utf-8 -*-
# Copyright: cleanroom developers
# MIT OR Apache-2.0
"""The options every cleanroom module takes to reach the daemon."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  socket:
    description: The daemon's socket (default C(/run/cleanroom/cleanroomd.sock)).
    type: path
  cleanroomctl:
    description: The client to call (found in C(PATH) unless a path).
    type: path
    default: cleanroomctl
"""
