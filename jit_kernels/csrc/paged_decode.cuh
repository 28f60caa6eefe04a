// Paged-KV decode attention with asynchronous L2 prefetch and a single-launch split-KV merge.
//
// One thread block = (split, kv head, request). Its 4 warps stream the split's KV in 64-token tiles through a
// STAGES-deep cp.async ring in shared memory; PF tiles further ahead are requested into L2 with bulk prefetches,
// so with short splits every byte a block needs is in flight from its first microsecond. Page ids are resolved
// KVP_PID_AHEAD iterations before they are needed (held in registers, then written to a small ring of row offsets).
// The q heads of one kv head (the GQA group, 1..16) are the 16 rows of m16n8k16 tensor-core products, or, with
// KVP_SWAP_AB (groups <= 8), the 8 columns, with the warp's 16 tokens as the rows.
// fp8 KV is converted in registers while the mma operands are built (ldmatrix on the raw bytes), never in smem.
// When a request is split, each split writes a partial (o, lse) and the last split to finish merges them.
#pragma once
#include <math_constants.h>

#include "ptx.cuh"

#ifndef KVP_PDL
#define KVP_PDL 0  // launched with programmatic stream serialization (the JIT spec's pdl flag)
#endif
#ifndef KVP_FP8_F16
#define KVP_FP8_F16 0  // fp8 KV with bf16 q: the mma operands in fp16 (the JIT spec's f16_math flag, experiment 16)
#endif
#ifndef KVP_LAZY_RESCALE
#define KVP_LAZY_RESCALE 0  // rescale o only when a row's max grows by > kRescaleSlack (experiment 17)
#endif
#ifndef KVP_TRACE
#define KVP_TRACE 0  // block-timeline trace (the JIT spec's trace flag, experiment 18): diagnostics only
#endif
#ifndef KVP_LATE_TRIGGER
#define KVP_LATE_TRIGGER 0  // with PDL: release the next launch after the main loop, not at the start (experiment 23)
#endif
#ifndef KVP_CLUSTER_MERGE
#define KVP_CLUSTER_MERGE 0  // the splits of a (request, kv head) merge through a cluster's shared memory (exp. 30)
#endif
#ifndef KVP_PAGE_PREFETCH
#define KVP_PAGE_PREFETCH 0  // the kv heads of a (request, split) prefetch whole token rows of their tiles (exp. 34)
#endif
#ifndef KVP_EARLY_KV
#define KVP_EARLY_KV 0  // with PDL: the ring's first tiles load before griddepcontrol.wait, all but the newest token
#endif
#ifndef KVP_TMA
#define KVP_TMA 0  // K/V tiles arrive by TMA, one box per 16-token page piece, where p.tma (experiment 37)
#endif
#if KVP_TMA
#include <cuda.h>  // CUtensorMap
#define KVP_PARAMS_QUAL __grid_constant__  // the tensor maps' addresses must stay in the parameter space
#else
#define KVP_PARAMS_QUAL
#endif
#ifndef KVP_PID_AHEAD
#define KVP_PID_AHEAD 1  // iterations between a page id's load and its use in the main loop (experiment 44)
#endif
#ifndef KVP_OLD_LOADS
#define KVP_OLD_LOADS 0  // experiment 47's A/B: the tile copy and softmax mask as before it (zero-fill on every row)
#endif
#ifndef KVP_SWAP_AB
#define KVP_SWAP_AB 0  // GQA group <= 8: S^T = K Q^T and O^T = V^T P^T, the tokens as the mma's M (exp. 50, 51)
#endif
#ifndef KVP_FP8_Q
#define KVP_FP8_Q 0  // fp8 KV: q quantised to e4m3 and Q K^T on e4m3 tensor cores (the JIT spec's fp8_q flag)
#endif

namespace kvp {

#if KVP_TRACE
// Experiment 18's block timeline: set by the module's set_trace(); word 0 counts records, records start at word
// kTraceHeader, kTraceWords words each: stamps 0..5 (globaltimer, ns), the block's smid / kind / active splits /
// tiles, its (x, y, z), and the K pointer (which layer's launch).
constexpr int kTraceHeader = 16, kTraceWords = 10, kTraceStamps = 6;
__device__ uint64_t* g_trace = nullptr;
__device__ uint64_t g_trace_cap = 0;
enum TraceKind { kTrSingle = 0, kTrPartial = 1, kTrMerger = 2, kTrIdle = 3, kTrEmpty = 4 };
__device__ __forceinline__ void trace_write(const uint64_t* t, int kind, int n_act, int ntiles, const void* k) {
  if (g_trace == nullptr) return;
  const unsigned long long i = atomicAdd(reinterpret_cast<unsigned long long*>(g_trace), 1ull);
  if (i >= g_trace_cap) return;
  uint64_t* r = g_trace + kTraceHeader + i * kTraceWords;
  for (int j = 0; j < kTraceStamps; ++j) r[j] = t[j];
  r[6] = uint64_t(smid()) | (uint64_t(kind) << 16) | (uint64_t(uint32_t(n_act)) << 24) |
         (uint64_t(uint32_t(ntiles)) << 40);
  r[7] = uint64_t(blockIdx.x) | (uint64_t(blockIdx.y) << 16) | (uint64_t(blockIdx.z) << 40);
  r[8] = reinterpret_cast<uint64_t>(k);
  r[9] = 0;
}
#define KVP_STAMP(i, after) (tr[i] = globaltimer_after(uint32_t(after)))
// a stamp the block never reached repeats the one before it
#define KVP_TRACE_OUT(kind, n_act, ntiles)                                     \
  do {                                                                         \
    if (tid == 0) {                                                            \
      for (int j_ = 1; j_ < kTraceStamps; ++j_) tr[j_] = tr[j_] ? tr[j_] : tr[j_ - 1]; \
      trace_write(tr, kind, n_act, ntiles, p.k);                               \
    }                                                                          \
  } while (0)
#else
#define KVP_STAMP(i, after) ((void)0)
#define KVP_TRACE_OUT(kind, n_act, ntiles) ((void)0)
#endif

struct DecodeParams {
  const void* q;
  int64_t q_stride_b, q_stride_h;  // elements
  const void* k;
  const void* v;
  int64_t kv_stride_page, kv_stride_tok, kv_stride_head;  // elements
  const int32_t* indptr;
  const int32_t* indices;
  const int32_t* last_len;
  void* o;
  int64_t o_stride_b, o_stride_h;
  float* lse;  // [B, Hq], natural log; may be null
  float* part_o;
  float* part_lse;
  int32_t* counters;
  int32_t num_kv_heads, group, num_splits, page_shift;
  int32_t num_indices, num_pool_pages;  // bounds for page ids read from device memory (bad tables stay in bounds)
  int32_t min_chunk;  // tokens; a split shorter than the prologue's lookahead only adds merge work
  int32_t short_splits;  // <= num_splits: the split count for a request whose splits would be short (split_chunk)
  int32_t short_chunk;  // tokens: a split shorter than this makes the request short (split_chunk)
  float score_pre;   // no cap: sm_scale*k_scale*log2(e); cap: sm_scale*k_scale/cap
  float score_post;  // cap: cap*log2(e)
  int32_t has_cap;
  float v_scale;
#if KVP_PDL && !KVP_LATE_TRIGGER
  // experiment 40: a batch-1 launch with fewer active blocks than this releases the next launch after its main loop
  // (0: always at the start)
  int32_t late_release_below;
#endif
#if KVP_CLUSTER_MERGE
  int32_t cluster;  // launched with cluster dims (1, 1, num_splits): merge through distributed shared memory
#endif
#if KVP_TMA
  int32_t tma;  // the maps below are valid: 4-d [pages, page, kv heads, D], box [1, 16, 1, D], 128-byte swizzle
  CUtensorMap tma_k, tma_v;
#endif
};

constexpr int kMaxClusterSplits = 16;  // the largest (non-portable) cluster of sm_90

template <typename TQ, typename TKV, int D, int STAGES, int PF>
struct DecodeCfg {
  static constexpr int kThreads = 128, kWarps = 4, kTile = 64, kRows = 16;
  static constexpr bool kFp8 = sizeof(TKV) == 1;
  static constexpr int kRowBytesKV = D * int(sizeof(TKV));
  static constexpr int kChunksKV = kRowBytesKV / 16;  // 16-byte chunks per KV row as stored
  static constexpr int kRowBytesOp = D * 2;           // a row in the mma operand layout (bf16/fp16)
  static constexpr int kStageBytes = kTile * kRowBytesKV;
  static constexpr int kLookahead = STAGES - 1 + PF;
  static constexpr int kSlots = kLookahead + 2;
  static constexpr int kOffQ = 0;
  static constexpr int kOffK = kOffQ + kRows * kRowBytesOp;
  static constexpr int kOffV = kOffK + STAGES * kStageBytes;
  static constexpr int kOffRows = kOffV + STAGES * kStageBytes;
  static constexpr int kOffRed = kOffRows + kSlots * kTile * 8;
  static constexpr int kOffFlag = kOffRed + 2 * kWarps * kRows * 4;
  static constexpr int kOffPartLse = kOffFlag + 16;  // cluster merge: this split's lse per row
  static constexpr int kOffBar = kOffPartLse + (KVP_CLUSTER_MERGE ? kRows * 4 : 0);  // TMA: one mbarrier per stage
  static constexpr int kOffPid = kOffBar + (KVP_TMA ? STAGES * 8 : 0);               // TMA: page id per ring row
  static constexpr int kSmemBytes = kOffPid + (KVP_TMA ? kSlots * kTile * 4 + 1024 : 0);  // + the base's alignment
  static constexpr int kOBytes = kWarps * kRows * D * 4;  // cross-warp reduction buffer, aliases the stages
  static_assert(STAGES >= 2, "need at least two stages");
  static_assert(D == 64 || D == 128 || D == 256, "head_dim must be 64, 128 or 256");
  static_assert(kOBytes <= 2 * STAGES * kStageBytes, "reduction buffer does not fit");
  static_assert(256 * 16 * 4 <= STAGES * kStageBytes, "merge weights (MAX_SPLITS x 16 rows) do not fit");
};

// Byte offset of 16-byte chunk `c` of row `r` in a swizzled tile with rows of RB bytes: conflict-free for
// ldmatrix, which reads 8 consecutive rows at the same logical chunk. Rows shorter than a 128-byte line
// (fp8, head_dim 64) are swizzled by line.
template <int RB>
__device__ __forceinline__ int swz_rows(int r, int c) {
  if constexpr (RB >= 128) {
    return r * RB + ((c ^ (r & 7)) << 4);
  } else {
    const int off = r * RB + (c << 4), line = off >> 7;
    return (line << 7) | ((((off >> 4) & 7) ^ (line & 7)) << 4);
  }
}
// The same for an operand tile of bf16/fp16 rows of head_dim D.
template <int D>
__device__ __forceinline__ int swz(int r, int c) {
  return swz_rows<D * 2>(r, c);
}

// fp8 K fragments come from ldmatrix on raw e4m3 rows: a lane gets 4 consecutive dims 4c..4c+3 (c = lane % 4)
// of each 16-dim chunk, which feed mma k-indices {2c, 2c+1, 2c+8, 2c+9}. q is stored with the same
// permutation so the dot product is unchanged: the q pair at dim 16*ks + 4c + 2h goes to operand column 8h + 2c.
template <int D>
__device__ __forceinline__ int q_fp8_slot(int r, int d) {
  const int ks = d >> 4, c = (d >> 2) & 3, h = (d >> 1) & 1;
  return swz<D>(r, 2 * ks + h) + 4 * c;
}

// Tokens per split of a request of `len` tokens (a multiple of 16, at least p.min_chunk). The grid's
// p.num_splits fill every block slot of the card, which long requests need for bandwidth; a request whose splits
// would be under p.short_chunk tokens uses p.short_splits instead: fewer, longer splits ran the 25-us class of shapes
// 8-15 % faster on an H100 with three-blocks-per-SM modules (NOTES.md, runs 7 and 8), and batch 1's few-K requests
// faster on an H200 (experiment 56). The host picks both per batch size.
constexpr float kRescaleSlack = 8.f;  // log2 units (scores carry log2(e)): lazily rescaled P entries stay <= 256
__device__ __forceinline__ int split_chunk(int len, const DecodeParams& p) {
  int chunk = (len + p.num_splits - 1) / p.num_splits;
  if (chunk < p.short_chunk) chunk = (len + p.short_splits - 1) / p.short_splits;
  return max((chunk + 15) & ~15, p.min_chunk);
}

// One online-softmax step (log2 domain) for a lane's two rows: heads-as-M, q heads lane/4 and lane/4 + 8; swapped,
// heads 2c and 2c + 1. mx holds the lane's max of the tile's scores per row and is reduced here over the lanes that
// share the row (xor masks kMask0, 2 kMask0, ... below kMaskEnd). Returns whether a row's reference max moved.
template <int kMask0, int kMaskEnd>
__device__ __forceinline__ bool online_softmax_step(float (&mx)[2], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                                    float (&muse)[2]) {
  bool grow = false;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int mask = kMask0; mask < kMaskEnd; mask <<= 1) mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], mask));
    float mnew = fmaxf(m[r], mx[r]);
    if constexpr (KVP_LAZY_RESCALE) {
      // keep the reference max while the tile's max exceeds it by at most the slack (P stays <= 2^slack): the
      // rescale then runs only in the few tiles where some row's max jumps (the first one, mostly)
      if (!(mnew > m[r] + kRescaleSlack)) mnew = m[r];
      grow |= mnew != m[r];
    }
    muse[r] = mnew == -CUDART_INF_F ? 0.f : mnew;
    alpha[r] = exp2f(m[r] - muse[r]);
    m[r] = mnew;
    l[r] *= alpha[r];
  }
  return grow;
}

// The online softmax's rescale of a lane's accumulators: heads-as-M, elements 0, 1 are row lane/4 and 2, 3 row
// lane/4 + 8; swapped (kHeadCols), elements 0, 2 are head 2c and 1, 3 head 2c + 1.
template <bool kHeadCols, int N>
__device__ __forceinline__ void rescale_o(float (&o)[N][4], const float (&alpha)[2]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o[i][e] *= alpha[kHeadCols ? (e & 1) : (e >> 1)];
  }
}

// Raw e4m3 V rows, chunks 2qp and 2qp + 1 of the warp's 16 tokens, through a transposed 16-bit ldmatrix and a byte
// permute: the low half of lo[h] / hi[h] is dim 2g of tokens 2c, 2c + 1 (0-7 / 8-15) of chunk 2qp + h, the high half
// dim 2g + 1 (g = lane / 4, c = lane % 4).
template <int RB>
__device__ __forceinline__ void ld_v_e4m3_pairs(const uint8_t* vs, int lrow, int lhalf, int qp, uint32_t (&lo)[2],
                                                uint32_t (&hi)[2]) {
  uint32_t raw[4];  // [chunk half][token half]
  ldmatrix_x4_trans(raw, vs + swz_rows<RB>(lrow, 2 * qp + lhalf));
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    lo[h] = __byte_perm(raw[2 * h], 0, 0x3120);
    hi[h] = __byte_perm(raw[2 * h + 1], 0, 0x3120);
  }
}

// PDL prologue: the block may be running before the previous kernel in the stream has finished, so nothing it
// reads can be trusted until griddep_wait(). It only warms L2 with what its first STAGES-1 tiles need: the
// page-table lines and those tiles' K/V rows. A stale or garbage page id is clamped into the pool and a prefetch
// changes no memory (L2 stays coherent with the writes still in flight), so the worst case is a wasted prefetch;
// after the wait everything is read again by the ordinary path, from L2 where the guess was right.
template <typename C, typename TKV>
__device__ __forceinline__ void pdl_warm_l2(const DecodeParams& p, int b, int split, int head, int tid, int stages) {
  if (tid >= C::kTile) return;
  const int page_beg = p.indptr[b];
  const int num_pages = p.indptr[b + 1] - page_beg;
  const int len = num_pages > 0 ? (num_pages - 1) * (1 << p.page_shift) + p.last_len[b] : 0;
  const int chunk = split_chunk(len, p);  // the split's range, as the kernel computes it
  const int tok_beg = split * chunk, tok_end = min(len, tok_beg + chunk);
  const int64_t head_off = (int64_t)head * p.kv_stride_head;
  for (int j = 0; j < stages - 1; ++j) {
    const int tok = tok_beg + j * C::kTile + tid;
    const int idx = page_beg + (tok >> p.page_shift);
    if (tok >= tok_end || unsigned(idx) >= unsigned(p.num_indices)) return;
    int pid = p.indices[idx];
    pid = unsigned(pid) < unsigned(p.num_pool_pages) ? pid : 0;
    const int64_t off =
        (int64_t)pid * p.kv_stride_page + (int64_t)(tok & ((1 << p.page_shift) - 1)) * p.kv_stride_tok + head_off;
#pragma unroll
    for (int line = 0; line < (C::kRowBytesKV + 127) / 128; ++line) {
      prefetch_l2_line(reinterpret_cast<const uint8_t*>(static_cast<const TKV*>(p.k) + off) + line * 128);
      prefetch_l2_line(reinterpret_cast<const uint8_t*>(static_cast<const TKV*>(p.v) + off) + line * 128);
    }
  }
}

template <typename TQ, typename TKV, int D, int STAGES, int PF, bool PF_BULK>
__global__ void __launch_bounds__(128) paged_decode_kernel(const KVP_PARAMS_QUAL DecodeParams p) {
  using C = DecodeCfg<TQ, TKV, D, STAGES, PF>;
#if KVP_TMA
  // the 128-byte swizzle of TMA repeats every 1024 bytes: the stages (and so everything) start on such a boundary
  extern __shared__ __align__(128) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
#else
  extern __shared__ __align__(128) uint8_t smem[];
#endif
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // split is the slowest grid index: the blocks of the splits a short request uses are dispatched before its idle
  // ones; with one split the order (kv head fastest, then request) is the same as with the split fastest
  const int split = blockIdx.z, head = blockIdx.x, b = blockIdx.y;
  const int group = p.group;
  const int qo_head0 = head * group;
#if KVP_TRACE
  uint64_t tr[kTraceStamps] = {globaltimer_after(0), 0, 0, 0, 0, 0};
#endif
  static_assert(!KVP_EARLY_KV || (KVP_PDL && !KVP_TMA), "early KV loads need PDL and the cp.async path");
#if KVP_PDL && !KVP_LATE_TRIGGER
  // a batch-1 launch may release late (below); it learns its active block count from the request's length first
  const bool may_release_late = gridDim.y == 1 && p.late_release_below > 0;
#else
  constexpr bool may_release_late = false;
#endif
  if constexpr (KVP_PDL) {
    if constexpr (!KVP_LATE_TRIGGER) {
      // the next launch's blocks may take the slots this grid frees (experiment 20)
      if (!may_release_late) griddep_launch_dependents();
    }
    if constexpr (!KVP_EARLY_KV) {
      pdl_warm_l2<C, TKV>(p, b, split, head, tid, STAGES);
      griddep_wait();
    }
  }

  constexpr bool kQ8 = C::kFp8 && KVP_FP8_Q;
  // e4m3 -> fp16 is one cvt per pair, e4m3 -> bf16 three more (via fp32): with bf16 q, f16 math converts q once per
  // block instead and runs both mma in fp16 (exact for e4m3 K/V; P in [0, 1] gains 3 mantissa bits)
  constexpr bool kH16 = C::kFp8 && KVP_FP8_F16 && !kQ8 && std::is_same_v<TQ, __nv_bfloat16>;
  using TM = std::conditional_t<kH16, __half, TQ>;  // the mma operand type
  // Experiment 50: with at most 8 q heads per kv head, the 16 tokens of a warp are the M side of the mma and the
  // heads its N side (8 wide), so each product does half the padded work of heads-as-M; q stays in registers as
  // the B operand, and P^T reaches the P.V product's B operand through one movmatrix per 8 tokens.
  constexpr bool kSwap = KVP_SWAP_AB;
  static_assert(!kSwap || !kQ8, "the swapped products take q in 16 bits");
  auto load_q = [&] {
    if constexpr (kQ8 || kH16) return;  // converted from registers after the prologue instead
    const TQ* qb = static_cast<const TQ*>(p.q) + b * p.q_stride_b;
    if constexpr (C::kFp8) {
      for (int i = tid; i < C::kRows * (D / 2); i += C::kThreads) {
        const int r = i / (D / 2), d = 2 * (i % (D / 2));
        const bool valid = r < group;
        cp_async_4(smem + C::kOffQ + q_fp8_slot<D>(r, d), qb + (valid ? (qo_head0 + r) * p.q_stride_h + d : 0), valid);
      }
    } else {
      for (int i = tid; i < C::kRows * (D / 8); i += C::kThreads) {
        const int r = i / (D / 8), c = i % (D / 8);
        const bool valid = r < group;
        cp_async_16(smem + C::kOffQ + swz<D>(r, c), qb + (valid ? (qo_head0 + r) * p.q_stride_h + c * 8 : 0), valid);
      }
    }
  };
  if constexpr (!KVP_EARLY_KV) load_q();  // q does not depend on the page table: requested before the first dependent load
  const int page_beg = p.indptr[b];
  const int num_pages = p.indptr[b + 1] - page_beg;
  const int len = num_pages > 0 ? (num_pages - 1) * (1 << p.page_shift) + p.last_len[b] : 0;
  KVP_STAMP(1, len);
  TQ* out = static_cast<TQ*>(p.o);
  if (len <= 0) {  // empty request: zeros and lse = -inf, written once
    if constexpr (KVP_EARLY_KV) griddep_wait();
    if (split == 0) {
      for (int i = tid; i < group * D; i += C::kThreads)
        out[b * p.o_stride_b + (qo_head0 + i / D) * p.o_stride_h + i % D] = from_float<TQ>(0.f);
      if (p.lse != nullptr && tid < group) p.lse[(int64_t)b * p.num_kv_heads * group + qo_head0 + tid] = -CUDART_INF_F;
    }
    KVP_TRACE_OUT(kTrEmpty, 0, 0);
    return;
  }
  const int chunk = split_chunk(len, p);
  const int n_act = (len + chunk - 1) / chunk;
#if KVP_PDL && !KVP_LATE_TRIGGER
  // Experiment 40: a batch-1 grid with few active blocks (under the host's bound) released at its start lets
  // successor grids pile up, each releasing its own at its start, and their early loads crowd this one's few blocks;
  // it releases after its main loop instead (idle blocks count as they exit). Other launches release now, a few
  // reads after the start.
  const bool release_late = may_release_late && int(gridDim.x) * n_act < p.late_release_below;
  if (may_release_late && !release_late) griddep_launch_dependents();
#else
  constexpr bool release_late = false;
#endif
  if (split >= n_act) {
    KVP_TRACE_OUT(kTrIdle, n_act, 0);
    return;
  }
  const int tok_beg = split * chunk;
  const int tok_end = min(len, tok_beg + chunk);
  const int ntiles = (tok_end - tok_beg + C::kTile - 1) / C::kTile;

  const TKV* kbase = static_cast<const TKV*>(p.k);
  const TKV* vbase = static_cast<const TKV*>(p.v);
  const int64_t head_off = (int64_t)head * p.kv_stride_head;
  int64_t* rows = reinterpret_cast<int64_t*>(smem + C::kOffRows);
  const int page_mask = (1 << p.page_shift) - 1;

  // Row offset (elements) of token `tok` of this kv head, or -1 past the split's end.
  auto row_offset = [&](int tok, int pid) -> int64_t {
    return tok < tok_end ? (int64_t)pid * p.kv_stride_page + (int64_t)(tok & page_mask) * p.kv_stride_tok + head_off
                         : int64_t(-1);
  };
  auto load_pid = [&](int tile) -> int {
    const int tok = tok_beg + tile * C::kTile + tid;
    const int idx = page_beg + (tok >> p.page_shift);
    if (tile >= ntiles || tok >= tok_end || unsigned(idx) >= unsigned(p.num_indices)) return 0;
    const int pid = p.indices[idx];
    return unsigned(pid) < unsigned(p.num_pool_pages) ? pid : 0;
  };
#if KVP_TMA
  const bool tma = p.tma != 0;
  int32_t* pid_ring = reinterpret_cast<int32_t*>(smem + C::kOffPid);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + C::kOffBar);
#endif
  auto store_rows = [&](int tile, int pid) {
    if (tile < ntiles) rows[(tile % C::kSlots) * C::kTile + tid] = row_offset(tok_beg + tile * C::kTile + tid, pid);
#if KVP_TMA
    if (tile < ntiles) pid_ring[(tile % C::kSlots) * C::kTile + tid] = pid;
#endif
  };
  // Experiment 34 (KVP_PAGE_PREFETCH): with rows of 128 bytes (fp8, head_dim 64) a kv head's reads hit each DRAM page
  // in eight scattered pieces, one per kv head's block, at different times. Instead each block requests into L2 the
  // whole token rows (every kv head) of its own 1/num_kv_heads of a tile, one contiguous bulk prefetch per token, PF
  // tiles ahead of the tile its loads start on (PF = 0: just before them); the blocks of the other heads, running the
  // same tiles at about the same time, find their rows there. Only for the heads-contiguous (NHD) layout.
  const int pp_share = (C::kTile + p.num_kv_heads - 1) / p.num_kv_heads;  // tokens of a tile each kv head fetches
  const uint32_t pp_bytes = uint32_t(((int64_t)(p.num_kv_heads - 1) * p.kv_stride_head + D) * int64_t(sizeof(TKV)));
  const bool pp_mine = KVP_PAGE_PREFETCH && p.kv_stride_head == D && tid < C::kTile && tid / pp_share == head;
  auto prefetch_tile = [&](int tile) {
    if (KVP_PAGE_PREFETCH) {
      const int64_t off = pp_mine && tile < ntiles ? rows[(tile % C::kSlots) * C::kTile + tid] : int64_t(-1);
      if (off >= 0) {
        prefetch_l2_bulk(kbase + (off - head_off), pp_bytes);
        prefetch_l2_bulk(vbase + (off - head_off), pp_bytes);
      }
    } else if (PF > 0 && tile < ntiles && tid < C::kTile) {
      const int64_t off = rows[(tile % C::kSlots) * C::kTile + tid];
      if (off >= 0) {
        if constexpr (PF_BULK) {
          prefetch_l2_bulk(kbase + off, C::kRowBytesKV);
          prefetch_l2_bulk(vbase + off, C::kRowBytesKV);
        } else {
#pragma unroll
          for (int line = 0; line < (C::kRowBytesKV + 127) / 128; ++line) {
            prefetch_l2_line(reinterpret_cast<const uint8_t*>(kbase + off) + line * 128);
            prefetch_l2_line(reinterpret_cast<const uint8_t*>(vbase + off) + line * 128);
          }
        }
      }
    }
  };
  // Experiment 47: this thread copies 16-byte chunk ld_chunk of rows ld_row + kLdRowStep * it of each tile. Where a
  // step spans whole swizzle periods (8 rows, or 8 lines for short rows) the destinations step by a constant.
  constexpr int kLdRowStep = C::kThreads / C::kChunksKV, kLdIters = C::kTile / kLdRowStep;
  constexpr int kLdDstStep = kLdRowStep * C::kRowBytesKV;
  constexpr bool kLdConstStep = C::kRowBytesKV >= 128 ? kLdRowStep % 8 == 0 : kLdDstStep % 1024 == 0;
  static_assert(C::kThreads % C::kChunksKV == 0 && C::kTile % kLdRowStep == 0, "a tile is whole load steps");
  const int ld_row = tid / C::kChunksKV, ld_chunk = tid % C::kChunksKV;
  const int ld_dst = swz_rows<C::kRowBytesKV>(ld_row, ld_chunk);
  const int ld_col = ld_chunk * (16 / int(sizeof(TKV)));
  auto ld_dst_at = [&](int it) {
    return kLdConstStep ? ld_dst + it * kLdDstStep : swz_rows<C::kRowBytesKV>(ld_row + it * kLdRowStep, ld_chunk);
  };
  // early (experiment 38): before griddepcontrol.wait nothing is issued for the newest token's rows, which the kernel
  // before this one may still be writing; they are loaded after the wait
  auto load_tile = [&](int tile, bool early = false) {
    if (tile >= ntiles) return;
    const int stage = tile % STAGES;
#if KVP_TMA
    if (tma) {  // one thread: a box of 16 tokens per page piece that holds a token of the split, K and V
      if (tid == 0) {
        const int tok0 = tok_beg + tile * C::kTile;
        const int nbox = min(C::kTile / 16, (tok_end - tok0 + 15) / 16);
        constexpr uint32_t kBoxBytes = 16 * C::kRowBytesKV;
        mbarrier_arrive_expect_tx(bars + stage, 2 * kBoxBytes * nbox);
        const int32_t* pr = pid_ring + (tile % C::kSlots) * C::kTile;
        for (int i = 0; i < nbox; ++i) {
          const int tok = tok0 + 16 * i;
          uint8_t* dst = smem + C::kOffK + stage * C::kStageBytes + i * kBoxBytes;
          tma_load_4d(dst, &p.tma_k, bars + stage, 0, head, tok & page_mask, pr[16 * i]);
          tma_load_4d(dst + STAGES * C::kStageBytes, &p.tma_v, bars + stage, 0, head, tok & page_mask, pr[16 * i]);
        }
      }
      return;
    }
#endif
    uint8_t* ks = smem + C::kOffK + stage * C::kStageBytes;
    uint8_t* vs = smem + C::kOffV + stage * C::kStageBytes;
#if KVP_OLD_LOADS
    const int64_t* r_all = rows + (tile % C::kSlots) * C::kTile;
#pragma unroll
    for (int it = 0; it < C::kTile * C::kChunksKV / C::kThreads; ++it) {
      const int i = tid + it * C::kThreads;
      const int r = i / C::kChunksKV, c = i % C::kChunksKV;
      if (KVP_EARLY_KV && early && tok_beg + tile * C::kTile + r == len - 1) continue;
      const int64_t off = r_all[r];
      const bool valid = off >= 0;
      const int64_t src = (valid ? off : 0) + c * (16 / int(sizeof(TKV)));
      const int dst = swz_rows<C::kRowBytesKV>(r, c);
      cp_async_16(ks + dst, kbase + src, valid);
      cp_async_16(vs + dst, vbase + src, valid);
    }
    return;
#endif
    const int64_t* r_off = rows + (tile % C::kSlots) * C::kTile + ld_row;
    if (!(KVP_EARLY_KV && early) && tok_beg + (tile + 1) * C::kTile <= tok_end) {  // every row valid: no zero-fill
#pragma unroll
      for (int it = 0; it < kLdIters; ++it) {
        const int64_t src = r_off[it * kLdRowStep] + ld_col;
        cp_async_16(ks + ld_dst_at(it), kbase + src);
        cp_async_16(vs + ld_dst_at(it), vbase + src);
      }
      return;
    }
#pragma unroll
    for (int it = 0; it < kLdIters; ++it) {
      const int r = ld_row + it * kLdRowStep;
      if (KVP_EARLY_KV && early && tok_beg + tile * C::kTile + r == len - 1) continue;
      const int64_t off = r_off[it * kLdRowStep];
      const bool valid = off >= 0;
      const int64_t src = (valid ? off : 0) + ld_col;
      cp_async_16(ks + ld_dst_at(it), kbase + src, valid);
      cp_async_16(vs + ld_dst_at(it), vbase + src, valid);
    }
  };

  // ---- prologue: the first row offsets, L2 prefetch of the tiles beyond the smem ring, first stages
#if KVP_TMA
  if (tma && tid == 0) {
    for (int s_i = 0; s_i < STAGES; ++s_i) mbarrier_init(bars + s_i, 1);
    fence_barrier_init();
  }
#endif
  // page ids of the tiles after the ring's, loaded KVP_PID_AHEAD iterations before their rows are needed: each
  // iteration stalls on the oldest until it arrives, so one iteration of lookahead paces the loop at one L2 round
  // trip per tile
  int pending[KVP_PID_AHEAD] = {};
  if (tid < C::kTile) {
    int pids[C::kLookahead + 1];
#pragma unroll
    for (int j = 0; j <= C::kLookahead; ++j) pids[j] = load_pid(j);
#pragma unroll
    for (int k = 0; k < KVP_PID_AHEAD; ++k) pending[k] = load_pid(C::kLookahead + 1 + k);
#pragma unroll
    for (int j = 0; j <= C::kLookahead; ++j) store_rows(j, pids[j]);
  }
  __syncthreads();
#pragma unroll
  for (int j = KVP_PAGE_PREFETCH ? 0 : STAGES - 1; j < C::kLookahead; ++j) prefetch_tile(j);  // page: the ring's too
#pragma unroll
  for (int j = 0; j < STAGES - 1; ++j) {
    load_tile(j, true);
    cp_async_commit();
  }
  if constexpr (KVP_EARLY_KV) {  // now the previous kernel's writes are visible: q, and the newest token's rows
    griddep_wait();
    load_q();
    const int rel = len - 1 - tok_beg;
    if (len - 1 < tok_end && rel < (STAGES - 1) * C::kTile && tid < C::kChunksKV) {
      const int stage = (rel / C::kTile) % STAGES, r = rel % C::kTile;
      const int64_t src = rows[(rel / C::kTile % C::kSlots) * C::kTile + r] + tid * (16 / int(sizeof(TKV)));
      const int dst = swz_rows<C::kRowBytesKV>(r, tid);
      cp_async_16(smem + C::kOffK + stage * C::kStageBytes + dst, kbase + src, true);
      cp_async_16(smem + C::kOffV + stage * C::kStageBytes + dst, vbase + src, true);
    }
    cp_async_commit();
  }
  if constexpr (kQ8 || kH16) {  // q converted once per block while the first KV loads are in flight:
    // kQ8 to e4m3 (round to nearest, saturating) in K's row layout; kH16 to fp16 (saturating at +-65504, NaN kept)
    // in the fp8 K operand layout
    auto sat_f16 = [](float x) { return x != x ? x : fminf(fmaxf(x, -65504.f), 65504.f); };
    const TQ* qb = static_cast<const TQ*>(p.q) + b * p.q_stride_b;
    for (int i = tid; i < C::kRows * (D / 2); i += C::kThreads) {
      const int r = i / (D / 2), d = 2 * (i % (D / 2));
      float2 f = make_float2(0.f, 0.f);
      if (r < group) {
        const TQ* src = qb + (qo_head0 + r) * p.q_stride_h + d;
        f = make_float2(to_float(src[0]), to_float(src[1]));
      }
      if constexpr (kQ8) {
        *reinterpret_cast<__nv_fp8x2_storage_t*>(smem + C::kOffQ + swz_rows<D>(r, d >> 4) + (d & 15)) =
            __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);
      } else {
        *reinterpret_cast<uint32_t*>(smem + C::kOffQ + q_fp8_slot<D>(r, d)) = pack2<__half>(sat_f16(f.x), sat_f16(f.y));
      }
    }
  }

  // ---- main loop
  float m[2] = {-CUDART_INF_F, -CUDART_INF_F}, l[2] = {0.f, 0.f};
  // heads-as-M: o[i] holds dims 8i.. of rows lane/4 (0, 1) and lane/4 + 8 (2, 3); swapped: o[i] holds heads 2c, 2c+1
  // (c = lane % 4) of dims 16i + lane/4 (0, 1) and 16i + lane/4 + 8 (2, 3), and m, l are those two heads'
  constexpr int kOTiles = kSwap ? D / 16 : D / 8;
  float o[kOTiles][4];
#pragma unroll
  for (int i = 0; i < kOTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  uint32_t qf[kSwap ? D / 16 : 1][2];  // swapped: q (heads 0-7) as the B operand of every k-step, loaded once

  // One tile of this warp's 16 tokens with the swapped products (experiment 50).
  auto swapped_tile = [&](int t, int lrow, int lhalf, int warp_tok0, const uint8_t* ks, const uint8_t* vs) {
    if constexpr (kSwap) {
      if (t == 0) {  // the first tile's barrier has published q: heads 0-7, chunks 4kp .. 4kp + 3 per ldmatrix
#pragma unroll
        for (int kp = 0; kp < D / 32; ++kp) {
          uint32_t r[4];
          ldmatrix_x4(r, smem + C::kOffQ + swz<D>(lane & 7, 4 * kp + (lane >> 3)));
          qf[2 * kp][0] = r[0];
          qf[2 * kp][1] = r[1];
          qf[2 * kp + 1][0] = r[2];
          qf[2 * kp + 1][1] = r[3];
        }
      }
      // S^T = K Q^T: rows are tokens lane/4 (0, 1) and lane/4 + 8 (2, 3), columns heads 2c, 2c+1
      float st[4] = {0.f, 0.f, 0.f, 0.f};
      if constexpr (C::kFp8) {
        // raw e4m3 rows give a lane dims 4c..4c+3 of a 16-dim chunk: k-indices {2c, 2c+1} and {2c+8, 2c+9}, as q's
        // permuted layout (q_fp8_slot) has them
#pragma unroll
        for (int kp = 0; kp < D / 32; ++kp) {
          uint32_t raw[4];  // [chunk half][token half]
          ldmatrix_x4(raw, ks + swz_rows<C::kRowBytesKV>(lrow, 2 * kp + lhalf));
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint32_t lo = raw[2 * h], hi = raw[2 * h + 1];
            const uint32_t a[4] = {e4m3x2_to<TM>(lo & 0xffff), e4m3x2_to<TM>(hi & 0xffff), e4m3x2_to<TM>(lo >> 16),
                                   e4m3x2_to<TM>(hi >> 16)};
            mma_16816<TM>(st, a, qf[2 * kp + h]);
          }
        }
      } else {
#pragma unroll
        for (int ks_i = 0; ks_i < D / 16; ++ks_i) {
          uint32_t a[4];
          ldmatrix_x4(a, ks + swz<D>(lrow, 2 * ks_i + lhalf));
          mma_16816<TQ>(st, a, qf[ks_i]);
        }
      }
      float mx[2] = {-CUDART_INF_F, -CUDART_INF_F};
      const bool warp_full = warp_tok0 + 16 <= tok_end;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = warp_tok0 + (lane >> 2) + (e >> 1) * 8;
        float x = p.has_cap ? p.score_post * tanhf(st[e] * p.score_pre) : st[e] * p.score_pre;
        if (!warp_full) x = tok < tok_end ? x : -CUDART_INF_F;
        st[e] = x;
        mx[e & 1] = fmaxf(mx[e & 1], x);
      }
      float alpha[2], muse[2];
      const bool grow = online_softmax_step<4, 32>(mx, m, l, alpha, muse);  // a head's column: 8 lanes
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        st[e] = exp2f(st[e] - muse[e & 1]);
        l[e & 1] += st[e];
      }
      if (!KVP_LAZY_RESCALE || __any_sync(0xffffffff, grow)) rescale_o<true>(o, alpha);
      // P^T as the B operand (tokens x heads): lane 4h + c needs tokens 2c, 2c+1 (and + 8) of head h
      const uint32_t pb[2] = {movmatrix_trans(pack2<TM>(st[0], st[1])), movmatrix_trans(pack2<TM>(st[2], st[3]))};
      if constexpr (C::kFp8) {
        // O^T += V^T P^T per 16-dim chunk: a transposed ldmatrix of raw e4m3 rows gives a lane dims 2g, 2g+1 of
        // tokens 2c, 2c+1; the byte permute makes the even dim the A tile's row g and the odd dim its row g + 8
#pragma unroll
        for (int qp = 0; qp < D / 32; ++qp) {
          uint32_t lo[2], hi[2];
          ld_v_e4m3_pairs<C::kRowBytesKV>(vs, lrow, lhalf, qp, lo, hi);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint32_t a[4] = {e4m3x2_to<TM>(lo[h] & 0xffff), e4m3x2_to<TM>(lo[h] >> 16),
                                   e4m3x2_to<TM>(hi[h] & 0xffff), e4m3x2_to<TM>(hi[h] >> 16)};
            mma_16816<TM>(o[2 * qp + h], a, pb);
          }
        }
      } else {
        // O^T += V^T P^T: V^T's 16 x 16 A tile (dims x tokens) by a transposed ldmatrix of the V rows
        const int vrow = warp * 16 + ((lane >> 4) & 1) * 8 + (lane & 7), vhalf = (lane >> 3) & 1;
#pragma unroll
        for (int md = 0; md < D / 16; ++md) {
          uint32_t a[4];
          ldmatrix_x4_trans(a, vs + swz<D>(vrow, 2 * md + vhalf));
          mma_16816<TQ>(o[md], a, pb);
        }
      }
    }
  };

  for (int t = 0; t < ntiles; ++t) {
#if KVP_TMA
    if (tma) {
      cp_async_wait<0>();  // q
      mbarrier_wait(bars + t % STAGES, (t / STAGES) & 1);
      const int valid = tok_end - (tok_beg + t * C::kTile);
      if (valid < C::kTile) {  // TMA read whole boxes: rows past the split's end may hold anything, even NaN
        uint8_t* vz = smem + C::kOffV + (t % STAGES) * C::kStageBytes + valid * C::kRowBytesKV;
        for (int i = tid; i < (C::kTile - valid) * C::kChunksKV; i += C::kThreads)
          *reinterpret_cast<uint4*>(vz + i * 16) = make_uint4(0, 0, 0, 0);
      }
    } else {
      cp_async_wait<STAGES - 2>();
    }
#else
    if (KVP_EARLY_KV && t == 0) {
      cp_async_wait<0>();  // the group after the wait (q, the newest rows) is the last committed
    } else {
      cp_async_wait<STAGES - 2>();
    }
#endif
    __syncthreads();
#if KVP_TRACE
    if (t == 0) KVP_STAMP(2, 0);
#endif
    prefetch_tile(t + C::kLookahead);
    load_tile(t + STAGES - 1);
    cp_async_commit();
    if (tid < C::kTile) {
      store_rows(t + C::kLookahead + 1, pending[0]);
#pragma unroll
      for (int k = 0; k + 1 < KVP_PID_AHEAD; ++k) pending[k] = pending[k + 1];
      pending[KVP_PID_AHEAD - 1] = load_pid(t + C::kLookahead + 1 + KVP_PID_AHEAD);
    }
    const int stage = t % STAGES;
    const uint8_t* ks = smem + C::kOffK + stage * C::kStageBytes;
    const uint8_t* vs = smem + C::kOffV + stage * C::kStageBytes;
    const int lrow = warp * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);  // ldmatrix row address of this lane
    const int lhalf = lane >> 4;                                     // ... and which of two chunks
    const int warp_tok0 = tok_beg + t * C::kTile + warp * 16;
    if (warp_tok0 >= tok_end) continue;  // this warp's 16 rows are all past the end (zero-filled)

    if constexpr (kSwap) {
      swapped_tile(t, lrow, lhalf, warp_tok0, ks, vs);
      continue;
    }
    // S = Q K^T for this warp's 16 tokens (two n-tiles of 8)
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    if constexpr (kQ8) {
#pragma unroll
      for (int kp = 0; kp < D / 32; ++kp) {  // raw e4m3 K rows are the B fragments of m16n8k32 as loaded
        uint32_t raw[4], a[4];  // raw: [chunk half][token half]
        ldmatrix_x4(raw, ks + swz_rows<C::kRowBytesKV>(lrow, 2 * kp + lhalf));
        ldmatrix_x4(a, smem + C::kOffQ + swz_rows<D>(lane & 15, 2 * kp + (lane >> 4)));
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const uint32_t bk[2] = {raw[nt], raw[2 + nt]};
          mma_16832_e4m3(s[nt], a, bk);
        }
      }
    } else if constexpr (C::kFp8) {
#pragma unroll
      for (int kp = 0; kp < D / 32; ++kp) {  // two 16-dim chunks of raw e4m3 per ldmatrix
        uint32_t raw[4];  // [chunk half][token half]
        ldmatrix_x4(raw, ks + swz_rows<C::kRowBytesKV>(lrow, 2 * kp + lhalf));
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint32_t a[4];
          ldmatrix_x4(a, smem + C::kOffQ + swz<D>(lane & 15, 2 * (2 * kp + h) + (lane >> 4)));
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
            const uint32_t w = raw[2 * h + nt];
            const uint32_t bk[2] = {e4m3x2_to<TM>(w & 0xffff), e4m3x2_to<TM>(w >> 16)};
            mma_16816<TM>(s[nt], a, bk);
          }
        }
      }
    } else {
#pragma unroll
      for (int ks_i = 0; ks_i < D / 16; ++ks_i) {
        uint32_t a[4], bk[4];
        ldmatrix_x4(a, smem + C::kOffQ + swz<D>(lane & 15, 2 * ks_i + (lane >> 4)));
        const int j = lane >> 3, r8 = lane & 7;
        ldmatrix_x4(bk, ks + swz<D>(warp * 16 + (j >> 1) * 8 + r8, 2 * ks_i + (j & 1)));
        mma_16816<TQ>(s[0], a, bk);
        mma_16816<TQ>(s[1], a, bk + 2);
      }
    }
    // online softmax in the log2 domain; rows lane/4 (elements 0,1) and lane/4+8 (elements 2,3)
    float mx[2] = {-CUDART_INF_F, -CUDART_INF_F};
    const bool warp_full = warp_tok0 + 16 <= tok_end;  // warp-uniform: only a split's last tile masks (experiment 47)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = warp_tok0 + nt * 8 + (lane & 3) * 2 + (e & 1);
        float x = p.has_cap ? p.score_post * tanhf(s[nt][e] * p.score_pre) : s[nt][e] * p.score_pre;
        if (KVP_OLD_LOADS || !warp_full) x = tok < tok_end ? x : -CUDART_INF_F;
        s[nt][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    }
    float alpha[2], muse[2];
    const bool grow = online_softmax_step<1, 4>(mx, m, l, alpha, muse);  // a q head's row: 4 lanes
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - muse[e >> 1]);
        l[e >> 1] += s[nt][e];
      }
    }
    if (!KVP_LAZY_RESCALE || __any_sync(0xffffffff, grow)) rescale_o<false>(o, alpha);  // alpha 1 where m kept
    const uint32_t pa[4] = {pack2<TM>(s[0][0], s[0][1]), pack2<TM>(s[0][2], s[0][3]), pack2<TM>(s[1][0], s[1][1]),
                            pack2<TM>(s[1][2], s[1][3])};
    if constexpr (C::kFp8) {
      // A transposed 16-bit ldmatrix of raw e4m3 rows gives a lane dims (2n, 2n+1) of tokens (2c, 2c+1);
      // a byte permute splits that into the even-dim and the odd-dim operand: o[2q] accumulates the even dims
      // of chunk q, o[2q+1] the odd ones.
#pragma unroll
      for (int qp = 0; qp < D / 32; ++qp) {
        uint32_t lo[2], hi[2];
        ld_v_e4m3_pairs<C::kRowBytesKV>(vs, lrow, lhalf, qp, lo, hi);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t even[2] = {e4m3x2_to<TM>(lo[h] & 0xffff), e4m3x2_to<TM>(hi[h] & 0xffff)};
          const uint32_t odd[2] = {e4m3x2_to<TM>(lo[h] >> 16), e4m3x2_to<TM>(hi[h] >> 16)};
          mma_16816<TM>(o[2 * (2 * qp + h)], pa, even);
          mma_16816<TM>(o[2 * (2 * qp + h) + 1], pa, odd);
        }
      }
    } else {
#pragma unroll
      for (int nd = 0; nd < D / 16; ++nd) {
        uint32_t bv[4];
        const int j = lane >> 3, r8 = lane & 7;
        ldmatrix_x4_trans(bv, vs + swz<D>(warp * 16 + (j & 1) * 8 + r8, 2 * nd + (j >> 1)));
        mma_16816<TQ>(o[2 * nd], pa, bv);
        mma_16816<TQ>(o[2 * nd + 1], pa, bv + 2);
      }
    }
  }
  cp_async_wait<0>();
  KVP_STAMP(3, 0);
  if (KVP_PDL && (KVP_LATE_TRIGGER || release_late)) {
    // experiment 23: the next launch comes in once every block is past its loop (idle blocks count as they exit),
    // when most slots are free at once, so a grid short of the SM's slots does not crowd its successor's blocks
    griddep_launch_dependents();
  }

  // ---- combine the 4 warps
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int mask = kSwap ? 4 : 1; mask < (kSwap ? 32 : 4); mask <<= 1)  // the lanes sharing the row (as in the loop)
      l[r] += __shfl_xor_sync(0xffffffff, l[r], mask);
  }
  __syncthreads();  // every warp is done with the stages, which the reduction buffer aliases
  float* red_m = reinterpret_cast<float*>(smem + C::kOffRed);
  float* red_l = red_m + C::kWarps * C::kRows;
  float* obuf = reinterpret_cast<float*>(smem + C::kOffK);
  const int h0 = warp * 16 + 2 * (lane & 3);  // swapped: this lane's two heads, rows of the warp's slice
  if (kSwap && lane < 4) {  // rows 0-7 only; the combine reads rows < group
    red_m[h0] = m[0];
    red_m[h0 + 1] = m[1];
    red_l[h0] = l[0];
    red_l[h0 + 1] = l[1];
  } else if (!kSwap && (lane & 3) == 0) {
    red_m[warp * 16 + (lane >> 2)] = m[0];
    red_m[warp * 16 + (lane >> 2) + 8] = m[1];
    red_l[warp * 16 + (lane >> 2)] = l[0];
    red_l[warp * 16 + (lane >> 2) + 8] = l[1];
  }
  if constexpr (kSwap) {
#pragma unroll
    for (int md = 0; md < D / 16; ++md) {  // fp8: rows g / g + 8 of a tile are dims 2g / 2g + 1 of its chunk
      const int dim = md * 16 + (C::kFp8 ? 2 : 1) * (lane >> 2), dim2 = dim + (C::kFp8 ? 1 : 8);
      obuf[h0 * D + dim] = o[md][0];
      obuf[(h0 + 1) * D + dim] = o[md][1];
      obuf[h0 * D + dim2] = o[md][2];
      obuf[(h0 + 1) * D + dim2] = o[md][3];
    }
  } else if constexpr (C::kFp8) {  // o[2q] / o[2q+1] hold dims 16q + 4c + {0, 2} / {1, 3}
#pragma unroll
    for (int q = 0; q < D / 16; ++q) {
      float* r0 = obuf + (warp * 16 + (lane >> 2)) * D + q * 16 + (lane & 3) * 4;
      *reinterpret_cast<float4*>(r0) = make_float4(o[2 * q][0], o[2 * q + 1][0], o[2 * q][1], o[2 * q + 1][1]);
      *reinterpret_cast<float4*>(r0 + 8 * D) = make_float4(o[2 * q][2], o[2 * q + 1][2], o[2 * q][3], o[2 * q + 1][3]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      const int col = i * 8 + (lane & 3) * 2;
      float* r0 = obuf + (warp * 16 + (lane >> 2)) * D + col;
      *reinterpret_cast<float2*>(r0) = make_float2(o[i][0], o[i][1]);
      *reinterpret_cast<float2*>(r0 + 8 * D) = make_float2(o[i][2], o[i][3]);
    }
  }
  __syncthreads();

  // Final output of row r, columns 4*c4..4*c4+3, and its lse (log2 domain in, natural log out).
  auto write_out = [&](int r, int c4, float4 acc, float lse2) {
    TQ* dst = out + b * p.o_stride_b + (qo_head0 + r) * p.o_stride_h + c4 * 4;
    dst[0] = from_float<TQ>(acc.x * p.v_scale);
    dst[1] = from_float<TQ>(acc.y * p.v_scale);
    dst[2] = from_float<TQ>(acc.z * p.v_scale);
    dst[3] = from_float<TQ>(acc.w * p.v_scale);
    if (p.lse != nullptr && c4 == 0) p.lse[(int64_t)b * p.num_kv_heads * group + qo_head0 + r] = lse2 * CUDART_LN2_F;
  };
  const bool single = n_act == 1;
#if KVP_CLUSTER_MERGE
  const bool in_cluster = p.cluster && !single;
  float* part_lse_smem = reinterpret_cast<float*>(smem + C::kOffPartLse);
#endif
  const int64_t part_row0 = (((int64_t)b * p.num_kv_heads + head) * p.num_splits) * group;
  for (int i = tid; i < group * (D / 4); i += C::kThreads) {
    const int r = i / (D / 4), c4 = i % (D / 4);
    float mmax = -CUDART_INF_F;
#pragma unroll
    for (int w = 0; w < C::kWarps; ++w) mmax = fmaxf(mmax, red_m[w * 16 + r]);
    const float mu = mmax == -CUDART_INF_F ? 0.f : mmax;
    float lsum = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < C::kWarps; ++w) {
      const float sc = exp2f(red_m[w * 16 + r] - mu);
      lsum += sc * red_l[w * 16 + r];
      const float4 ow = *reinterpret_cast<const float4*>(obuf + (w * 16 + r) * D + c4 * 4);
      acc.x += sc * ow.x;
      acc.y += sc * ow.y;
      acc.z += sc * ow.z;
      acc.w += sc * ow.w;
    }
    const float inv = 1.f / lsum;
    acc.x *= inv;
    acc.y *= inv;
    acc.z *= inv;
    acc.w *= inv;
    const float lse2 = mu + log2f(lsum);
    if (single) {
      write_out(r, c4, acc, lse2);
#if KVP_CLUSTER_MERGE
    } else if (in_cluster) {  // into warp 0's row r of the reduction buffer, which only this thread reads
      *reinterpret_cast<float4*>(obuf + r * D + c4 * 4) = acc;
      if (c4 == 0) part_lse_smem[r] = lse2;
#endif
    } else {
      const int64_t row = part_row0 + (int64_t)split * group + r;
      *reinterpret_cast<float4*>(p.part_o + row * D + c4 * 4) = acc;
      if (c4 == 0) p.part_lse[row] = lse2;
    }
  }
  if (single) {
    KVP_STAMP(4, 0);
    KVP_TRACE_OUT(kTrSingle, n_act, ntiles);
    return;
  }

#if KVP_CLUSTER_MERGE
  if (in_cluster) {  // split s is cluster rank s; split 0 merges the partials the active splits hold in shared memory
    cluster_sync();
    KVP_STAMP(4, 0);
    if (split == 0) {
      for (int i = tid; i < group * (D / 4); i += C::kThreads) {
        const int r = i / (D / 4), c4 = i % (D / 4);
        // eight splits per round of loads (sixteen would hold 80 registers and cost the 3-deep twins their
        // fourth block per SM), merged with a running max
        constexpr int kChunk = 8;
        float mrun = -CUDART_INF_F, wsum = 0.f;
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int s0 = 0; s0 < n_act; s0 += kChunk) {
          float ls[kChunk];
          float4 ov[kChunk];
#pragma unroll
          for (int j = 0; j < kChunk; ++j) {  // every load of the round issued before any is used
            if (s0 + j < n_act) {
              ls[j] = ld_cluster_f32(cluster_peer_addr(part_lse_smem + r, s0 + j));
              ov[j] = ld_cluster_f32x4(cluster_peer_addr(obuf + r * D + c4 * 4, s0 + j));
            }
          }
          float mnew = mrun;
#pragma unroll
          for (int j = 0; j < kChunk; ++j) mnew = s0 + j < n_act ? fmaxf(mnew, ls[j]) : mnew;
          const float keep = mrun == -CUDART_INF_F ? 0.f : exp2f(mrun - mnew);
          wsum *= keep;
          acc = make_float4(acc.x * keep, acc.y * keep, acc.z * keep, acc.w * keep);
#pragma unroll
          for (int j = 0; j < kChunk; ++j) {
            if (s0 + j < n_act) {
              const float ws = exp2f(ls[j] - mnew);
              wsum += ws;
              acc.x += ws * ov[j].x;
              acc.y += ws * ov[j].y;
              acc.z += ws * ov[j].z;
              acc.w += ws * ov[j].w;
            }
          }
          mrun = mnew;
        }
        const float inv = 1.f / wsum;
        write_out(r, c4, make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv), mrun + log2f(wsum));
      }
    }
    cluster_sync();  // no split exits (freeing its shared memory) before split 0 has read it
    KVP_STAMP(5, 0);
    KVP_TRACE_OUT(split == 0 ? kTrMerger : kTrPartial, n_act, ntiles);
    return;
  }
#endif
  // ---- the last split of (request, kv head) to finish merges all partials; no second launch
  int* flag = reinterpret_cast<int*>(smem + C::kOffFlag);
  // Experiment 52: the barrier orders every thread's partial stores before thread 0's release, and its acquire
  // before the merge's loads (L2 reads with .cg), so no thread needs a __threadfence (MEMBAR.SC) of its own
  __syncthreads();
  if (tid == 0) {
    int32_t* ctr = p.counters + (int64_t)b * p.num_kv_heads + head;
    const int done = atom_add_acq_rel_gpu(ctr, 1);
    const bool last = done == n_act - 1;
    if (last) *ctr = 0;  // ready for the next launch (CUDA-graph replays reuse the counters)
    *flag = last;
    KVP_STAMP(4, done);
  }
  __syncthreads();
  if (!*flag) {
    KVP_TRACE_OUT(kTrPartial, n_act, ntiles);
    return;
  }
  // split weights once: lse of every (split, row) into shared memory in one round of loads, then normalised
  float* w = reinterpret_cast<float*>(smem + C::kOffK);  // [n_act][group]; the stages are free again
  const int nw = n_act * group;
  for (int i = tid; i < nw; i += C::kThreads) w[i] = __ldcg(p.part_lse + part_row0 + i);
  __syncthreads();
  if (tid < group) {
    float mmax = -CUDART_INF_F;
    for (int s_i = 0; s_i < n_act; ++s_i) mmax = fmaxf(mmax, w[s_i * group + tid]);
    float wsum = 0.f;
    for (int s_i = 0; s_i < n_act; ++s_i) wsum += exp2f(w[s_i * group + tid] - mmax);
    red_m[tid] = mmax;
    red_l[tid] = wsum;
  }
  __syncthreads();
  for (int i = tid; i < nw; i += C::kThreads) {
    const int r = i % group;
    w[i] = exp2f(w[i] - red_m[r]) / red_l[r];
  }
  __syncthreads();
  for (int i = tid; i < group * (D / 4); i += C::kThreads) {
    const int r = i / (D / 4), c4 = i % (D / 4);
    const float* src = p.part_o + (part_row0 + r) * D + c4 * 4;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
    for (int s_i = 0; s_i < n_act; ++s_i) {
      const float ws = w[s_i * group + r];
      const float4 v = __ldcg(reinterpret_cast<const float4*>(src + (int64_t)s_i * group * D));
      acc.x += ws * v.x;
      acc.y += ws * v.y;
      acc.z += ws * v.z;
      acc.w += ws * v.w;
    }
    write_out(r, c4, acc, red_m[r] + log2f(red_l[r]));
  }
  KVP_STAMP(5, 0);
  KVP_TRACE_OUT(kTrMerger, n_act, ntiles);
}

}  // namespace kvp
