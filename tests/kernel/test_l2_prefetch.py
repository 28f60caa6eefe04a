"""The cross-layer L2 prefetch's host side on the CPU (experiment 39): pool geometry, budgets, argument errors."""
import pytest
import torch

from kvprefetch.jit_kernels import l2_prefetch


class FakeModule:
    def __init__(self):
        self.calls = []

    def l2_prefetch(self, *args):
        self.calls.append(args)


def _table(batch=2):
    return torch.tensor([0, 3, 5][: batch + 1], dtype=torch.int32), torch.arange(5, dtype=torch.int32)


@pytest.mark.parametrize("shape,page,stride,bytes_", [((10, 16, 8, 128), 16, 32768, 32768),
                                                     ((100, 8, 64), 1, 1024, 1024)])
def test_page_geometry_of_both_pool_layouts(shape, page, stride, bytes_):
    assert l2_prefetch.pool_page_geometry(torch.zeros(shape, dtype=torch.bfloat16), page) == (stride, bytes_)


def test_a_pool_whose_pages_are_not_contiguous_is_refused():
    pool = torch.zeros(10, 8, 16, 128, dtype=torch.bfloat16).transpose(1, 2)  # [pages, page, heads, dim], heads outer
    with pytest.raises(ValueError, match="k_cache: expected each page's rows contiguous"):
        l2_prefetch.pool_page_geometry(pool, 16)


def test_the_byte_budget_is_shared_by_the_requests_and_fp8_goes_as_bytes():
    mod, (indptr, indices) = FakeModule(), _table()
    k = torch.zeros(10, 16, 8, 128, dtype=torch.float8_e4m3fn)
    l2_prefetch.launch(mod, k, k.clone(), indptr, indices, 2, 16, 4 * 16384 * 2 * 2, True)
    (kk, vv, _, _, batch, stride, page_bytes, max_pages, blocks, evict_last), = mod.calls
    assert kk.dtype == torch.uint8 and (batch, stride, page_bytes, max_pages, evict_last) == (2, 16384, 16384, 4, True)
    assert blocks == l2_prefetch.blocks_per_request(2)


def test_nothing_is_launched_for_an_empty_batch_or_budget():
    mod, (indptr, indices) = FakeModule(), _table()
    k = torch.zeros(10, 16, 8, 128, dtype=torch.bfloat16)
    l2_prefetch.launch(mod, k, k, indptr, indices, 0, 16, None, True)
    l2_prefetch.launch(mod, k, k, indptr, indices, 2, 16, 1000, True)  # less than one page per request
    assert mod.calls == []


@pytest.mark.parametrize("max_bytes", [-1, 1.5, True])
def test_bad_budget_is_named(max_bytes):
    indptr, indices = _table()
    k = torch.zeros(10, 16, 8, 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="max_bytes: expected None"):
        l2_prefetch.launch(FakeModule(), k, k, indptr, indices, 2, 16, max_bytes, True)


def test_v_cache_must_match_k_cache():
    indptr, indices = _table()
    k = torch.zeros(10, 16, 8, 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="v_cache: expected the shape"):
        l2_prefetch.launch(FakeModule(), k, k[:5], indptr, indices, 2, 16, None, True)


def test_bad_set_aside_is_named():
    with pytest.raises(ValueError, match="nbytes: expected None or an int >= 0"):
        l2_prefetch.set_persisting_l2(FakeModule(), torch.device("cpu"), -5)


@pytest.mark.parametrize("batch,blocks", [(1, 8), (16, 8), (32, 4), (256, 1)])
def test_blocks_per_request(batch, blocks):
    assert l2_prefetch.blocks_per_request(batch) == blocks


@pytest.mark.parametrize("blocks", [0, 1025, 2.0, True])
def test_bad_block_count_is_named(blocks):
    indptr, indices = _table()
    k = torch.zeros(10, 16, 8, 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="blocks: expected None or an int 1..1024"):
        l2_prefetch.launch(FakeModule(), k, k, indptr, indices, 2, 16, None, True, blocks)
