"""Every argument check of the op raises a ValueError naming the argument (CPU: checks run before any launch)."""

import dataclasses

import pytest
import torch

from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache
from kvprefetch.jit_kernels.validation import check_index_values

CTOR = dict(num_qo_heads=32, num_kv_heads=8, head_dim=128, page_size=16, q_dtype=torch.bfloat16,
            kv_dtype=torch.bfloat16, device="cpu")


@pytest.mark.parametrize("override,needle", [
    (dict(head_dim=96), "head_dim"),
    (dict(num_qo_heads=30), "num_qo_heads"),
    (dict(num_qo_heads=8 * 17), "group"),
    (dict(num_kv_heads=0), "num_kv_heads"),
    (dict(page_size=12), "page_size"),
    (dict(page_size=0), "page_size"),
    (dict(q_dtype=torch.float32), "q_dtype"),
    (dict(kv_dtype=torch.float16), "kv_dtype"),
    (dict(max_batch_size=-1), "max_batch_size"),
    (dict(prefetch_distance=9), "prefetch_distance"),
    (dict(prefetch_distance=-1), "prefetch_distance"),
    (dict(stages=1), "stages"),
    (dict(stages=9), "stages"),
    (dict(stages=True), "stages"),
    (dict(pdl=1), "pdl"),
    (dict(fp8_q=True), "fp8_q"),  # bf16 KV
    (dict(f16_math=True), "f16_math"),  # bf16 KV
    (dict(kv_dtype=torch.float8_e4m3fn, f16_math=True, fp8_q=True), "f16_math"),
    (dict(q_dtype=torch.float16, kv_dtype=torch.float8_e4m3fn, f16_math=True), "f16_math"),  # already fp16 math
    (dict(kv_dtype=torch.float8_e4m3fn, f16_math=1), "f16_math"),
    (dict(lazy_rescale=1), "lazy_rescale"),
    (dict(two_blocks=1), "two_blocks"),
    (dict(pdl=False, late_trigger=True), "late_trigger"),  # only PDL launches have a trigger to move
    (dict(late_trigger=1), "late_trigger"),
    (dict(cluster_merge=1), "cluster_merge"),
    (dict(page_prefetch="yes"), "page_prefetch"),
    (dict(tma=1), "tma"),
    (dict(pdl=False, early_kv=True), "early_kv"),
    (dict(pdl=False, adaptive_release=True), "adaptive_release"),  # no PDL: nothing to release
    (dict(pdl=True, late_trigger=True, adaptive_release=True), "adaptive_release"),  # released late anyway
    (dict(adaptive_release=1), "adaptive_release"),
    (dict(pid_ahead=4), "pid_ahead"),
    (dict(pid_ahead="yes"), "pid_ahead"),
    (dict(old_loads=1), "old_loads"),
    (dict(swap_ab=1), "swap_ab"),
    (dict(swap_ab=True, num_qo_heads=128), "swap_ab"),
    (dict(swap_ab=True, kv_dtype=torch.float8_e4m3fn, fp8_q=True), "swap_ab"),
])
def test_constructor_rejects(override, needle):
    with pytest.raises(ValueError, match=needle):
        BatchDecodeWithPagedKVCache(**{**CTOR, **override})


def test_env_prefetch_distance_must_be_int(monkeypatch):
    monkeypatch.setenv("KVPREFETCH_PREFETCH_DISTANCE", "far")
    with pytest.raises(ValueError, match="KVPREFETCH_PREFETCH_DISTANCE"):
        BatchDecodeWithPagedKVCache(**CTOR)


def test_group_seven_and_fp8_are_accepted():
    w = BatchDecodeWithPagedKVCache(**{**CTOR, "num_qo_heads": 28, "num_kv_heads": 4, "kv_dtype": torch.float8_e4m3fn})
    assert w.group == 7 and w.config.kv_fp8


def test_run_before_plan_is_refused():
    w = BatchDecodeWithPagedKVCache(**CTOR)
    with pytest.raises(ValueError, match="plan"):
        w.run(torch.zeros(1, 32, 128), torch.zeros(1), torch.zeros(1))


def test_no_gpu_is_named_on_load(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from kvprefetch.jit_kernels import KernelUnavailableError

    with pytest.raises(KernelUnavailableError, match="no CUDA GPU"):
        BatchDecodeWithPagedKVCache(**CTOR).load()


def _table(indptr, indices, last):
    t = lambda x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    return t(indptr), t(indices), t(last)


@pytest.mark.parametrize("indptr,indices,last,needle", [
    ([1, 2], [0, 1], [1], "kv_indptr\\[0\\]"),
    ([0, 2, 1], [0, 1], [1, 1], "non-decreasing"),
    ([0, 3], [0, 1], [1], "exceeds"),
    ([0, 1], [0], [0], "kv_last_page_len"),
    ([0, 1], [0], [17], "kv_last_page_len"),
    ([0, 1], [-1], [1], "kv_indices"),
    ([0, 1], [9], [1], "kv_indices"),
])
def test_index_values_are_checked(indptr, indices, last, needle):
    with pytest.raises(ValueError, match=needle):
        check_index_values(*_table(indptr, indices, last), page_size=16, num_pages=4)


def test_valid_index_values_pass():
    check_index_values(*_table([0, 1, 3], [2, 0, 1], [16, 3]), page_size=16, num_pages=4)


def test_stages_override_changes_only_the_ring_depth():
    w = BatchDecodeWithPagedKVCache(32, 8, 64, 16, torch.bfloat16, torch.bfloat16, "cpu", stages=6)
    tuned = BatchDecodeWithPagedKVCache(32, 8, 64, 16, torch.bfloat16, torch.bfloat16, "cpu")
    assert w.config.stages == 6 and tuned.config.stages != 6
    assert dataclasses.replace(w.config, stages=tuned.config.stages) == tuned.config


def test_pdl_is_the_default_and_its_own_module():
    w = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.bfloat16, "cpu", pdl=False)
    tuned = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.bfloat16, "cpu")
    assert "_pdl" in tuned.config.tag and "_pdl" not in w.config.tag
    assert sorted(tuned.config.defines()) == sorted(w.config.defines() + ["-DKVP_PDL=1"])
    on = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.bfloat16, "cpu", pdl=True)
    assert on.config == tuned.config


def test_fp8_q_needs_fp8_kv_and_is_its_own_module():
    w = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.float8_e4m3fn, "cpu", fp8_q=True)
    assert w.config.tag.endswith("_q8") and "-DKVP_FP8_Q=1" in w.config.defines()


def test_f16_math_is_its_own_module_and_the_fp8_default_at_head_dim_128():
    w = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.float8_e4m3fn, "cpu", f16_math=True)
    off = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.float8_e4m3fn, "cpu", f16_math=False)
    assert "_h16" in w.config.tag and set(w.config.defines()) == set(off.config.defines()) | {"-DKVP_FP8_F16=1"}
    tuned = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.float8_e4m3fn, "cpu")
    assert tuned.config == w.config  # experiment 26
    for d in (64, 256):  # measured slower at 64, unmeasured at 256
        assert not BatchDecodeWithPagedKVCache(32, 8, d, 16, torch.bfloat16, torch.float8_e4m3fn, "cpu").config.f16_math
    for kw in (dict(fp8_q=True), dict(q_dtype=torch.float16)):  # e4m3 q, or q already fp16: no fp16 conversion of q
        args = dict(q_dtype=torch.bfloat16) | kw
        q_dtype = args.pop("q_dtype")
        cfg = BatchDecodeWithPagedKVCache(32, 8, 128, 16, q_dtype, torch.float8_e4m3fn, "cpu", **args).config
        assert not cfg.f16_math
    assert not BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.bfloat16, "cpu").config.f16_math


def test_two_blocks_and_late_trigger_are_their_own_modules():
    tuned = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.bfloat16, "cpu")
    for kw, tag, define in ((dict(two_blocks=True), "_b2", "-DKVP_TWO_BLOCKS=1"),
                            (dict(late_trigger=True), "_lt", "-DKVP_LATE_TRIGGER=1"),
                            (dict(cluster_merge=True), "_cm", "-DKVP_CLUSTER_MERGE=1"),
                            (dict(page_prefetch=True), "_pp", "-DKVP_PAGE_PREFETCH=1")):
        w = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.bfloat16, "cpu", **kw)
        assert tag in w.config.tag and sorted(w.config.defines()) == sorted(tuned.config.defines() + [define])


def test_lazy_rescale_is_its_own_module():
    w = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.bfloat16, "cpu", lazy_rescale=True)
    tuned = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.bfloat16, "cpu")
    assert "_lr" in w.config.tag
    assert sorted(w.config.defines()) == sorted(tuned.config.defines() + ["-DKVP_LAZY_RESCALE=1"])


@pytest.mark.parametrize("kv,d,on", [(torch.bfloat16, 64, True), (torch.float16, 64, True), (torch.bfloat16, 128, False),
                                     (torch.float8_e4m3fn, 64, False), (torch.float8_e4m3fn, 128, False)])
def test_lazy_rescale_default_only_where_measured_faster(kv, d, on):
    q = torch.float16 if kv == torch.float16 else torch.bfloat16
    assert BatchDecodeWithPagedKVCache(32, 8, d, 16, q, kv, "cpu").config.lazy_rescale is on
    assert BatchDecodeWithPagedKVCache(32, 8, d, 16, q, kv, "cpu", lazy_rescale=False).config.lazy_rescale is False


@pytest.mark.parametrize("kv,d,on", [(torch.bfloat16, 128, True), (torch.float16, 128, True),
                                     (torch.bfloat16, 64, True), (torch.bfloat16, 256, False),
                                     (torch.float8_e4m3fn, 128, False), (torch.float8_e4m3fn, 64, False)])
def test_pdl_default_only_where_measured_faster(kv, d, on):
    q = torch.float16 if kv == torch.float16 else torch.bfloat16
    cfg = BatchDecodeWithPagedKVCache(32, 8, d, 16, q, kv, "cpu").config
    assert cfg.pdl is on and cfg.late_trigger is (on and d == 64)  # head_dim 64 releases after the loop (run 13)
    assert BatchDecodeWithPagedKVCache(32, 8, d, 16, q, kv, "cpu", pdl=not on).config.pdl is (not on)
    assert BatchDecodeWithPagedKVCache(32, 8, d, 16, q, kv, "cpu", pdl=False).config.late_trigger is False


@pytest.mark.parametrize("fp8,d,on", [(False, 64, True), (False, 128, True), (True, 128, True), (True, 64, False),
                                     (False, 256, False)])
def test_h200_loads_kv_before_the_pdl_wait_where_measured(fp8, d, on):  # experiment 38 (run 17g)
    from kvprefetch.jit_kernels.jit_spec import make_config

    cfg = make_config("bf16", fp8, d, 0, gpu_name="NVIDIA H200")
    assert cfg.early_kv is on and cfg.pdl is (on or (d == 128 and not fp8))
    assert make_config("bf16", fp8, d, 0, gpu_name="NVIDIA H200", pdl=False).early_kv is False  # SGLang's default
    assert make_config("bf16", fp8, d, 0, gpu_name="NVIDIA H200", tma=True).early_kv is False
    h100 = make_config("bf16", fp8, d, 0, gpu_name="NVIDIA H100 80GB HBM3")
    assert h100.early_kv is False and h100.pdl is (not fp8 and d in (64, 128))


def test_prebuild_sets_name_each_module_once():
    from kvprefetch.jit_kernels.prebuild import configs

    for which in ("default", "tests", "all"):
        cfgs = configs(which)
        assert len({c.tag for c in cfgs}) == len(cfgs), which  # ninja refuses two rules for one module


def test_prebuilt_default_set_holds_the_serving_modules():
    """The server launches without PDL (KVPREFETCH_PDL=0): its module on each card, and its shallow twin, is in the
    default set, so a served model never compiles at start-up where the modules were prebuilt."""
    from kvprefetch.jit_kernels.jit_spec import make_config, wide_config
    from kvprefetch.jit_kernels.prebuild import configs

    default = configs("default")
    for gpu in ("", "NVIDIA H200"):
        for fp8, d in ((False, 128), (True, 128), (False, 64)):
            cfg = make_config("bf16", fp8, d, 0, gpu_name=gpu, pdl=False)
            assert cfg in default, cfg.tag
            wide = wide_config(cfg, gpu)
            assert wide is None or wide in default, wide.tag


def test_wide_module_only_for_the_three_blocks_families_on_an_h200():
    """Experiment 28: fp8 KV at head_dim 128 and 16-bit KV at head_dim 64 get a 3-deep second module on an H200,
    with every other flag of the default but the page-id lookahead (experiment 44); nothing for other families, other
    cards, or explicit ring depths."""
    from kvprefetch.jit_kernels.jit_spec import make_config, wide_config
    from kvprefetch.jit_kernels.prebuild import configs

    h200, h100 = "NVIDIA H200", "NVIDIA H100 80GB HBM3"
    for q, fp8, d in (("bf16", True, 128), ("f16", True, 128), ("bf16", False, 64), ("f16", False, 64)):
        cfg = make_config(q, fp8, d, 0, gpu_name=h200)
        wide = wide_config(cfg, h200)
        assert wide.stages == 3 and cfg.pid_ahead and not wide.pid_ahead
        assert dataclasses.replace(wide, stages=cfg.stages, pid_ahead=True) == cfg
        assert wide in configs("default" if q == "bf16" and (fp8 or d == 64) else "tests")
        assert wide_config(make_config(q, fp8, d, 0, gpu_name=h100), h100) is None
        for kw in (dict(stages=6), dict(two_blocks=True), dict(trace=True)):
            assert wide_config(make_config(q, fp8, d, 0, gpu_name=h200, **kw), h200) is None
    for fp8, d in ((False, 128), (True, 64), (False, 256), (True, 256)):
        assert wide_config(make_config("bf16", fp8, d, 0, gpu_name=h200), h200) is None
    w = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.float8_e4m3fn, "cpu", stages=4)
    assert w.wide_config is None and not w.uses_wide(256)  # an explicit ring depth is one module


def test_wide_module_plan_on_a_faked_h200(monkeypatch):
    """The pick and the split plans of experiment 28 without a GPU: 132 SMs, a deep module of 3 blocks per SM and a
    shallow twin of 4. Batches from 25 (8 kv heads) run on the twin, plan for its slots, and size the workspace."""
    import contextlib
    import types

    from kvprefetch.jit_kernels import decode
    from kvprefetch.jit_kernels.jit_spec import make_config, wide_config

    def fake(cfg):
        return types.SimpleNamespace(blocks_per_sm=lambda: 4 if cfg.stages == 3 else 3, stages=cfg.stages)

    monkeypatch.setattr(decode, "is_supported_device", lambda device: (True, ""))
    monkeypatch.setattr(decode, "load_module", fake)
    monkeypatch.setattr(decode, "wide_config", lambda cfg, gpu: wide_config(cfg, "NVIDIA H200"))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(multi_processor_count=132))
    w = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.float8_e4m3fn, "cpu").load()
    assert w.config == make_config("bf16", True, 128, 0) and w.wide_config.stages == 3
    assert [w.uses_wide(b) for b in (1, 24, 25, 256)] == [False, False, True, True]
    assert (w.num_splits_for(24), w.num_splits_for(25), w.num_splits_for(32)) == (2, 2, 2)  # 396 // 192; 528 // 200, 256
    assert w.num_splits_for(64) == 1 and w.short_splits_for(32) == 1
    assert "from batch 25: " in w.describe_module()
    ind = torch.zeros(32 * 4, dtype=torch.int32)
    w.plan(torch.arange(0, 33 * 4, 4, dtype=torch.int32), ind, torch.ones(32, dtype=torch.int32))
    assert w._plan[-1] is w._wide and w._plan[4:6] == (2, 1)
    w.plan(torch.arange(0, 17 * 4, 4, dtype=torch.int32), ind, torch.ones(16, dtype=torch.int32))
    assert w._plan[-1] is w._module and w._plan[4:6] == (3, 2)
    assert w._part_lse.numel() == w.group * max(b * 8 * w.num_splits_for(b) for b in range(1, 257))
    small = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.float8_e4m3fn, "cpu", max_batch_size=24)
    assert small.load().wide_config is None and not small.uses_wide(24)  # no batch it plans reaches the twin
    assert "from batch" not in small.describe_module()


def test_swap_ab_default_where_measured():
    """Experiments 50, 51: tokens as the mma's M side for 16-bit KV at head_dim 64 and 128 and fp8 KV at head_dim 128
    with a group of at most 8, on both cards and both launches; fp8 at head_dim 64, e4m3 q, head_dim 256 and groups
    over 8 keep the heads as M."""
    from kvprefetch.jit_kernels.jit_spec import make_config, wide_config

    for gpu in ("", "NVIDIA H200"):
        for d in (64, 128):
            assert make_config("bf16", False, d, 0, gpu_name=gpu).swap_ab
            assert make_config("f16", False, d, 0, gpu_name=gpu, pdl=False, group=8).swap_ab
            assert not make_config("bf16", False, d, 0, gpu_name=gpu, group=16).swap_ab
            assert make_config("bf16", True, d, 0, gpu_name=gpu).swap_ab == (d == 128)
        assert make_config("f16", True, 128, 0, gpu_name=gpu, pdl=False, group=7).swap_ab
        assert not make_config("bf16", True, 128, 0, gpu_name=gpu, fp8_q=True).swap_ab
        assert not make_config("bf16", True, 128, 0, gpu_name=gpu, group=16).swap_ab
        assert not make_config("bf16", False, 256, 0, gpu_name=gpu).swap_ab
        assert not make_config("bf16", True, 256, 0, gpu_name=gpu).swap_ab
    assert wide_config(make_config("bf16", True, 128, 0, gpu_name="NVIDIA H200"), "NVIDIA H200").swap_ab
    w = BatchDecodeWithPagedKVCache(**{**CTOR, "num_qo_heads": 128})  # group 16
    assert not w.config.swap_ab and BatchDecodeWithPagedKVCache(**CTOR).config.swap_ab
    assert not BatchDecodeWithPagedKVCache(**CTOR, swap_ab=False).config.swap_ab


def test_pid_ahead_default_where_measured():
    """Experiment 44: four iterations of page-id lookahead on an H200 with the early loads and for 16-bit KV at
    head_dim 64 launched plainly; not for bf16 head_dim 128 or fp8 launched plainly, other cards, or the shallow twin."""
    from kvprefetch.jit_kernels.jit_spec import make_config, wide_config

    h200 = "NVIDIA H200"
    for fp8, d in ((True, 128), (False, 128), (False, 64)):
        assert make_config("bf16", fp8, d, 0, gpu_name=h200).pid_ahead
        assert make_config("bf16", fp8, d, 0, gpu_name=h200, pdl=False).pid_ahead == (d == 64)
        assert not make_config("bf16", fp8, d, 0).pid_ahead
    assert not wide_config(make_config("bf16", True, 128, 0, gpu_name=h200), h200).pid_ahead
    assert make_config("bf16", False, 128, 0, gpu_name=h200, pdl=False, pid_ahead=True).pid_ahead
