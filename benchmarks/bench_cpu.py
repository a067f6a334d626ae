"""The CPU optimizer-step benchmark (issue 5), one command, re-runnable.

    python benchmarks/bench_cpu.py                 # full run: a few minutes on 2 cores
    python benchmarks/bench_cpu.py --smoke         # seconds
    python benchmarks/bench_cpu.py --set gpt-like --impl fused

Exactly ``adamlab bench --device cpu --cold-start --out benchmarks/out/cpu`` plus any
options given: the table goes to stdout, JSON and the chart to the output folder. Paste
the table into the "CPU optimizer step" section of benchmarks/RESULTS.md, with a note on
whether the machine was quiet.
"""

import sys
from pathlib import Path

from adamlab.bench.cli import main

if __name__ == "__main__":
    out = str(Path(__file__).resolve().parent / "out" / "cpu")
    main(["--device", "cpu", "--cold-start", "--out", out, *sys.argv[1:]])
