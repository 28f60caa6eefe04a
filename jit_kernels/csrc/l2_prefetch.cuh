// Cross-layer L2 prefetch (experiment 39): bring one layer's KV pages, named by the decode page table, into L2 while
// the kernels between two attention launches (o_proj, MLP, the next layer's QKV) stream their weights. Each thread
// issues bulk prefetches (the copy engine moves the bytes), optionally tagged evict_last for an L2 set-aside. On the
// H200 the grid did not complete before the bytes had moved (36 us per 32 MiB) and L2 kept almost none of them
// through the weight stream (NOTES.md, experiment 39).
#pragma once
#include <stdint.h>

#include "ptx.cuh"

namespace kvp {

struct L2PrefetchParams {
  const char* k;
  const char* v;
  int64_t page_stride_bytes;  // bytes from one page (or token slot, page 1) of the pool to the next
  uint32_t page_bytes;        // bytes of one page's rows, contiguous from its start (a multiple of 16)
  const int32_t* indptr;      // [batch + 1] into indices
  const int32_t* indices;     // page ids
  int32_t num_pool_pages;     // ids outside [0, num_pool_pages) are skipped
  int32_t max_pages;          // pages prefetched per request, from its first (the byte budget's share)
  int32_t evict_last;         // tag the lines evict_last (persisting) instead of the default policy
};

// grid (x: blocks per request, y: request); every thread takes every (gridDim.x * blockDim.x)-th page of its request.
__global__ void l2_prefetch_kernel(const L2PrefetchParams p) {
  const int32_t begin = p.indptr[blockIdx.y];
  const int32_t end = min(p.indptr[blockIdx.y + 1], begin + p.max_pages);
  const uint64_t policy = p.evict_last ? evict_last_policy() : 0;
  for (int32_t j = begin + blockIdx.x * blockDim.x + threadIdx.x; j < end; j += gridDim.x * blockDim.x) {
    const int32_t page = p.indices[j];
    if (page < 0 || page >= p.num_pool_pages) continue;
    const int64_t off = static_cast<int64_t>(page) * p.page_stride_bytes;
    if (p.evict_last) {
      prefetch_l2_bulk_policy(p.k + off, p.page_bytes, policy);
      prefetch_l2_bulk_policy(p.v + off, p.page_bytes, policy);
    } else {
      prefetch_l2_bulk(p.k + off, p.page_bytes);
      prefetch_l2_bulk(p.v + off, p.page_bytes);
    }
  }
}

}  // namespace kvp
