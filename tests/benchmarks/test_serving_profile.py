"""serving_profile on a CPU: its arguments and the profiles it takes per backend (the servers run on the host)."""
import pytest

import serving_profile as sp


def test_modes_without_and_with_the_stack_profile():
    assert sp.modes(2) == [("nostack0", False), ("nostack1", False), ("stack", True)]
    assert sp.modes(1, stack=False) == [("nostack0", False)]


@pytest.mark.parametrize("argv", [["--steps", "2"], ["--requests", "0"], ["--input-len", "0"]])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        sp.parse_args(argv)


def test_defaults_profile_the_1b_at_16k_beside_fa3():
    a = sp.parse_args([])
    assert a.backends == ["kvprefetch", "fa3"] and a.models == ["llama-3.2-1b"] and a.input_len == 16384
