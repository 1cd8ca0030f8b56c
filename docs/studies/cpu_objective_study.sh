#!/usr/bin/env bash
# The objective study of docs/results.md ("Posterior matching vs score matching at equal CPU time"), as run on the
# 2-core development machine: each variant is one process with one thread, started side by side; every run logs its
# own CPU time (train_log.jsonl `cpu_time`), and the variants are compared at the checkpoints nearest one CPU budget.
#   (a) score objective, continuing the bundled encoder        (b) posterior matching, teacher = bundled beta-VAE
#   (c) posterior matching, teacher = bundled ScoreVAE encoder (d) (b) at 2/3 of the budget, then (a)'s objective
#   (e) a cheaper student (first level 16 wide), teacher = beta-VAE, from scratch
# "bundled" means the package's models when each run was launched: the beta-VAE teacher was that of commit 661c24a
# (beta 0.01), retuned in 00b82f9 (beta 0.016) and again to beta 0.05 for the current bundle; (e) was resumed across the first
# retune (docs/results.md). To rerun with a given teacher, check its folder out of git and set TEACHER.
# Usage: bash docs/studies/cpu_objective_study.sh train      (background runs; resumable: run it again)
#        bash docs/studies/cpu_objective_study.sh tail STEP   (d: the score tail from (b)'s checkpoint STEP)
#        bash docs/studies/cpu_objective_study.sh eval BUDGET_CPU_SECONDS     (pipelines at the budget's checkpoints)
#        bash docs/studies/cpu_objective_study.sh select                      (gamma per variant, 100 images, DDPM 100)
#        bash docs/studies/cpu_objective_study.sh final PIPELINE SETTING NAME (500 images at the chosen setting)
set -euo pipefail
cd "$(dirname "$0")/.."
B=diffusers_scorevae/pretrained
TEACHER=${TEACHER:-$B/fashion-mnist-beta-vae}
OUT=${OUT:-runs/exp}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore

launch() {  # NAME MINUTES ARGS...
  local name=$1 minutes=$2; shift 2
  nohup python examples/train_scorevae_encoder.py --pretrained_model_name_or_path $B/fashion-mnist \
    --fashion_mnist_dir "$DATA" --output_dir "$OUT/$name" --max_train_steps 1000000 --max_train_minutes "$minutes" \
    --checkpointing_steps 250 --logging_steps 50 --logger none --seed 0 --random_flip --use_ema --ema_max_decay 0.999 \
    --resume_from_checkpoint latest "$@" > "$OUT/$name.log" 2>&1 &
}
SCORE="--objective score --loss_weighting likelihood --timestep_sampling importance --train_batch_size 64 --learning_rate 1e-3 --lr_warmup_steps 100"
POSTERIOR="--objective posterior --train_batch_size 128 --learning_rate 2e-4 --lr_warmup_steps 0"

case "${1:-}" in
  train)
    launch a_score 90 $SCORE --init_encoder $B/fashion-mnist
    launch b_post_bvae 90 $POSTERIOR --teacher "$TEACHER"
    launch c_post_svae 90 $POSTERIOR --teacher $B/fashion-mnist
    launch e_post_bvae_narrow 120 --objective posterior --teacher "$TEACHER" --init_encoder scratch \
      --train_batch_size 128 --learning_rate 1e-3 --lr_warmup_steps 100 --encoder_block_out_channels 16,64,128,128
    ;;
  tail)
    python scripts/checkpoint_to_pipeline.py "$OUT/b_post_bvae" "$OUT/b_at_$2" --step "$2"
    launch d_post_then_score 90 $SCORE --init_encoder "$OUT/b_at_$2/encoder" --max_train_steps "${3:-150}"
    ;;
  eval)
    for run in a_score b_post_bvae c_post_svae; do
      python scripts/checkpoint_to_pipeline.py "$OUT/$run" "$OUT/pipe_$run" --cpu_seconds "$2"
    done
    python scripts/checkpoint_to_pipeline.py "$OUT/d_post_then_score" "$OUT/pipe_d_post_then_score" --step "${3:-150}"
    ;;
  select)  # gamma per variant: first 100 test images, DDPM 100, gamma 1 / 2 / 4 (two processes side by side)
    C="--beta_vae $B/fashion-mnist-beta-vae --classifier $B/fashion-mnist-classifier --num_images 100 --batch_size 100"
    S="ddpm:100:1 ddpm:100:2 ddpm:100:4"
    python examples/evaluate_scorevae.py --pipelines "$OUT/pipe_a_score" "$OUT/pipe_b_post_bvae" $C --settings $S \
      --output "$OUT/select_ab.json" > "$OUT/select_ab.log" 2>&1 &
    python examples/evaluate_scorevae.py --pipelines "$OUT/pipe_c_post_svae" "$OUT/pipe_d_post_then_score" $C \
      --settings $S --output "$OUT/select_cd.json" > "$OUT/select_cd.log" 2>&1
    wait
    ;;
  final)  # PIPELINE SETTING NAME: first 500 test images, DDPM 250 at the chosen gamma
    python examples/evaluate_scorevae.py --pipelines "$2" --settings "$3" --num_images 500 --batch_size 250 \
      --beta_vae $B/fashion-mnist-beta-vae --classifier $B/fashion-mnist-classifier --output "$OUT/final_$4.json" \
      > "$OUT/final_$4.log" 2>&1
    ;;
  *) echo "usage: $0 train | tail STEP [TAIL_STEPS] | eval BUDGET [TAIL_STEPS] | select | final PIPE SETTING NAME"
     exit 2 ;;
esac
