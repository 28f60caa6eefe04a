"""The benchmark scripts import their helpers as top-level modules (they run as `python benchmarks/X.py`):
put benchmarks/ on sys.path for these tests."""
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
