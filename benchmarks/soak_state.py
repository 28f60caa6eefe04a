"""Soak state across calls: the JSON file a shard (one call, one server life) resumes from and adds to, and the
summary written from it. Each call may run on a fresh machine, so everything a later call needs is in the
file: the plan signature, every finished round, every shard (its probes, memory samples, warm-up rounds) and
the reference probe outputs (the first probe pass ever made).
Pure Python."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

STATE_VERSION = 1
STATE_KIND = "kvprefetch-serving-soak"


def new_state(signature: Dict[str, Any]) -> Dict[str, Any]:
    return {"version": STATE_VERSION, "kind": STATE_KIND, "signature": signature, "rounds": [], "shards": [],
            "probe_reference": None}


def signature_mismatch(state: Dict[str, Any], signature: Dict[str, Any]) -> Optional[str]:
    """Why state cannot be resumed with this plan (None: it can)."""
    if state.get("kind") != STATE_KIND or state.get("version") != STATE_VERSION:
        return f"not a soak state file of version {STATE_VERSION}"
    old = state.get("signature") or {}
    for key in ("model", "probe", "rounds"):
        if old.get(key) != signature.get(key):
            return f"the plan's {key} differs from the state's (start over with --fresh, or use another --state)"
    return None


def done_ids(state: Dict[str, Any]) -> set:
    return {r["id"] for r in state.get("rounds", [])}


def pending(plan: Sequence[Any], state: Dict[str, Any]) -> List[Any]:
    """Plan rounds (objects with .id) not finished yet, in plan order."""
    done = done_ids(state)
    return [r for r in plan if r.id not in done]


def record_round(state: Dict[str, Any], rec: Dict[str, Any]) -> None:
    """Add a finished round (a round with the same id is replaced)."""
    rounds = state.setdefault("rounds", [])
    for i, r in enumerate(rounds):
        if r["id"] == rec["id"]:
            rounds[i] = rec
            return
    rounds.append(rec)


def new_shard(state: Dict[str, Any], info: Dict[str, Any]) -> Dict[str, Any]:
    shard = {"shard": len(state.setdefault("shards", [])), "error": None, "stopped": None, "warmup": [],
             "probes": [], "mem_samples": [], "rounds_done": [], "rounds_incomplete": []}
    shard.update(info)
    state["shards"].append(shard)
    return shard


def _shard_key(s: Dict[str, Any]) -> tuple:
    return (s.get("started") or "", s.get("shard"))


def merge_states(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    """One state from two made from the same plan (e.g. two copies that went different ways): rounds by id
    (b's record wins), shards by (start time, index) in start order, the probe reference of the earlier first
    shard."""
    if a.get("signature") != b.get("signature"):
        raise ValueError("states come from different plans")
    out = new_state(a["signature"])
    for r in list(a.get("rounds", [])) + list(b.get("rounds", [])):
        record_round(out, r)
    shards = {}
    for s in list(a.get("shards", [])) + list(b.get("shards", [])):
        shards[_shard_key(s)] = s
    out["shards"] = [shards[k] for k in sorted(shards)]
    refs = [x["probe_reference"] for x in (a, b) if x.get("probe_reference")]
    refs.sort(key=lambda r: r.get("started") or "")
    out["probe_reference"] = refs[0] if refs else None
    return out


def mem_growth(samples: Sequence[Dict[str, Any]]) -> Dict[str, Optional[int]]:
    """From one server life's samples [{"after": label, "mib": n}]: the baseline is the first sample taken after
    warm-up ("warmup"); growth = the largest later sample - baseline, final = the last sample - baseline."""
    vals = [s for s in samples if s.get("mib") is not None]
    idx = next((i for i, s in enumerate(vals) if s.get("after") == "warmup"), None)
    if idx is None:
        return {"baseline_mib": None, "growth_mb": None, "final_growth_mb": None}
    base = int(vals[idx]["mib"])
    later = [int(s["mib"]) for s in vals[idx + 1:]]
    return {"baseline_mib": base, "growth_mb": (max(later) - base) if later else 0,
            "final_growth_mb": (later[-1] - base) if later else 0}


def probe_verdict(state: Dict[str, Any]) -> Dict[str, Any]:
    """Every probe pass of every shard against the reference pass."""
    passes, diffs, errors = 0, [], 0
    for s in state.get("shards", []):
        for p in s.get("probes", []):
            passes += 1
            errors += sum(1 for o in p.get("outputs", []) if "error" in o)
            if p.get("diffs"):
                diffs.append({"shard": s.get("shard"), "when": p.get("when"), "diffs": p["diffs"]})
    return {"probe_passes": passes, "probe_identical": (not diffs) if passes else None, "probe_diffs": diffs,
            "probe_errors": errors}


def summary(state: Dict[str, Any], plan_ids: Sequence[str], header: Dict[str, Any]) -> Dict[str, Any]:
    """The results document: header (device, commit, ...) + totals + rounds + shards."""
    rounds = [r for r in state.get("rounds", []) if r.get("kind", "soak") == "soak"]
    warm = [w for s in state.get("shards", []) for w in s.get("warmup", [])]
    growth = [s["mem"]["growth_mb"] for s in state.get("shards", [])
              if (s.get("mem") or {}).get("growth_mb") is not None]
    final = [s["mem"]["final_growth_mb"] for s in state.get("shards", [])
             if (s.get("mem") or {}).get("final_growth_mb") is not None]
    probes = probe_verdict(state)
    done = done_ids(state)
    devices = sorted({s.get("device") for s in state.get("shards", []) if s.get("device")})
    doc = dict(header)
    doc.update({
        "devices": devices,
        "soak_requests": sum(r["sent"] for r in rounds),
        "soak_completed": sum(r["completed"] for r in rounds),
        "soak_aborted": sum(r["aborted"] for r in rounds),
        "failed_requests": sum(r["failed"] for r in rounds) + sum(w.get("failed", 0) for w in warm)
        + probes["probe_errors"],
        "soak_failed": sum(r["failed"] for r in rounds),
        "warmup_failed": sum(w.get("failed", 0) for w in warm),
        "gpu_mem_growth_mb": max(growth) if growth else None,
        "gpu_mem_final_growth_mb": max(final) if final else None,
        "gpu_mem_note": "nvidia-smi memory.used (MiB) after each round minus the sample right after warm-up, "
                        "within one server life; the largest over shards",
        "probe_identical": probes["probe_identical"],
        "probe_passes": probes["probe_passes"],
        "probe_diffs": probes["probe_diffs"],
        "prefill_tokens": sum(r.get("prompt_tokens", 0) for r in rounds),
        "input_len_range": [min((r["input_range"][0] for r in rounds), default=None),
                            max((r["input_range"][1] for r in rounds), default=None)],
        "abort_calls": sum(len(r.get("abort_calls") or []) for r in rounds),
        "rounds_planned": len(plan_ids),
        "rounds_done": sum(1 for i in plan_ids if i in done),
        "complete": all(i in done for i in plan_ids),
        "rounds": rounds,
        "shards": [{k: v for k, v in s.items() if k != "probes"} | {"probes": [
            {k: v for k, v in p.items() if k != "outputs"} for p in s.get("probes", [])]}
            for s in state.get("shards", [])],
    })
    return doc
