"""The suite's own set-up: a module whose fixture builds a home keeps its tests on one worker."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.xdist_group("grouping-probe")


def test_a_marked_module_is_one_work_unit_for_xdist(request: pytest.FixtureRequest):
    """`xdist_group` works only while pytest-xdist can rename a test's id; with pytest 9.2 it
    could not, nothing said so, and every module fixture was built on both workers."""
    if "PYTEST_XDIST_WORKER" in os.environ:  # `make test` runs under xdist
        assert request.node.nodeid.endswith("@grouping-probe"), request.node.nodeid
