"""The test tiers of conftest.py: what `make test-fast` (`-m unit`) selects and what it refuses."""
from __future__ import annotations

import subprocess
import sys

import pytest


def test_a_test_without_a_tier_is_a_unit_test(request):
    assert request.node.get_closest_marker("unit")


@pytest.mark.slow
def test_a_slow_test_is_not_a_unit_test(request):
    assert not request.node.get_closest_marker("unit")


def test_a_unit_test_that_starts_a_program_fails_naming_the_tier():
    with pytest.raises(AssertionError, match="mark it @pytest.mark.slow"):
        subprocess.run([sys.executable, "-c", "pass"])


@pytest.mark.slow
def test_a_slow_test_may_start_programs():
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0
