// Experiment 35: the whole-page decode kernel (KVP_WHOLE_PAGE). One thread block = (split, group of 8 kv heads,
// request): it reads each token's rows of all 8 kv heads as one contiguous 1 KB span (NHD layout), so DRAM sees
// whole pages instead of one kv head's 128-byte rows at a time (experiment 33: 1.33-1.37x a contiguous read for
// such rows, 1.06-1.13x for whole pages). Warp w computes kv head w over every 16-token tile, so a warp owns its
// rows' softmax state for the whole split and there is no cross-warp combine; the splits of a request merge as in
// paged_decode.cuh (the last to finish). Only for 128-byte rows (fp8 KV at head_dim 128, 16-bit KV at head_dim 64),
// kv head counts that are a multiple of 8 and GQA groups up to kWpMaxGroup; the wrapper keeps the per-head kernel
// elsewhere.
#pragma once
#include "paged_decode.cuh"

namespace kvp {

constexpr int kWpHeads = 8, kWpMaxGroup = 4;

template <typename TQ, typename TKV, int D, int STAGES>
struct WholePageCfg {
  static constexpr int kThreads = 32 * kWpHeads, kTile = 16;
  static constexpr bool kFp8 = sizeof(TKV) == 1;
  static constexpr int kRowBytesKV = D * int(sizeof(TKV));
  static constexpr int kTokBytes = kWpHeads * kRowBytesKV;  // one token's rows of the block's kv heads
  static constexpr int kTokChunks = kTokBytes / 16;
  static constexpr int kStageBytes = kTile * kTokBytes;
  static constexpr int kQRowBytes = D * 2;  // q in the mma operand layout (bf16/fp16)
  static constexpr int kSlots = STAGES + 1;  // row offsets: the ring's tiles and the one being resolved
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + STAGES * kStageBytes;
  static constexpr int kOffQ = kOffV + STAGES * kStageBytes;
  static constexpr int kOffQZero = kOffQ + kWpHeads * kWpMaxGroup * kQRowBytes;  // the padding rows of every head
  static constexpr int kOffRows = kOffQZero + kQRowBytes;
  static constexpr int kOffRed = kOffRows + kSlots * kTile * 8;
  static constexpr int kOffFlag = kOffRed + 2 * kWpHeads * kWpMaxGroup * 4;
  static constexpr int kSmemBytes = kOffFlag + 16;
  static_assert(kRowBytesKV == 128, "the whole-page kernel is for 128-byte KV rows");
  static_assert(256 * kWpHeads * kWpMaxGroup * 4 <= 2 * STAGES * kStageBytes, "merge weights do not fit");
};

// Byte offset of 16-byte chunk `c` of kv head `h`'s row of token `t` in a stage: tokens of kTokBytes, swizzled by
// token so that ldmatrix's 8 consecutive tokens of one head and chunk hit 8 different bank groups.
__device__ __forceinline__ int wp_kv_off(int t, int h, int c) { return (t * kWpHeads + h) * 128 + ((c ^ (t & 7)) << 4); }

template <typename TQ, typename TKV, int D, int STAGES>
__global__ void __launch_bounds__(32 * kWpHeads, 2) paged_decode_wp_kernel(const DecodeParams p) {
  using C = WholePageCfg<TQ, TKV, D, STAGES>;
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int split = blockIdx.z, hgrp = blockIdx.x, b = blockIdx.y;
  const int group = p.group;
  const int head = hgrp * kWpHeads + warp;  // this warp's kv head
  const int qo_base = hgrp * kWpHeads * group;  // the block's first q head; its q heads are contiguous
  if constexpr (KVP_PDL) {
    if constexpr (!KVP_LATE_TRIGGER) griddep_launch_dependents();
    griddep_wait();
  }

  constexpr bool kH16 = C::kFp8 && KVP_FP8_F16 && std::is_same_v<TQ, __nv_bfloat16>;
  using TM = std::conditional_t<kH16, __half, TQ>;
  const TQ* qb = static_cast<const TQ*>(p.q) + b * p.q_stride_b;
  const int qrows = kWpHeads * group;  // q line L = h * group + r
  if constexpr (!kH16) {
    if constexpr (C::kFp8) {
      for (int i = tid; i < qrows * (D / 2); i += C::kThreads) {
        const int L = i / (D / 2), d = 2 * (i % (D / 2));
        cp_async_4(smem + C::kOffQ + q_fp8_slot<D>(L, d), qb + (qo_base + L) * p.q_stride_h + d, true);
      }
    } else {
      for (int i = tid; i < qrows * (D / 8); i += C::kThreads) {
        const int L = i / (D / 8), c = i % (D / 8);
        cp_async_16(smem + C::kOffQ + swz<D>(L, c), qb + (qo_base + L) * p.q_stride_h + c * 8, true);
      }
    }
  }
  for (int i = tid; i < C::kQRowBytes / 16; i += C::kThreads)
    *reinterpret_cast<uint4*>(smem + C::kOffQZero + i * 16) = make_uint4(0, 0, 0, 0);

  const int page_beg = p.indptr[b];
  const int num_pages = p.indptr[b + 1] - page_beg;
  const int len = num_pages > 0 ? (num_pages - 1) * (1 << p.page_shift) + p.last_len[b] : 0;
  TQ* out = static_cast<TQ*>(p.o);
  if (len <= 0) {
    if (split == 0) {
      for (int i = tid; i < qrows * D; i += C::kThreads)
        out[b * p.o_stride_b + (qo_base + i / D) * p.o_stride_h + i % D] = from_float<TQ>(0.f);
      if (p.lse != nullptr && tid < qrows) p.lse[(int64_t)b * p.num_kv_heads * group + qo_base + tid] = -CUDART_INF_F;
    }
    cp_async_wait<0>();
    return;
  }
  const int chunk = split_chunk(len, p);
  const int n_act = (len + chunk - 1) / chunk;
  if (split >= n_act) {
    cp_async_wait<0>();
    return;
  }
  const int tok_beg = split * chunk;
  const int tok_end = min(len, tok_beg + chunk);
  const int ntiles = (tok_end - tok_beg + C::kTile - 1) / C::kTile;

  const uint8_t* kbase = static_cast<const uint8_t*>(p.k);
  const uint8_t* vbase = static_cast<const uint8_t*>(p.v);
  const int64_t grp_off = (int64_t)hgrp * kWpHeads * p.kv_stride_head;
  const int64_t head_bytes = p.kv_stride_head * int64_t(sizeof(TKV));
  int64_t* rows = reinterpret_cast<int64_t*>(smem + C::kOffRows);  // byte offset of a token's first row, or -1
  const int page_mask = (1 << p.page_shift) - 1;
  auto load_pid = [&](int tile) -> int {
    const int tok = tok_beg + tile * C::kTile + tid;
    const int idx = page_beg + (tok >> p.page_shift);
    if (tile >= ntiles || tok >= tok_end || unsigned(idx) >= unsigned(p.num_indices)) return 0;
    const int pid = p.indices[idx];
    return unsigned(pid) < unsigned(p.num_pool_pages) ? pid : 0;
  };
  auto store_rows = [&](int tile, int pid) {
    const int tok = tok_beg + tile * C::kTile + tid;
    if (tile < ntiles)
      rows[(tile % C::kSlots) * C::kTile + tid] =
          tok < tok_end
              ? ((int64_t)pid * p.kv_stride_page + (int64_t)(tok & page_mask) * p.kv_stride_tok + grp_off) *
                    int64_t(sizeof(TKV))
              : int64_t(-1);
  };
  auto load_tile = [&](int tile) {
    if (tile >= ntiles) return;
    const int stage = tile % STAGES;
    const int64_t* r_off = rows + (tile % C::kSlots) * C::kTile;
    uint8_t* ks = smem + C::kOffK + stage * C::kStageBytes;
    uint8_t* vs = smem + C::kOffV + stage * C::kStageBytes;
#pragma unroll
    for (int it = 0; it < C::kTile * C::kTokChunks / C::kThreads; ++it) {
      const int i = tid + it * C::kThreads;
      const int t = i / C::kTokChunks, ci = i % C::kTokChunks, h = ci / 8, c = ci % 8;
      const int64_t off = r_off[t];
      const bool valid = off >= 0;
      const int64_t src = valid ? off + h * head_bytes + c * 16 : 0;
      const int dst = wp_kv_off(t, h, c);
      cp_async_16(ks + dst, kbase + src, valid);
      cp_async_16(vs + dst, vbase + src, valid);
    }
  };

  // ---- prologue: the ring's first tiles' row offsets, their loads, and the next tile's page id in a register
  int pending = 0;
  if (tid < C::kTile) {
    int pids[STAGES];
#pragma unroll
    for (int j = 0; j < STAGES; ++j) pids[j] = load_pid(j);
#pragma unroll
    for (int j = 0; j < STAGES; ++j) store_rows(j, pids[j]);
    pending = load_pid(STAGES);
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < STAGES - 1; ++j) {
    load_tile(j);
    cp_async_commit();
  }
  if constexpr (kH16) {  // q to fp16 (saturating, NaN kept) in the fp8 K operand layout, while the first loads fly
    auto sat_f16 = [](float x) { return x != x ? x : fminf(fmaxf(x, -65504.f), 65504.f); };
    for (int i = tid; i < qrows * (D / 2); i += C::kThreads) {
      const int L = i / (D / 2), d = 2 * (i % (D / 2));
      const TQ* src = qb + (qo_base + L) * p.q_stride_h + d;
      *reinterpret_cast<uint32_t*>(smem + C::kOffQ + q_fp8_slot<D>(L, d)) =
          pack2<__half>(sat_f16(to_float(src[0])), sat_f16(to_float(src[1])));
    }
  }

  // q operand row of lane's ldmatrix address: this warp's head's row, or the zero row past the group
  const int qr = lane & 15;
  const uint8_t* qrow_base = qr < group ? smem + C::kOffQ : smem + C::kOffQZero;
  const int qline = qr < group ? warp * group + qr : 0;
  auto q_addr = [&](int c) -> const uint8_t* {
    return qr < group ? qrow_base + swz<D>(qline, c) : qrow_base + c * 16;
  };

  float m[2] = {-CUDART_INF_F, -CUDART_INF_F}, l[2] = {0.f, 0.f};
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;

  const int ltok = ((lane >> 3) & 1) * 8 + (lane & 7);  // ldmatrix token row of this lane (fp8 paths)
  const int lhalf = lane >> 4;
  for (int t = 0; t < ntiles; ++t) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    load_tile(t + STAGES - 1);
    cp_async_commit();
    if (tid < C::kTile) {
      store_rows(t + STAGES, pending);
      pending = load_pid(t + STAGES + 1);
    }
    const int stage = t % STAGES;
    const uint8_t* ks = smem + C::kOffK + stage * C::kStageBytes;
    const uint8_t* vs = smem + C::kOffV + stage * C::kStageBytes;
    const int tok0 = tok_beg + t * C::kTile;

    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    if constexpr (C::kFp8) {
#pragma unroll
      for (int kp = 0; kp < D / 32; ++kp) {
        uint32_t raw[4];
        ldmatrix_x4(raw, ks + wp_kv_off(ltok, warp, 2 * kp + lhalf));
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint32_t a[4];
          ldmatrix_x4(a, q_addr(2 * (2 * kp + h) + (lane >> 4)));
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
        ldmatrix_x4(a, q_addr(2 * ks_i + (lane >> 4)));
        const int j = lane >> 3, r8 = lane & 7;
        ldmatrix_x4(bk, ks + wp_kv_off((j >> 1) * 8 + r8, warp, 2 * ks_i + (j & 1)));
        mma_16816<TQ>(s[0], a, bk);
        mma_16816<TQ>(s[1], a, bk + 2);
      }
    }
    float mx[2] = {-CUDART_INF_F, -CUDART_INF_F};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = tok0 + nt * 8 + (lane & 3) * 2 + (e & 1);
        float x = p.has_cap ? p.score_post * tanhf(s[nt][e] * p.score_pre) : s[nt][e] * p.score_pre;
        x = tok < tok_end ? x : -CUDART_INF_F;
        s[nt][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    }
    float alpha[2], muse[2];
    bool grow = false;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 2));
      float mnew = fmaxf(m[r], mx[r]);
      if constexpr (KVP_LAZY_RESCALE) {
        if (!(mnew > m[r] + kRescaleSlack)) mnew = m[r];
        grow |= mnew != m[r];
      }
      muse[r] = mnew == -CUDART_INF_F ? 0.f : mnew;
      alpha[r] = exp2f(m[r] - muse[r]);
      m[r] = mnew;
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - muse[e >> 1]);
        l[e >> 1] += s[nt][e];
      }
    }
    if (!KVP_LAZY_RESCALE || __any_sync(0xffffffff, grow)) {
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[i][0] *= alpha[0];
        o[i][1] *= alpha[0];
        o[i][2] *= alpha[1];
        o[i][3] *= alpha[1];
      }
    }
    const uint32_t pa[4] = {pack2<TM>(s[0][0], s[0][1]), pack2<TM>(s[0][2], s[0][3]), pack2<TM>(s[1][0], s[1][1]),
                            pack2<TM>(s[1][2], s[1][3])};
    if constexpr (C::kFp8) {
#pragma unroll
      for (int qp = 0; qp < D / 32; ++qp) {
        uint32_t raw[4];
        ldmatrix_x4_trans(raw, vs + wp_kv_off(ltok, warp, 2 * qp + lhalf));
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t lo = __byte_perm(raw[2 * h], 0, 0x3120), hi = __byte_perm(raw[2 * h + 1], 0, 0x3120);
          const uint32_t even[2] = {e4m3x2_to<TM>(lo & 0xffff), e4m3x2_to<TM>(hi & 0xffff)};
          const uint32_t odd[2] = {e4m3x2_to<TM>(lo >> 16), e4m3x2_to<TM>(hi >> 16)};
          mma_16816<TM>(o[2 * (2 * qp + h)], pa, even);
          mma_16816<TM>(o[2 * (2 * qp + h) + 1], pa, odd);
        }
      }
    } else {
#pragma unroll
      for (int nd = 0; nd < D / 16; ++nd) {
        uint32_t bv[4];
        const int j = lane >> 3, r8 = lane & 7;
        ldmatrix_x4_trans(bv, vs + wp_kv_off((j & 1) * 8 + r8, warp, 2 * nd + (j >> 1)));
        mma_16816<TQ>(o[2 * nd], pa, bv);
        mma_16816<TQ>(o[2 * nd + 1], pa, bv + 2);
      }
    }
  }
  cp_async_wait<0>();
  if constexpr (KVP_PDL && KVP_LATE_TRIGGER) griddep_launch_dependents();

  // ---- this warp's rows are complete for the split: normalise and write (rows lane/4 and lane/4 + 8, < group)
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 2);
  }
  const bool single = n_act == 1;
  const int64_t part_row0 = (((int64_t)b * p.num_kv_heads + head) * p.num_splits + split) * group;
  const int c4 = lane & 3;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = (lane >> 2) + 8 * hr;
    if (r >= group) continue;
    const float inv = 1.f / l[hr];
    const float lse2 = (m[hr] == -CUDART_INF_F ? 0.f : m[hr]) + log2f(l[hr]);
    const int qo = head * group + r;
    if (single) {
      TQ* dst = out + b * p.o_stride_b + qo * p.o_stride_h;
      const float sc = inv * p.v_scale;
      if constexpr (C::kFp8) {  // o[2q] / o[2q+1]: dims 16q + 4c + {0, 2} / {1, 3}
#pragma unroll
        for (int q = 0; q < D / 16; ++q) {
          const uint32_t lo = pack2<TQ>(o[2 * q][2 * hr] * sc, o[2 * q + 1][2 * hr] * sc);
          const uint32_t hi = pack2<TQ>(o[2 * q][2 * hr + 1] * sc, o[2 * q + 1][2 * hr + 1] * sc);
          *reinterpret_cast<uint2*>(dst + q * 16 + c4 * 4) = make_uint2(lo, hi);
        }
      } else {
#pragma unroll
        for (int i = 0; i < D / 8; ++i)
          *reinterpret_cast<uint32_t*>(dst + i * 8 + c4 * 2) = pack2<TQ>(o[i][2 * hr] * sc, o[i][2 * hr + 1] * sc);
      }
      if (p.lse != nullptr && c4 == 0) p.lse[(int64_t)b * p.num_kv_heads * group + qo] = lse2 * CUDART_LN2_F;
    } else {
      float* dst = p.part_o + (part_row0 + r) * D;
      if constexpr (C::kFp8) {
#pragma unroll
        for (int q = 0; q < D / 16; ++q)
          *reinterpret_cast<float4*>(dst + q * 16 + c4 * 4) =
              make_float4(o[2 * q][2 * hr] * inv, o[2 * q + 1][2 * hr] * inv, o[2 * q][2 * hr + 1] * inv,
                          o[2 * q + 1][2 * hr + 1] * inv);
      } else {
#pragma unroll
        for (int i = 0; i < D / 8; ++i)
          *reinterpret_cast<float2*>(dst + i * 8 + c4 * 2) = make_float2(o[i][2 * hr] * inv, o[i][2 * hr + 1] * inv);
      }
      if (c4 == 0) p.part_lse[part_row0 + r] = lse2;
    }
  }
  if (single) return;

  // ---- the last split of (request, head group) to finish merges every head's partials
  int* flag = reinterpret_cast<int*>(smem + C::kOffFlag);
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    int32_t* ctr = p.counters + (int64_t)b * p.num_kv_heads + hgrp;
    const int done = atomicAdd(ctr, 1);
    const bool last = done == n_act - 1;
    if (last) *ctr = 0;
    *flag = last;
  }
  __syncthreads();
  if (!*flag) return;
  __threadfence();
  // weights w[s][R] (R = h * group + r over the block's rows), from lse in one round of loads
  float* w = reinterpret_cast<float*>(smem + C::kOffK);
  float* red_m = reinterpret_cast<float*>(smem + C::kOffRed);
  float* red_l = red_m + kWpHeads * kWpMaxGroup;
  const int nw = n_act * qrows;
  for (int i = tid; i < nw; i += C::kThreads) {
    const int s_i = i / qrows, R = i % qrows;
    const int h = R / group, r = R % group;
    w[i] = __ldcg(p.part_lse + (((int64_t)b * p.num_kv_heads + hgrp * kWpHeads + h) * p.num_splits + s_i) * group + r);
  }
  __syncthreads();
  if (tid < qrows) {
    float mmax = -CUDART_INF_F;
    for (int s_i = 0; s_i < n_act; ++s_i) mmax = fmaxf(mmax, w[s_i * qrows + tid]);
    float wsum = 0.f;
    for (int s_i = 0; s_i < n_act; ++s_i) wsum += exp2f(w[s_i * qrows + tid] - mmax);
    red_m[tid] = mmax;
    red_l[tid] = wsum;
  }
  __syncthreads();
  for (int i = tid; i < nw; i += C::kThreads) {
    const int R = i % qrows;
    w[i] = exp2f(w[i] - red_m[R]) / red_l[R];
  }
  __syncthreads();
  for (int i = tid; i < qrows * (D / 4); i += C::kThreads) {
    const int R = i / (D / 4), cc = i % (D / 4);
    const int h = R / group, r = R % group;
    const float* src =
        p.part_o + ((((int64_t)b * p.num_kv_heads + hgrp * kWpHeads + h) * p.num_splits) * group + r) * D + cc * 4;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 16  // n_act x 32 rows of partials: as many loads in flight as the registers allow
    for (int s_i = 0; s_i < n_act; ++s_i) {
      const float ws = w[s_i * qrows + R];
      const float4 v = __ldcg(reinterpret_cast<const float4*>(src + (int64_t)s_i * group * D));
      acc.x += ws * v.x;
      acc.y += ws * v.y;
      acc.z += ws * v.z;
      acc.w += ws * v.w;
    }
    TQ* dst = out + b * p.o_stride_b + (qo_base + R) * p.o_stride_h + cc * 4;
    dst[0] = from_float<TQ>(acc.x * p.v_scale);
    dst[1] = from_float<TQ>(acc.y * p.v_scale);
    dst[2] = from_float<TQ>(acc.z * p.v_scale);
    dst[3] = from_float<TQ>(acc.w * p.v_scale);
    if (p.lse != nullptr && cc == 0)
      p.lse[(int64_t)b * p.num_kv_heads * group + qo_base + R] = (red_m[R] + log2f(red_l[R])) * CUDART_LN2_F;
  }
}

}  // namespace kvp
