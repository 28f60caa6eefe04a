"""benchmarks/gpu_host/campaign.sh on a CPU: workers pin jobs to GPUs, once/resume bookkeeping, deferral."""
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_host" / "campaign.sh"


def campaign(tmp_path, plan_lines, seconds=60):
    plan = tmp_path / "plan.txt"
    plan.write_text("# GPU|NAME|MIN_S|KIND|COMMAND\n" + "\n".join(plan_lines) + "\n")
    state = tmp_path / "state"
    r = subprocess.run(["bash", str(SCRIPT), str(plan), str(seconds)], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "STATE": str(state)}, timeout=60)
    return r, state


def test_each_worker_sees_its_own_gpus(tmp_path):
    r, state = campaign(tmp_path, [
        '0|a|1|once|echo "dev=$CUDA_VISIBLE_DEVICES"',
        '2+3|tp|1|once|echo "dev=$CUDA_VISIBLE_DEVICES"',
        'cpu|c|1|once|echo "dev=[$CUDA_VISIBLE_DEVICES]"',
    ])
    assert r.returncode == 0, r.stderr
    assert "dev=0" in (state / "logs" / "a.log").read_text()
    assert "dev=2,3" in (state / "logs" / "tp.log").read_text()
    assert "dev=[]" in (state / "logs" / "c.log").read_text()
    assert sorted(p.name for p in (state / "done").iterdir()) == ["a", "c", "tp"]


def test_resume_job_stays_open_until_it_finishes_and_short_calls_defer(tmp_path):
    r, state = campaign(tmp_path, [
        '0|serve|1|resume|echo "STOPPED: deadline"',
        '1|late|3600|once|echo never',
    ])
    assert r.returncode == 0, r.stderr
    assert not (state / "done" / "serve").exists()
    assert "late: deferred" in r.stdout and not (state / "logs" / "late.log").exists()
