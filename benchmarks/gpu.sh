#!/usr/bin/env bash
# The benchmark on a GPU machine, in a few minutes: the same table with larger
# cohorts (--preset gpu), the achieved fraction of the GPU's own matmul rate,
# the quickstart grid launched end to end, and the equivalence tests on the GPU.
#   bash benchmarks/gpu.sh [bench.py options]     (from the repository root)
# e.g. on a machine held for a short time, in stages with their own limits:
# the compile times per program, then the table and the record cost:
#   BENCH_TIMEOUT=300 QUICKSTART=0 TESTS=0 NAME=compile bash benchmarks/gpu.sh --parts compile
#   BENCH_TIMEOUT=240 QUICKSTART=0 TESTS=0 bash benchmarks/gpu.sh --parts table,record --widths 1024
# and the whole seed sweep split into compile, wait, train, record and write;
# then the same with XLA compiling each program's kernels on its thread pool
# (off by default), or with the record's small loops rolled (fewer kernels to
# compile, a host round trip per trip of them when it runs):
#   BENCH_TIMEOUT=540 QUICKSTART=0 TESTS=0 NAME=sweep bash benchmarks/gpu.sh --parts sweep
#   XLA_FLAGS=--xla_gpu_enable_llvm_module_compilation_parallelism=true \
#   BENCH_TIMEOUT=300 QUICKSTART=0 TESTS=0 NAME=sweep-llvm bash benchmarks/gpu.sh --parts sweep --one-launch
#   BENCH_TIMEOUT=300 QUICKSTART=0 TESTS=0 NAME=sweep-rolled bash benchmarks/gpu.sh --parts sweep --one-launch --unroll 1
# and with one program per width serving every depth, against the default one
# per (width, depth) (its skipped layers are conditionals, each a branch the
# host picks every step):
#   BENCH_TIMEOUT=540 QUICKSTART=0 TESTS=0 NAME=sweep-width bash benchmarks/gpu.sh --parts sweep --set train.programs=width
# Each part's figures reach $OUT/$NAME.json (NAME: bench-gpu unless set) as
# soon as it finishes; BENCH=0, QUICKSTART=0 and TESTS=0 leave a stage out.
# On a machine with a package registry it installs jax[cuda12] and normsweep.
# On one without (the lent machines here), it uses the jax already installed
# and wheels of anything else carried in .whl/ (netCDF4, cftime).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false NORMSWEEP_JAX_CACHE=off
nvidia-smi -L || true
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PWD:/tmp/site"
elif ! python3 -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    python3 -m pip install -q "jax[cuda12]" -e . || exit 1
else
    export PYTHONPATH="$PWD"
fi
python3 -c "import jax; print(jax.__version__, jax.devices()); assert jax.default_backend() == 'gpu'" || exit 1

NAME="${NAME:-bench-gpu}"
if [ "${BENCH:-1}" != 0 ]; then
    timeout "${BENCH_TIMEOUT:-1200}" python3 benchmarks/bench.py --preset gpu \
        --json "$OUT/$NAME.json" "$@" 2>&1 | tee "$OUT/$NAME.log"
fi

# the quickstart grid, end to end
if [ "${QUICKSTART:-1}" != 0 ]; then
    start=$(date +%s%N)
    python3 -m normsweep.cli launch sweeps/quickstart.toml --out /tmp/gpu-quickstart --quiet \
        2>&1 | tail -3
    echo "quickstart launch on GPU: $(( ($(date +%s%N) - start) / 1000000 )) ms"
fi

# equivalences on the GPU (vmapped == alone, reference loop, power iteration == SVD);
# the CPU-only layout test and the float64 one are left to the CPU suite
if [ "${TESTS:-1}" != 0 ]; then
    timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -p no:cacheprovider -p no:logging \
        tests/test_train.py tests/test_linalg.py \
        -k "not every_record_is_identical and not float64 and not options_follow" \
        2>&1 | tee "$OUT/tests-gpu.log" | tail -15
fi
