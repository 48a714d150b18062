#!/usr/bin/env bash
# The benchmark on a GPU machine, in a few minutes: same table, plus the
# achieved fraction of the GPU's own matmul rate.
#   bash benchmarks/gpu.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "jax[cuda12]" -e .
python3 -c "import jax; print(jax.devices()); assert jax.default_backend() == 'gpu'"
XLA_PYTHON_CLIENT_PREALLOCATE=false python3 benchmarks/bench.py --json "${OUT:-.}/bench-gpu.json"
