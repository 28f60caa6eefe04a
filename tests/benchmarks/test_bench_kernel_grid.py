import pytest

import kernel_grid as kg

K = 1024


def test_grid_is_the_issue_grid():
    assert kg.GRID == ((1, 1 * K), (1, 4 * K), (1, 16 * K), (1, 64 * K), (1, 128 * K), (4, 4 * K), (8, 2 * K),
                       (8, 16 * K), (16, 1 * K), (32, 4 * K), (32, 16 * K), (64, 512), (128, 4 * K), (256, 1 * K))
    assert set(kg.QUICK_GRID) <= set(kg.GRID)
    assert set(kg.QUICK_GRID) == {(1, K), (1, 16 * K), (8, 2 * K), (64, 512), (32, 16 * K)}
    assert max(b for b, _ in kg.GRID) <= 256   # kvprefetch wrappers are built with max_batch_size=256


def test_default_configs():
    cfgs = kg.select_configs()
    assert [(c.page_size, c.kv_dtype, (c.num_qo_heads, c.num_kv_heads, c.head_dim)) for c in cfgs] == [
        (1, "bf16", (32, 8, 128)), (16, "bf16", (32, 8, 128))]


@pytest.mark.parametrize("kw,expect", [
    (dict(quick=True), {(16, "bf16", "llama3_8b")}),
    (dict(fp8=True), {(1, "fp8_e4m3", "llama3_8b"), (16, "fp8_e4m3", "llama3_8b")}),
    (dict(page_size_64=True), {(64, "bf16", "llama3_8b")}),
    (dict(group7=True, quick=True), {(16, "bf16", "group7")}),
    (dict(hd64=True, group7=True, page_size_64=True), {(64, "bf16", "group7"), (64, "bf16", "hd64")}),
    (dict(fp8=True, page_sizes=[1, 16, 64]), {(p, "fp8_e4m3", "llama3_8b") for p in (1, 16, 64)}),
])
def test_flag_configs(kw, expect):
    assert {(c.page_size, c.kv_dtype, c.heads) for c in kg.select_configs(**kw)} == expect


def test_head_shapes():
    assert kg.HEAD_SHAPES["group7"] == (28, 4, 128) and kg.HEAD_SHAPES["hd64"] == (32, 8, 64)


def test_shape_bytes():
    s = kg.Shape(1, 1024, 16, 32, 8, 128, "bf16")
    assert s.kv_bytes == 2 * 1024 * 8 * 128 * 2 == 4 << 20
    assert s.pool_bytes == s.kv_bytes and s.num_pages == 64
    assert s.qo_bytes == 2 * 32 * 128 * 2
    assert s.total_bytes == s.kv_bytes + s.qo_bytes
    f = kg.Shape(8, 2048, 1, 32, 8, 128, "fp8_e4m3")
    assert f.kv_bytes == 2 * 8 * 2048 * 8 * 128 and f.num_pages == 8 * 2048
    odd = kg.Shape(2, 100, 16, 32, 8, 128, "bf16")
    assert odd.pages_per_request == 7 and odd.pool_bytes > odd.kv_bytes
    for cfg in kg.select_configs(page_sizes=[1, 16, 64]):
        for sh in kg.shapes_for(cfg, kg.GRID):      # every grid shape fills its pages exactly
            assert sh.pool_bytes == sh.kv_bytes


def test_plan_layers():
    L2 = 50 << 20
    big = 64 << 30
    # a model's depth when 32 layers are far above 4x L2; rotation of 2 for the cold regime
    assert kg.plan_layers(512 << 20, big, L2) == (32, 2)
    # small layers: raised so that all layers together exceed 4x L2 (4 MiB -> 51), cold rotates through them
    layers, cold = kg.plan_layers(4 << 20, big, L2)
    assert layers == 51 and cold == 51 and (layers - 1) * (4 << 20) >= 4 * L2
    # memory-bound
    assert kg.plan_layers(2 << 30, 20 << 30, L2) == (10, 2)
    assert kg.plan_layers(2 << 30, 1 << 30, L2) == (0, 0)
    # cap
    assert kg.plan_layers(1024, big, L2, max_layers=512)[0] == 512
    with pytest.raises(ValueError):
        kg.plan_layers(0, big, L2)


def test_cold_rotation_exceeds_l2():
    L2 = 50 << 20
    for cfg in kg.select_configs(page_sizes=[16]) + kg.select_configs(hd64=True, fp8=True):
        for sh in kg.shapes_for(cfg, kg.GRID):
            layers, cold = kg.plan_layers(sh.pool_bytes, 60 << 30, L2)
            assert layers >= 1 and 2 <= cold <= layers
            assert (cold - 1) * sh.pool_bytes >= 4 * L2 or cold == layers


def test_repeat_counts_bounded():
    assert kg.timing_repeats(1e-6, 32) == 100
    assert kg.timing_repeats(1e-3, 32) == 5
    assert 5 <= kg.timing_repeats(1e-4, 32) <= 100
    assert kg.cold_samples(1e-6, 51) == 60
    assert kg.cold_samples(1e-2, 2) == 10
    assert kg.cold_samples(1e-3, 2) == 40
    assert kg.cold_samples(1e-2, 30) == 30      # at least one full rotation


def test_estimate_fits_budget():
    est = kg.estimate_seconds(kg.select_configs(), kg.GRID, kg.ALL_KERNELS, mem_budget_bytes=56 << 30)
    assert est["total_s"] < 300, est                         # default run under ~5 minutes on an H100
    assert est["total_s"] == pytest.approx(sum(v for k, v in est.items() if k != "total_s"))
    quick = kg.estimate_seconds(kg.select_configs(quick=True), kg.QUICK_GRID, kg.ALL_KERNELS)
    assert quick["gpu_s"] < est["gpu_s"]


def test_parse_shapes():
    assert kg.parse_shapes("1x16384, 8x2K") == [(1, 16384), (8, 2048)]
    for bad in ("8by2048", "", "xK"):
        with pytest.raises(ValueError, match="--shapes"):
            kg.parse_shapes(bad)
