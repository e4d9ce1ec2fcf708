"""wait_until: the one polling loop."""

import pytest

from services.errors import DmguardError
from services.poll import WaitTimeout, wait_until


def test_returns_the_first_value_that_is_done():
    values = iter([0, None, 3, 4])
    assert wait_until(lambda: next(values), 5, interval_s=0, what="a value") == 3
    counts = iter(range(10))
    assert wait_until(lambda: next(counts), 5, interval_s=0, done=lambda n: n >= 2, what="2") == 2


def test_a_timeout_names_what_and_keeps_the_last_value():
    with pytest.raises(WaitTimeout, match="gave up waiting for the moon after 0.05 s") as caught:
        wait_until(lambda: "not yet", 0.05, interval_s=0.01, done=lambda v: False, what="the moon")
    assert caught.value.last == "not yet"
    assert isinstance(caught.value, DmguardError) and isinstance(caught.value, TimeoutError)


def test_the_probe_runs_at_least_once_and_its_errors_end_the_wait():
    calls = []
    assert wait_until(lambda: calls.append(1) or True, 0, what="once") is True
    assert calls == [1]

    def gone():
        raise RuntimeError("gone")

    with pytest.raises(RuntimeError, match="gone"):
        wait_until(gone, 5, what="never")
