#!/usr/bin/env bash
# Run a plan of GPU jobs across one or more device calls on a multi-GPU host: one worker per GPU runs its own
# jobs in order (a job stays on its GPU in every call, so every comparison a job makes is on one card).
#   usage: bash benchmarks/gpu_host/campaign.sh PLAN SECONDS      (after `source benchmarks/gpu_host/setup.sh`)
# PLAN lines: GPU|NAME|MIN_S|KIND|COMMAND   (# comments allowed)
#   KIND once:   run in one call only, whatever its exit status (tests, benchmarks that do not resume)
#   KIND resume: run again in every call until it exits 0 without printing STOPPED (serving_bench resumes
#                its finished points, so a rerun only does what is left)
#   GPU "cpu": a worker with no GPU visible (CPU-only jobs alongside). GPU "2+3": a worker that sees GPUs 2 and 3
#   (TP=2 tests); it runs beside the workers of GPU 2 and GPU 3, so give those no jobs in the same plan.
#   A job is started only if MIN_S seconds are left; COMMAND sees DEADLINE_S (seconds it may use) and JOB_OUT
#   (its folder under $STATE, kept on the host between calls while it stays warm).
# SECONDS: this call's budget from now. State (done markers, job outputs, logs) lives in STATE=/tmp/kvp-campaign.
set -u
plan=${1:?usage: campaign.sh PLAN SECONDS}
budget=${2:?usage: campaign.sh PLAN SECONDS}
state=${STATE:-/tmp/kvp-campaign}
end=$(( $(date +%s) + budget ))
mkdir -p "$state/done" "$state/logs"

worker() {  # gpu
  local gpu=$1 name min kind cmd left t0 rc log dev
  while IFS='|' read -r g name min kind cmd; do
    [[ -z "$g" || "$g" == \#* || "$g" != "$gpu" ]] && continue
    [ -f "$state/done/$name" ] && { echo "[gpu$gpu] $name: done earlier"; continue; }
    left=$(( end - $(date +%s) ))
    if [ "$left" -lt "$min" ]; then echo "[gpu$gpu] $name: deferred ($left s left, needs $min)"; continue; fi
    log="$state/logs/$name.log"
    mkdir -p "$state/$name"
    echo "[gpu$gpu] $name: start ($left s left)"
    t0=$(date +%s)
    echo "=== call at $(date -u +%FT%TZ), $left s left" >> "$log"
    dev=${gpu//+/,}; [ "$gpu" = cpu ] && dev=""
    CUDA_VISIBLE_DEVICES=$dev DEADLINE_S=$(( left - 25 )) JOB_OUT="$state/$name" \
      timeout -k 10 $(( left - 5 )) bash -c "$cmd" >> "$log" 2>&1
    rc=$?
    if [ "$kind" = once ] || { [ "$rc" -eq 0 ] && ! tail -5 "$log" | grep -q STOPPED; }; then
      touch "$state/done/$name"
    fi
    echo "[gpu$gpu] $name: exit $rc in $(( $(date +%s) - t0 )) s; $(grep -E '[0-9]+ (passed|failed)|STOPPED|wall time' "$log" | tail -1)"
  done < "$plan"
}

gpus=$(cut -d'|' -f1 "$plan" | grep -E '^([0-9]+(\+[0-9]+)*|cpu)$' | sort -u)
for g in $gpus; do worker "$g" & done
wait
echo "campaign: done markers: $(ls "$state/done" | tr '\n' ' ')"
