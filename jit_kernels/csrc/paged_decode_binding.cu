// tvm-ffi entry points of one specialised decode module. The specialisation comes from -D flags set by the
// JIT spec (jit_kernels/jit_spec.py): KVP_Q_BF16, KVP_KV_FP8, KVP_HEAD_DIM, KVP_STAGES, KVP_PREFETCH,
// KVP_PREFETCH_BULK, and the experiments' optional flags (KVP_PDL, KVP_LATE_TRIGGER, KVP_TWO_BLOCKS, KVP_TRACE,
// KVP_CLUSTER_MERGE, ...).
#include <algorithm>

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/optional.h>

#include "l2_prefetch.cuh"
#include "paged_decode.cuh"
#if KVP_TMA
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled
#endif

namespace {

using tvm::ffi::Optional;
using tvm::ffi::TensorView;

#if KVP_Q_BF16
using TQ = __nv_bfloat16;
#else
using TQ = __half;
#endif
#if KVP_KV_FP8
using TKV = __nv_fp8_e4m3;
#else
using TKV = TQ;
#endif
constexpr int kD = KVP_HEAD_DIM, kStages = KVP_STAGES, kPF = KVP_PREFETCH;
constexpr bool kPFBulk = KVP_PREFETCH_BULK;
using Cfg = kvp::DecodeCfg<TQ, TKV, kD, kStages, kPF>;

#define KVP_CHECK_CUDA(expr)                                                            \
  do {                                                                                  \
    cudaError_t e_ = (expr);                                                            \
    TVM_FFI_ICHECK(e_ == cudaSuccess) << "kvprefetch: " #expr ": " << cudaGetErrorString(e_); \
  } while (0)

#ifndef KVP_TWO_BLOCKS
#define KVP_TWO_BLOCKS 0
#endif

// Dynamic shared memory of every launch. KVP_TWO_BLOCKS (experiment 21) pads it just past a third of the SM's, so
// modules that would fit three blocks per SM (fp8 KV, head_dim 64) get two: the slots the planner's short splits
// use, and no free third slot for the next PDL launch's blocks to crowd onto (run 12c).
int launch_smem() {
#if KVP_TWO_BLOCKS
  static const int bytes = [] {  // one device type per process
    int dev = 0, per_sm = 0, reserved = 0;
    KVP_CHECK_CUDA(cudaGetDevice(&dev));
    KVP_CHECK_CUDA(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev));
    KVP_CHECK_CUDA(cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev));
    return std::max(Cfg::kSmemBytes, per_sm / 3 - reserved + 128);  // 128: the allocation unit
  }();
  return bytes;
#else
  return Cfg::kSmemBytes;
#endif
}

constexpr auto kKernel = kvp::paged_decode_kernel<TQ, TKV, kD, kStages, kPF, kPFBulk>;

void enable_smem() {
  static bool done = false;  // one module per process and specialisation; a benign race sets it twice
  if (!done) {
    KVP_CHECK_CUDA(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, launch_smem()));
#if KVP_CLUSTER_MERGE
    KVP_CHECK_CUDA(cudaFuncSetAttribute(kKernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
#endif
    done = true;
  }
}

#if KVP_CLUSTER_MERGE
// Whether a grid of `num_splits`-wide clusters (one per (kv head, request)) can run on this card: 2..16 splits, and
// at least one such cluster fits a GPC with this module's shared memory. Otherwise the splits merge through global
// memory (experiment 30). Checked once per split count; one device type per process.
bool cluster_fits(int64_t num_splits, int64_t num_kv_heads, int64_t batch) {
  enable_smem();
  if (num_splits < 2 || num_splits > kvp::kMaxClusterSplits) return false;
  static int fits[kvp::kMaxClusterSplits + 1] = {};  // 0 unknown, 1 yes, 2 no
  int& known = fits[num_splits];
  if (known == 0) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 1;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = static_cast<unsigned>(num_splits);
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(static_cast<unsigned>(num_kv_heads), static_cast<unsigned>(batch),
                       static_cast<unsigned>(num_splits));
    cfg.blockDim = dim3(Cfg::kThreads);
    cfg.dynamicSmemBytes = launch_smem();
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    int clusters = 0;
    KVP_CHECK_CUDA(cudaOccupancyMaxActiveClusters(&clusters, kKernel, &cfg));
    known = clusters > 0 ? 1 : 2;
  }
  return known == 1;
}
#endif

#if KVP_TMA
// Experiment 37: the 4-d tensor map [pages, page, kv heads, D] of one K or V pool, whose box is 16 tokens of one kv
// head's 128-byte rows in the 128-byte swizzle the kernel's ldmatrix addressing expects. False (the kernel then loads
// with cp.async) for page sizes under 16, other row sizes, or strides TMA cannot take.
bool encode_kv_map(CUtensorMap* map, const TensorView& t) {
  if (Cfg::kRowBytesKV != 128 || t.ndim() != 4 || t.size(1) < 16 || t.stride(3) != 1) return false;
  const int64_t es = Cfg::kFp8 ? 1 : 2;
  const int64_t strides[3] = {t.stride(2) * es, t.stride(1) * es, t.stride(0) * es};
  for (int64_t s : strides)
    if (s % 16 != 0 || s >= (int64_t(1) << 40)) return false;
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult status{};
    KVP_CHECK_CUDA(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &status));
    TVM_FFI_ICHECK(fn != nullptr && status == cudaDriverEntryPointSuccess) << "kvprefetch: no cuTensorMapEncodeTiled";
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  const cuuint64_t dims[4] = {cuuint64_t(kD), cuuint64_t(t.size(2)), cuuint64_t(t.size(1)), cuuint64_t(t.size(0))};
  const cuuint64_t gstrides[3] = {cuuint64_t(strides[0]), cuuint64_t(strides[1]), cuuint64_t(strides[2])};
  const cuuint32_t box[4] = {cuuint32_t(kD), 1, 16, 1};
  const cuuint32_t estrides[4] = {1, 1, 1, 1};
  const CUtensorMapDataType dtype = Cfg::kFp8 ? CU_TENSOR_MAP_DATA_TYPE_UINT8
                                    : KVP_Q_BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult r = encode(map, dtype, 4, t.data_ptr(), dims, gstrides, box, estrides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TVM_FFI_ICHECK(r == CUDA_SUCCESS) << "kvprefetch: cuTensorMapEncodeTiled failed (" << int(r) << ")";
  return true;
}
#endif

int64_t smem_bytes() { return launch_smem(); }

// Resident blocks per SM for this specialisation: the split planner aims for a few waves of these.
int64_t blocks_per_sm() {
  enable_smem();
  int n = 0;
  KVP_CHECK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &n, kKernel, Cfg::kThreads, launch_smem()));
  return n;
}

// q [B, Hq, D]; k/v [P, page, Hkv, D] (or [slots, Hkv, D] with page 1); o [B, Hq, D]; lse [B, Hq] f32.
void run(TensorView q, TensorView k, TensorView v, TensorView indptr, TensorView indices, TensorView last_len,
         TensorView o, Optional<TensorView> lse, TensorView part_o, TensorView part_lse, TensorView counters,
         int64_t num_splits, int64_t short_splits, int64_t short_chunk, int64_t min_chunk, int64_t page_shift,
         double score_pre, double score_post, int64_t has_cap, double v_scale, int64_t late_release_below) {
  const int64_t batch = q.size(0);
  if (batch == 0) return;
  const bool paged4 = k.ndim() == 4;
  kvp::DecodeParams p{};
  p.q = q.data_ptr();
  p.q_stride_b = q.stride(0);
  p.q_stride_h = q.stride(1);
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.kv_stride_page = k.stride(0);
  p.kv_stride_tok = paged4 ? k.stride(1) : 0;
  p.kv_stride_head = paged4 ? k.stride(2) : k.stride(1);
  const int64_t num_kv_heads = paged4 ? k.size(2) : k.size(1);
  p.indptr = static_cast<const int32_t*>(indptr.data_ptr());
  p.indices = static_cast<const int32_t*>(indices.data_ptr());
  p.last_len = static_cast<const int32_t*>(last_len.data_ptr());
  p.num_indices = static_cast<int32_t>(indices.size(0));
  p.num_pool_pages = static_cast<int32_t>(k.size(0));
  p.o = o.data_ptr();
  p.o_stride_b = o.stride(0);
  p.o_stride_h = o.stride(1);
  p.lse = lse.has_value() ? static_cast<float*>(lse.value().data_ptr()) : nullptr;
  p.part_o = static_cast<float*>(part_o.data_ptr());
  p.part_lse = static_cast<float*>(part_lse.data_ptr());
  p.counters = static_cast<int32_t*>(counters.data_ptr());
  p.num_kv_heads = static_cast<int32_t>(num_kv_heads);
  p.group = static_cast<int32_t>(q.size(1) / num_kv_heads);
  p.num_splits = static_cast<int32_t>(num_splits);
  p.min_chunk = static_cast<int32_t>(min_chunk);
  p.short_chunk = static_cast<int32_t>(short_chunk);
  p.short_splits = static_cast<int32_t>(std::min(std::max<int64_t>(short_splits, 1), num_splits));
  p.page_shift = static_cast<int32_t>(page_shift);
  p.score_pre = static_cast<float>(score_pre);
  p.score_post = static_cast<float>(score_post);
  p.has_cap = static_cast<int32_t>(has_cap);
  p.v_scale = static_cast<float>(v_scale);
#if KVP_PDL && !KVP_LATE_TRIGGER
  p.late_release_below = static_cast<int32_t>(late_release_below);
#else
  (void)late_release_below;
#endif
#if KVP_TMA
  p.tma = encode_kv_map(&p.tma_k, k) && encode_kv_map(&p.tma_v, v);
#endif

  enable_smem();
  const dim3 grid(static_cast<unsigned>(num_kv_heads), static_cast<unsigned>(batch),
                  static_cast<unsigned>(num_splits));
  auto stream = static_cast<cudaStream_t>(TVMFFIEnvGetStream(q.device().device_type, q.device().device_id));
#if KVP_PDL || KVP_CLUSTER_MERGE
  cudaLaunchAttribute attr[2];
  unsigned num_attrs = 0;
#if KVP_PDL
  // May start while the previous kernel in the stream is still running; the kernel waits (griddepcontrol.wait)
  // before it reads anything that kernel may write.
  attr[num_attrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[num_attrs++].val.programmaticStreamSerializationAllowed = 1;
#endif
#if KVP_CLUSTER_MERGE
  p.cluster = cluster_fits(num_splits, num_kv_heads, batch);
  if (p.cluster) {
    attr[num_attrs].id = cudaLaunchAttributeClusterDimension;
    attr[num_attrs].val.clusterDim.x = 1;
    attr[num_attrs].val.clusterDim.y = 1;
    attr[num_attrs++].val.clusterDim.z = static_cast<unsigned>(num_splits);
  }
#endif
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(Cfg::kThreads);
  cfg.dynamicSmemBytes = launch_smem();
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = num_attrs;
  KVP_CHECK_CUDA(cudaLaunchKernelEx(&cfg, kKernel, p));
#else
  kKernel<<<grid, Cfg::kThreads, launch_smem(), stream>>>(p);
  KVP_CHECK_CUDA(cudaGetLastError());
#endif
}

// Experiment 39: prefetch the pages of each of the first `batch` requests (at most `max_pages` each) of the pools k
// and v into L2, `page_bytes` from every page's start; `blocks_per_request` blocks of 128 threads per request.
void l2_prefetch(TensorView k, TensorView v, TensorView indptr, TensorView indices, int64_t batch,
                 int64_t page_stride_bytes, int64_t page_bytes, int64_t max_pages, int64_t blocks_per_request,
                 bool evict_last) {
  if (batch == 0 || max_pages == 0) return;
  kvp::L2PrefetchParams p{};
  p.k = static_cast<const char*>(k.data_ptr());
  p.v = static_cast<const char*>(v.data_ptr());
  p.page_stride_bytes = page_stride_bytes;
  p.page_bytes = static_cast<uint32_t>(page_bytes);
  p.indptr = static_cast<const int32_t*>(indptr.data_ptr());
  p.indices = static_cast<const int32_t*>(indices.data_ptr());
  p.num_pool_pages = static_cast<int32_t>(k.size(0));
  p.max_pages = static_cast<int32_t>(std::min<int64_t>(max_pages, INT32_MAX));
  p.evict_last = evict_last ? 1 : 0;
  auto stream = static_cast<cudaStream_t>(TVMFFIEnvGetStream(k.device().device_type, k.device().device_id));
  const dim3 grid(static_cast<unsigned>(blocks_per_request), static_cast<unsigned>(batch));
  kvp::l2_prefetch_kernel<<<grid, 128, 0, stream>>>(p);
  KVP_CHECK_CUDA(cudaGetLastError());
}

// The L2 set-aside for persisting (evict_last) lines of the current device: set to min(bytes, the card's maximum)
// when bytes >= 0; returns the set-aside in effect. Process-wide, like cudaDeviceSetLimit itself.
int64_t l2_persisting(int64_t bytes) {
  if (bytes >= 0) {
    int dev = 0, max_bytes = 0;
    KVP_CHECK_CUDA(cudaGetDevice(&dev));
    KVP_CHECK_CUDA(cudaDeviceGetAttribute(&max_bytes, cudaDevAttrMaxPersistingL2CacheSize, dev));
    KVP_CHECK_CUDA(cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize,
                                      static_cast<size_t>(std::min<int64_t>(bytes, max_bytes))));
  }
  size_t now = 0;
  KVP_CHECK_CUDA(cudaDeviceGetLimit(&now, cudaLimitPersistingL2CacheSize));
  return static_cast<int64_t>(now);
}

#if KVP_TRACE
// Experiment 18: every block of later launches appends its timeline to `buf` (int64, word 0 = record count, which
// the caller zeroes between captures of interest); an empty tensor turns tracing off.
void set_trace(TensorView buf) {
  uint64_t* ptr = buf.numel() > kvp::kTraceHeader ? static_cast<uint64_t*>(buf.data_ptr()) : nullptr;
  const uint64_t cap = ptr ? (buf.numel() - kvp::kTraceHeader) / kvp::kTraceWords : 0;
  KVP_CHECK_CUDA(cudaMemcpyToSymbol(kvp::g_trace, &ptr, sizeof(ptr)));
  KVP_CHECK_CUDA(cudaMemcpyToSymbol(kvp::g_trace_cap, &cap, sizeof(cap)));
}
#endif

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(run, run);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(l2_prefetch, l2_prefetch);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(l2_persisting, l2_persisting);
#if KVP_TRACE
TVM_FFI_DLL_EXPORT_TYPED_FUNC(set_trace, set_trace);
#endif
#if KVP_CLUSTER_MERGE
TVM_FFI_DLL_EXPORT_TYPED_FUNC(cluster_fits, cluster_fits);
#endif
TVM_FFI_DLL_EXPORT_TYPED_FUNC(smem_bytes, smem_bytes);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(blocks_per_sm, blocks_per_sm);
