"""Batch 1's short-request plan (experiment 56) without a GPU: which families get one, and what the kernel's chunking
makes of it."""

import contextlib
import types

import torch

from kvprefetch.jit_kernels.batch1_plan import batch1_short_plan
from kvprefetch.jit_kernels.decode import SHORT_CHUNK_TOKENS, split_chunk

H200, H100 = "NVIDIA H200", "NVIDIA H100 80GB HBM3"


def active(length, num_splits, short_splits, short_chunk):
    return -(-length // split_chunk(length, num_splits, short_splits, short_chunk=short_chunk))


def test_only_the_measured_family_on_the_measured_card_gets_a_plan():
    assert batch1_short_plan(False, 128, 8, True, H200, 132) == (24, 140)
    assert batch1_short_plan(False, 128, 8, False, H200, 132) == (16, 126)
    for args in ((True, 128, 8, True, H200), (False, 64, 8, False, H200), (False, 256, 8, True, H200),
                 (False, 128, 4, True, H200), (False, 128, 8, True, H100), (False, 128, 8, True, "")):
        assert batch1_short_plan(*args, 132) is None


def test_the_plan_changes_only_few_k_token_requests():
    """Grid 33 (two blocks per SM, 8 kv heads): with PDL 1 x 4K runs 24 splits instead of 32, and from 4.6K the
    planner's; launched plainly 16 up to 4125 tokens; 1 x 1K and 2K keep theirs (the 128-token minimum chunk decides
    there); 1 x 3K keeps 24 with PDL (128-token chunks either way) and runs 16 launched plainly."""
    lengths = (1024, 2048, 3072, 4096, 4125, 4126, 4587, 4608, 8192, 65536)
    old = {n: active(n, 33, 33, SHORT_CHUNK_TOKENS) for n in lengths}
    pdl = {n: active(n, 33, 24, 140) for n in old}
    plain = {n: active(n, 33, 16, 126) for n in old}
    assert old == {1024: 8, 2048: 16, 3072: 24, 4096: 32, 4125: 33, 4126: 33, 4587: 32, 4608: 32, 8192: 32,
                   65536: 33}
    assert pdl == {**old, 4096: 24, 4125: 24, 4126: 24, 4587: 24}
    assert plain == {**old, 3072: 16, 4096: 16, 4125: 16}


def test_wrapper_uses_the_plan_at_batch_1_only(monkeypatch):
    from kvprefetch.jit_kernels import decode

    monkeypatch.setattr(decode, "is_supported_device", lambda device: (True, ""))
    monkeypatch.setattr(decode, "load_module", lambda cfg: types.SimpleNamespace(blocks_per_sm=lambda: 2))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(multi_processor_count=132))
    for kv, plan in ((torch.bfloat16, (24, 140)), (torch.float8_e4m3fn, None)):
        w = decode.BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, kv, "cpu", pdl=True)
        w._gpu_name = H200
        w.load()
        assert w.batch1_short == plan
        if plan:
            assert (w.num_splits_for(1), w.short_splits_for(1), w.short_chunk_for(1)) == (33, 24, 140)
        assert (w.short_splits_for(2), w.short_chunk_for(2)) == (16, SHORT_CHUNK_TOKENS)
        w.plan(torch.tensor([0, 256], dtype=torch.int32), torch.zeros(256, dtype=torch.int32),
               torch.tensor([16], dtype=torch.int32))
        assert w._plan[4:7] == (33, *(plan or (33, SHORT_CHUNK_TOKENS)))
