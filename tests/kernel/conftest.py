"""The fuzz case generator, its checker and the paged-input builder live in benchmarks/ (the GPU host runs them as
`python benchmarks/fuzz_decode.py`): put benchmarks/ on sys.path for these tests, as tests/benchmarks/ does."""
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
