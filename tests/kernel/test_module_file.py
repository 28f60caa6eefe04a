"""The pre-load check of a module file: a damaged one is named for what is wrong with it, never dlopen'ed
(a truncated shared object can kill the process when mapped). CPU, a C compiler only."""

import re

import pytest

from kvprefetch.jit_kernels.module_file import UnusableModuleFile, load_module_file, module_file_problem

from .stub_modules import compile_shared, damage, have_cc

pytestmark = pytest.mark.skipif(not have_cc(), reason="needs a C compiler (cc) to build stub modules")


@pytest.fixture
def good(tmp_path):
    return compile_shared(tmp_path / "good.so")


def test_a_whole_module_passes_and_loads(good):
    assert module_file_problem(good) is None
    mod = load_module_file(good)
    assert mod.implements_function("run") and mod.implements_function("blocks_per_sm")


@pytest.mark.parametrize("how,needle", [
    ("garbage", "not an ELF file"),
    ("truncated", "truncated"),
    ("empty", "not an ELF file (0 bytes)"),
])
def test_a_damaged_module_is_named_not_loaded(good, how, needle):
    damage(good, how)
    assert needle in module_file_problem(good)
    with pytest.raises(UnusableModuleFile, match=re.escape(needle)):
        load_module_file(good)


def test_a_module_without_entry_points_is_refused(tmp_path):
    path = compile_shared(tmp_path / "bare.so", with_entry_points=False)
    assert "__tvm_ffi_run, __tvm_ffi_blocks_per_sm, __tvm_ffi_l2_prefetch" in module_file_problem(path)


def test_a_missing_file_is_named(tmp_path):
    assert "cannot be read" in module_file_problem(tmp_path / "absent.so")
