#!/usr/bin/env bash
# CPU side, from the repo root: build the test set of kernel modules for sm_90a and pack them for a device call
# (.gpu/prebuilt.tar.xz, ~1.7 MiB instead of the folder's ~6 MiB; setup.sh unpacks it on the host).
#   usage: bash benchmarks/gpu_host/pack_prebuilt.sh [PYTHON]
set -eu
py=${1:-python3}
rm -rf .gpu/prebuilt
"$py" -m kvprefetch.jit_kernels.prebuild --out .gpu/prebuilt --set tests
tar cJf .gpu/prebuilt.tar.xz -C .gpu prebuilt
ls -la .gpu/prebuilt.tar.xz
