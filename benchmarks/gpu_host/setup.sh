# Source on the GPU test host (offline), from the repo root: installs the pinned stack and this project into
# /tmp/site, points the loader at modules prebuilt on the CPU machine, and stamps the commit measured.
#   carry: .gpu/stack.tar.xz .gpu/bin .gpu/prebuilt.tar.xz (or .gpu/prebuilt) .gpu/commit (+ .gpu/jit-cache.tar.xz)
#   .gpu/prebuilt.tar.xz (pack_prebuilt.sh) is a quarter of the folder's size: with it the stack, the JIT cache and
#   the tree fit the 64 MiB a call may carry. Where they do not (the tree grew past ~9 MiB in session 8): install the
#   stack in a call of its own first (carry .gpu/stack.tar.xz .gpu/bin; `JIT_CACHE=none source .gpu/bin/install_on_gpu.sh`),
#   then carry everything but the stack: install_on_gpu.sh reuses /tmp/site while the host stays warm.
source .gpu/bin/install_on_gpu.sh || return 1
python3 -m pip install -q --no-deps --no-index --no-build-isolation --target /tmp/site . >/dev/null 2>&1 \
  || { echo "setup: installing kvprefetch into /tmp/site failed" >&2; return 1; }
rm -rf build ./*.egg-info
export KVPREFETCH_PREBUILT_DIR=$PWD/.gpu/prebuilt
if [ -f .gpu/prebuilt.tar.xz ]; then
  rm -rf /tmp/kvp-prebuilt && mkdir -p /tmp/kvp-prebuilt && tar xJf .gpu/prebuilt.tar.xz -C /tmp/kvp-prebuilt \
    || { echo "setup: unpacking .gpu/prebuilt.tar.xz failed" >&2; return 1; }
  export KVPREFETCH_PREBUILT_DIR=/tmp/kvp-prebuilt/prebuilt
fi
[ -f .gpu/commit ] && export KVPREFETCH_COMMIT=$(cut -d' ' -f1 .gpu/commit) KVPREFETCH_DIRTY=$(cut -d' ' -f2 .gpu/commit)
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv,noheader
python3 -c "import torch; p=torch.cuda.get_device_properties(0); print(p.name, p.multi_processor_count, 'SMs', p.L2_cache_size>>20, 'MB L2')"
