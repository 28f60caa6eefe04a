# Source on the GPU test host (offline), from the repo root: installs the pinned stack and this project into
# /tmp/site, points the loader at modules prebuilt on the CPU machine, and stamps the commit measured.
#   carry: .gpu/stack.tar.xz .gpu/bin .gpu/prebuilt .gpu/commit (+ .gpu/jit-cache.tar.xz if saved)
source .gpu/bin/install_on_gpu.sh || return 1
python3 -m pip install -q --no-deps --no-index --no-build-isolation --target /tmp/site . >/dev/null 2>&1 \
  || { echo "setup: installing kvprefetch into /tmp/site failed" >&2; return 1; }
rm -rf build ./*.egg-info
export KVPREFETCH_PREBUILT_DIR=$PWD/.gpu/prebuilt
[ -f .gpu/commit ] && export KVPREFETCH_COMMIT=$(cut -d' ' -f1 .gpu/commit) KVPREFETCH_DIRTY=$(cut -d' ' -f2 .gpu/commit)
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv,noheader
python3 -c "import torch; p=torch.cuda.get_device_properties(0); print(p.name, p.multi_processor_count, 'SMs', p.L2_cache_size>>20, 'MB L2')"
