#!/usr/bin/env bash
# The GPU test suites in slices that fit a device call, each under a timeout sized to its SGLang Engines
# (~65 s each; ENGINE_S overrides), logs kept in OUTDIR (one archive at the end: a call's $OUT returns only a limited number of files).
#   usage: bash benchmarks/gpu_host/gpu_tests.sh OUTDIR SLICE ...      (after `source benchmarks/gpu_host/setup.sh`)
#   SLICE (its time limit): kernel (255 s) decoder (60 s) fuzz (190 s) engine-page1 (320 s) engine-page16-fp8 (450 s) engine-fp8 (255 s)
#   llama8b (125 s) fa3-knob (255 s) hybrid (450 s) fa3 (450 s: hybrid FA3 prefill, FA3-prefill knob, logprobs vs fa3) fallback-server (385 s) tp2 (320 s, two GPUs). A device call is at most 600 s: pick slices whose
#   limits fit, or run two jobs at once on a 2-GPU host with GPU=0 / GPU=1 (CUDA_VISIBLE_DEVICES) and separate
#   OUTDIRs. DRY_RUN=1 prints the commands.
set -u
out=${1:?usage: gpu_tests.sh OUTDIR SLICE ...}
shift
slices=("$@")
[ ${#slices[@]} -gt 0 ] || { echo "gpu_tests.sh: name at least one slice (see the header)" >&2; exit 2; }
mkdir -p "$out/logs" /tmp/kvp-gpu-tests   # pytest makes --basetemp but not its parent
failed=0
[ -n "${GPU:-}" ] && export CUDA_VISIBLE_DEVICES=$GPU
py=${PYTHON:-python3}
engine_s=${ENGINE_S:-65}  # an Engine's start + run alone on the host; with four Engine slices in parallel 75-110 s

run_slice() {  # name, engines, command...
  local name=$1 engines=$2
  shift 2
  local limit=$((60 + engines * engine_s))
  if [ -n "${DRY_RUN:-}" ]; then
    echo "$name (timeout ${limit} s): $*"
    return 0
  fi
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" > "$out/logs/$name.log" 2>&1
  local rc=$?
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  echo "$name: exit $rc in $((SECONDS - t0)) s (limit $limit s); $(grep -E '[0-9]+ (passed|failed)' "$out/logs/$name.log" | tail -1)"
}

run_pytest() {  # name, engines, pytest arguments; each slice its own basetemp (pytest empties it at start)
  local name=$1 engines=$2
  shift 2
  run_slice "$name" "$engines" "$py" -m pytest -q -rs -s --basetemp="/tmp/kvp-gpu-tests/$name" "$@"
}

for s in "${slices[@]}"; do
  case $s in
    kernel) run_pytest kernel 3 -m gpu tests/kernel -k "not fuzz" ;;  # ~146 cases since session 16 (124 took 125 s)
    decoder) run_pytest decoder 0 tests/integration/test_gpu_decoder.py ;;
    fuzz) run_slice fuzz 2 "$py" benchmarks/fuzz_decode.py --cases 2000 --deadline-s 150 --out "$out/fuzz.json" ;;
    engine-page1) run_pytest engine-page1 4 tests/integration/test_gpu_engine.py -k "meaningful or page1-graphs or page1-eager" ;;
    engine-page16-fp8) run_pytest engine-page16-fp8 6 tests/integration/test_gpu_engine.py -k "page16 or fp8" ;;
    engine-fp8) run_pytest engine-fp8 3 tests/integration/test_gpu_engine.py -k "fp8" ;;
    llama8b) run_pytest llama8b 1 tests/integration/test_gpu_engine.py -k "llama8b" ;;
    fa3-knob) run_pytest fa3-knob 3 tests/integration/test_gpu_engine.py -k "knob" ;;
    hybrid) run_pytest hybrid 6 tests/integration/test_gpu_engine.py -k "hybrid or llama8b" ;;
    fa3) run_pytest fa3 6 tests/integration/test_gpu_engine.py -k "fa3" ;;
    fallback-server) run_pytest fallback-server 5 tests/integration/test_gpu_jit_fallback.py tests/integration/test_gpu_server.py ;;
    tp2) run_pytest tp2 4 tests/integration/test_gpu_tp.py ;;
    *) echo "gpu_tests.sh: unknown slice '$s'" >&2; exit 2 ;;
  esac
done
[ -n "${DRY_RUN:-}" ] && exit 0
find /tmp/kvp-gpu-tests -name '*.log' 2>/dev/null | tar czf "$out/logs/engine-logs.tgz" -T - 2>/dev/null
shopt -s nullglob
(cd "$out" && tar czf gpu-tests.tgz logs ./*.json && rm -rf logs)
[ "$failed" -eq 0 ] || { echo "gpu_tests.sh: $failed slice(s) failed" >&2; exit 1; }
