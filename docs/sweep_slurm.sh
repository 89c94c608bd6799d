#!/bin/bash
# A sweep of the explain job as a SLURM array: lambda' (3 values) x the perceptual ball's ReLU range (2), 6 runs,
# one array task each. Submit from the repository root, then collect once every task has ended (docs/sweeps.md):
#
#   jobid=$(sbatch --parsable docs/sweep_slurm.sh)
#   sbatch --dependency=afterany:$jobid --wrap ". .venv/bin/activate && python -m eval.collect \
#       '${SWEEP_DIR:-$HOME/sweep}/*' --out=${SWEEP_DIR:-$HOME/sweep}_table"
#
# Each workdir is resumable: a requeued or resubmitted task continues from its stored batches.
# Print the command of task i without running it: DRY_RUN=1 SLURM_ARRAY_TASK_ID=i bash docs/sweep_slurm.sh
#
#SBATCH --job-name=pb-sweep
#SBATCH --array=0-5
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=02:00:00
#SBATCH --output=slurm-%A_%a.out
#SBATCH --requeue
# On a GPU partition add: #SBATCH --gres=gpu:1 (and install with pip install -e ".[cuda]").

set -euo pipefail

LAMS=(1000 10000 100000)
LAYERS=("(2,3,4,5,6,7,8,9,10,11,12,13)" "(5,6,7,8,9,10)")  # the paper's guided range, and the unguided one
LAYER_NAMES=(2-13 5-10)
SWEEP_DIR=${SWEEP_DIR:-$HOME/sweep}

i=${SLURM_ARRAY_TASK_ID:?run under sbatch, or set SLURM_ARRAY_TASK_ID}
if (( i < 0 || i >= ${#LAMS[@]} * ${#LAYERS[@]} )); then
  echo "task $i is outside the sweep (0-$(( ${#LAMS[@]} * ${#LAYERS[@]} - 1 )))" >&2
  exit 1
fi
lam=${LAMS[i % ${#LAMS[@]}]}
layer=$(( i / ${#LAMS[@]} ))

cd "${SLURM_SUBMIT_DIR:-.}"
if [[ -z ${DRY_RUN:-} && -f .venv/bin/activate ]]; then
  . .venv/bin/activate
fi
${DRY_RUN:+echo} python -m perturb_jax.main --config=configs/guided.py --config.methods=perceptual_ball \
    --config.method.perceptual_ball.lam_perceptual="$lam" \
    --config.method.perceptual_ball.relu_layers="${LAYERS[layer]}" \
    --workdir="$SWEEP_DIR/relu${LAYER_NAMES[layer]}_lam$lam"
