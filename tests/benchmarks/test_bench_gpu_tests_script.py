"""benchmarks/gpu_host/gpu_tests.sh on a CPU: its dry run names each slice's command and time limit."""
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_host" / "gpu_tests.sh"


def run(*args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env)


def test_dry_run_sizes_limits_by_engines(tmp_path):
    r = run(str(tmp_path), "kernel", "engine-page16-fp8", "tp2", env={"DRY_RUN": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("kernel (timeout 255 s)") and "-m gpu tests/kernel" in lines[0]
    assert lines[1].startswith("engine-page16-fp8 (timeout 450 s)") and "--basetemp=/tmp/kvp-gpu-tests/engine-page16-fp8" in lines[1]
    assert "test_gpu_tp.py" in lines[2]


def test_engine_seconds_can_be_raised_for_parallel_slices(tmp_path):
    r = run(str(tmp_path), "engine-fp8", env={"DRY_RUN": "1", "ENGINE_S": "90", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("engine-fp8 (timeout 330 s)") and '-k fp8' in r.stdout


def test_unknown_or_missing_slice_is_refused(tmp_path):
    assert run(str(tmp_path), "bogus", env={"DRY_RUN": "1", "PATH": "/usr/bin:/bin"}).returncode == 2
    r = run(str(tmp_path), env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "name at least one slice" in r.stderr
