"""Issue 10 #8: every duration option takes a finite number of seconds. click's FloatRange
let `nan` and `inf` through (tracebacks deep in sleep and socket code, or a lock wait
that never ends); one option type (`commands.common.Seconds`) now guards all of them."""

from __future__ import annotations

import pytest
from conftest import Xtask

DURATIONS = [
    ("download-model", "--timeout"),
    ("download-model", "--stall-timeout"),
    ("download-model", "--lock-timeout"),
    ("preflight", "--probe-timeout"),
    ("gpu-preflight", "--probe-timeout"),
]


@pytest.mark.parametrize(("command", "option"), DURATIONS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "-1", "soon"])
def test_a_duration_that_is_not_a_finite_number_in_range_is_a_usage_error(
    xtask: Xtask, command: str, option: str, value: str
) -> None:
    run = xtask.run(command, option, value)
    assert run.code == 2, run.stderr
    assert f"Invalid value for '{option}'" in run.stderr
    assert "Traceback" not in run.stderr


def test_the_limits_are_stated_and_a_finite_value_is_accepted(xtask: Xtask) -> None:
    zero = xtask.run("download-model", "--timeout", "0", "--dry-run")
    assert zero.code == 2 and "0 < x" in zero.stderr
    run = xtask.run("gpu-preflight", "--probe-timeout", "2.5")
    assert run.code == 0, run.stderr
