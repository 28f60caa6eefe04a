#!/usr/bin/env bash
# compute-sanitizer over the decode kernel only (its launches; torch's kernels run uninstrumented).
#   usage: bash benchmarks/gpu_host/sanitize.sh OUTDIR [RUN ...]
#   RUN: memcheck racecheck synccheck memcheck_bad_indices (default: all four; initcheck also accepted)
# From the repo root, after `source benchmarks/gpu_host/setup.sh`. Per run: OUTDIR/sanitize-RUN.log (the tool's
# report), .rc (its exit code), .driver.log/.driver.json (benchmarks/sanitize_decode.py's own output); then
# OUTDIR/sanitize.json: {memcheck, racecheck, synccheck, memcheck_bad_indices: "clean" | what was found}.
# Exit code: 0 if every run is clean, 1 if not, 3 if compute-sanitizer is missing or cannot use the device.
# Environment: COMPUTE_SANITIZER (the binary; else searched), PYTHON (default python3), SANITIZE_TIMEOUT
# (seconds per run, default 300), SANITIZE_DRIVER_ARGS (e.g. --quick), SANITIZE_DRIVER (the driver script).
set -u
out=${1:?usage: sanitize.sh OUTDIR [RUN ...]}
shift
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(memcheck racecheck synccheck memcheck_bad_indices)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
py=${PYTHON:-python3}
driver=${SANITIZE_DRIVER:-$repo/benchmarks/sanitize_decode.py}
limit=${SANITIZE_TIMEOUT:-300}
mkdir -p "$out"

find_sanitizer() {
  local c d
  if [ -n "${COMPUTE_SANITIZER:-}" ]; then
    [ -x "$COMPUTE_SANITIZER" ] && { echo "$COMPUTE_SANITIZER"; return 0; }
    return 1
  fi
  command -v compute-sanitizer 2>/dev/null && return 0
  for c in "${CUDA_HOME:-/nonexistent}"/bin/compute-sanitizer "${CUDA_HOME:-/nonexistent}"/compute-sanitizer/compute-sanitizer \
           /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer \
           /usr/local/cuda/compute-sanitizer/compute-sanitizer /usr/local/cuda-*/compute-sanitizer/compute-sanitizer; do
    [ -x "$c" ] && { echo "$c"; return 0; }
  done
  # pip's nvidia-cuda-sanitizer-api ships the binary in bin/ and its injection libraries in lib/, but the binary
  # looks for them beside itself: lay the two out flat in a temporary folder.
  d=$("$py" -c 'import importlib.util as u; s = u.find_spec("nvidia.cuda_sanitizer_api")
print(list(s.submodule_search_locations)[0])' 2>/dev/null) || return 1
  [ -f "$d/bin/compute-sanitizer" ] || return 1
  c=$(mktemp -d)/compute-sanitizer
  cp "$d/bin/compute-sanitizer" "$d"/lib/*.so "$(dirname "$c")"/ && chmod +x "$c" && echo "$c"
}

if ! san=$(find_sanitizer) || [ -z "$san" ]; then
  why="compute-sanitizer not found (PATH, \$COMPUTE_SANITIZER, \$CUDA_HOME, /usr/local/cuda*, pip nvidia-cuda-sanitizer-api)"
  echo "sanitize.sh: $why" >&2
  "$py" "$repo/benchmarks/sanitize_summary.py" "$out" "${runs[@]}" --unavailable "$why" >/dev/null
  exit 3
fi
echo "sanitize.sh: $san ($("$san" --version 2>/dev/null | grep -i version | head -1))"

# Every tensor its own cudaMalloc, so memcheck sees an overrun past a tensor (inside torch's cached segments it
# could not). Validation off: the bad-indices run must reach the kernel.
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
unset KVPREFETCH_VALIDATE
status=0
for run in "${runs[@]}"; do
  dargs=()
  case $run in
    memcheck) tool=(--tool memcheck --leak-check no) ;;
    memcheck_bad_indices) tool=(--tool memcheck --leak-check no); dargs=(--bad-indices) ;;
    racecheck) tool=(--tool racecheck) ;;
    synccheck) tool=(--tool synccheck) ;;
    initcheck) tool=(--tool initcheck) ;;
    *) echo "sanitize.sh: unknown run '$run'" >&2; exit 2 ;;
  esac
  log=$out/sanitize-$run.log
  t0=$SECONDS
  # shellcheck disable=SC2086  # SANITIZE_DRIVER_ARGS is a word list on purpose
  timeout -k 10 "$limit" "$san" "${tool[@]}" --error-exitcode 1 --kernel-name kns=paged_decode --print-limit 20 \
    --log-file "$log" \
    "$py" "$driver" ${dargs[@]+"${dargs[@]}"} ${SANITIZE_DRIVER_ARGS:-} --out "$out/sanitize-$run.driver.json" \
    > "$out/sanitize-$run.driver.log" 2>&1
  rc=$?
  echo "$rc" > "$out/sanitize-$run.rc"
  echo "sanitize.sh: $run exit $rc in $((SECONDS - t0)) s"
  if grep -q -e "Device not supported" -e "Unable to find injection library" "$log" 2>/dev/null; then
    echo "sanitize.sh: compute-sanitizer cannot use this device/runtime:" \
         "$(grep -m1 -e 'not supported' -e 'Unable' "$log")" >&2
    "$py" "$repo/benchmarks/sanitize_summary.py" "$out" "${runs[@]}"
    exit 3
  fi
done
"$py" "$repo/benchmarks/sanitize_summary.py" "$out" "${runs[@]}" || status=1
exit $status
