#!/usr/bin/env bash
# Issue 28's GPU figures in one call of the device tool (one GPU, under 10 minutes), from the repository root there:
#   benchmarks/device_wheels.sh            # here, first: the wheels the device image lacks, into .whl
#   run(command="bash benchmarks/device_session.sh", carry=[".whl"], timeout_s=600)
# Everything it measures lands in $OUT as JSON records (commit them under benchmarks/ and update docs/benchmarks.md):
#   1. ddpm bench, cifar10, batch 128, speed auto against plain: training images/s, the single-step and whole-set
#      sampling rates (whole sets with per-sample noise on the device), bits/dim, the fused attention kernels taken,
#      a FID job's scoring rate on 50,000 samples and 50,000 reference images (stand-in Inception weights: no network);
#   2. ddpm bench --against diffusers at batch 128 (training at like precision, DDIM sampling);
#   3. the noise on the device: deterministic, the same in any batches, its cost against CPU generators;
#   4. the chain train -> sample -> FID -> bits/dim through the CLI at a small scale.
set -uo pipefail
OUT=${OUT:-/tmp/ddpm-device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.csv"
cat "$OUT/gpu.csv"
# at most 8 files come back from $OUT: one log for all steps, the records
step() { echo "== $1 ($(date -u +%T))" | tee -a "$OUT/session.log"; timeout "$2" "${@:3}" >> "$OUT/session.log" 2>&1
         echo "$1 exit $?" | tee -a "$OUT/session.log"; }
step noise 45 python3 benchmarks/device_noise.py --device cuda --out "$OUT"
step bench 200 python3 -m ddpm.cli bench --preset cifar10 --batch-size 128 --device cuda --mlflow false \
    --out "$OUT" --fid-images 50000
step against 210 python3 -m ddpm.cli bench --against diffusers --device cuda --batch-size 128 --steps 10 \
    --warmup 3 --rounds 3 --mlflow false --out "$OUT"
step chain 120 python3 benchmarks/device_chain.py --device cuda --out "$OUT"
ls -lR "$OUT"
