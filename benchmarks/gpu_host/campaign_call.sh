#!/usr/bin/env bash
# One device call of a campaign: set up (idempotent on a warm host), install FA3 if its parts were staged,
# run the plan for what is left of the call, pack the campaign's state into $OUT/campaign.tgz.
#   usage: bash benchmarks/gpu_host/campaign_call.sh PLAN [CALL_S=600] [save-cache]
plan=${1:?usage: campaign_call.sh PLAN [CALL_S] [save-cache]}
call_s=${2:-600}
t0=$SECONDS
source benchmarks/gpu_host/setup.sh || exit 1
bash .gpu/bin/stage_fa3.sh receive | tail -1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
margin=$([ "${3:-}" = save-cache ] && echo 70 || echo 35)
bash benchmarks/gpu_host/campaign.sh "$plan" $((call_s - (SECONDS - t0) - margin))
tar czf "$OUT/campaign.tgz" -C /tmp --exclude='*.so' kvp-campaign 2>/dev/null
[ "${3:-}" = save-cache ] && gpu_save_cache "$OUT"
ls -la "$OUT"
