#!/usr/bin/env bash
# One shard of a shadowlab run per Slurm array task. Submit from the repository root:
#
#   N=8 sbatch --array=0-7 experiments/scripts/slurm-array.sh --quick
#
# Array task i runs `shadowlab run --shard (i+1)/N --out $OUT/shard-(i+1)`; after the array is
# done, join the shards with
#
#   target/release/shadowlab merge "$OUT"/shard-* --out "$OUT"/merged
#
# Environment: N (shards; must match --array=0-(N-1)), OUT (default bench-results/slurm-$JOB),
# SHADOWLAB (the driver, default target/release/shadowlab). Arguments after the script are
# passed to `shadowlab run` (a preset, --reps, ...); every task must get the same ones, or
# merge refuses the shards as different matrices.
#SBATCH --job-name=shadowlab
#SBATCH --array=0-2
#SBATCH --cpus-per-task=2
#SBATCH --output=shadowlab-%A_%a.out
set -euo pipefail
: "${SLURM_ARRAY_TASK_ID:?run this with sbatch --array=0-(N-1)}"
N="${N:-${SLURM_ARRAY_TASK_COUNT:-3}}"
OUT="${OUT:-bench-results/slurm-${SLURM_ARRAY_JOB_ID:-local}}"
SHADOWLAB="${SHADOWLAB:-target/release/shadowlab}"
K=$((SLURM_ARRAY_TASK_ID + 1))
mkdir -p "$OUT"
echo "shadowlab shard $K/$N on $(hostname) -> $OUT/shard-$K"
exec "$SHADOWLAB" run --shard "$K/$N" --out "$OUT/shard-$K" "$@"
