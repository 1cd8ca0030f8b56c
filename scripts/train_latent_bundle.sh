#!/usr/bin/env bash
# Build the latent Fashion-MNIST bundle, `pretrained_path("fashion-mnist-latent")`, on CPU, in order:
#
#   1. autoencoder  examples/train_autoencoder_kl.py: AutoencoderKL, images padded 28->32 with black, 8x8x4 latents,
#                   scaling_factor = 1/std of the training latents (its test L2 is in autoencoder/metrics.json)
#   2. prior        examples/train_prior.py --vae: a UNet2DModel over the cached 4x8x8 latents (LDM-style folder)
#   3. beta_vae     examples/train_beta_vae.py --vae: a beta-VAE on the same latents, the teacher
#   4. encoder      examples/train_scorevae_encoder.py --objective posterior --teacher beta_vae --pad_images: the
#                   ScoreVAE encoder (initialised from the teacher's encoder) on the prior's latents
#   5. assemble     scripts/assemble_latent_bundle.py: ScoreVAEPipeline (unet, scheduler, encoder, vae), float16, DEST
#   6. evaluate     scorevae evaluate on the test set (28x28 metrics: decodes cropped back; the pixel beta-VAE and the
#                   autoencoder's own reconstruction beside it), then scripts/latent_bundle_report.py prints the table
#
# Resumable: a stage whose WORK/<stage>.done exists is skipped; a killed training resumes from its checkpoints when the
# script runs again. WORK/<stage>.seconds accumulates the wall time of each completed invocation of a stage.
#
#   OMP_NUM_THREADS=1 bash scripts/train_latent_bundle.sh                        # full size (estimate below)
#   TINY=1 WORK=/tmp/latent-rehearsal bash scripts/train_latent_bundle.sh         # every stage in ~1-2 min
#
# Environment: WORK (default runs/latent-bundle; TINY: /tmp/latent-bundle-tiny), DEST (default the package's
# diffusers_scorevae/pretrained/fashion-mnist-latent; TINY: WORK/fashion-mnist-latent), DATA (the idx folder, default
# Debian's /usr/share/datasets/fashion-mnist) or DATASET_NAME (e.g. zalando-datasets/fashion_mnist, from the Hub),
# EVAL_IMAGES (0: stop after assembling) / EVAL_STEPS / EVAL_SCHEDULER / EVAL_GUIDANCE / EVAL_BATCH, and the step counts below.
#
# Full size, as the shipped bundle was built (OMP_NUM_THREADS=1 on the shared 2-core machine, another job on the other
# core; WORK/<stage>.seconds): autoencoder 2,000 steps (batch 64, 16,32,64 channels) 20 min, with its scaling factor
# and the test L2 of 10,000 images; prior 2,400 steps (batch 128, 4.4M parameters, EMA) 23 min; beta-VAE 1,500 steps
# 6 min; encoder 3,000 steps 8 min (each of stages 2-4 first encodes the 60,000 padded images through the autoencoder);
# assembling 6 s: 57 minutes in all. The evaluation (DDPM 50, gamma 2, this bundle's best, batch 500) of the 10,000
# test images: about 20 minutes more. The step counts are AE_STEPS, PRIOR_STEPS, BETA_VAE_STEPS, ENCODER_STEPS.
set -euo pipefail
cd "$(dirname "$0")/.."

TINY=${TINY:-0}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
DATASET_NAME=${DATASET_NAME:-}
if [ "$TINY" = 1 ]; then
  WORK=${WORK:-/tmp/latent-bundle-tiny}
  DEST=${DEST:-$WORK/fashion-mnist-latent}
  SAMPLES="--max_train_samples 256"
  AE_ARGS="--block_out_channels 8,16,16 --norm_num_groups 4 --train_batch_size 32 --max_train_steps ${AE_STEPS:-6} \
    --checkpointing_steps 3 --logging_steps 2 --scaling_images 256 --num_test_images 64"
  PRIOR_ARGS="--block_out_channels 16,32 --attention_levels 1 --attention_head_dim 8 --norm_num_groups 4 \
    --train_batch_size 32 --max_train_steps ${PRIOR_STEPS:-6} --checkpointing_steps 3 --logging_steps 2"
  BETA_VAE_ARGS="--block_out_channels 16,32 --latent_dim 8 --train_batch_size 32 --max_train_steps ${BETA_VAE_STEPS:-6} \
    --checkpointing_steps 3 --logging_steps 2"
  ENCODER_ARGS="--train_batch_size 32 --max_train_steps ${ENCODER_STEPS:-6} --checkpointing_steps 3 --logging_steps 2"
  EVAL_IMAGES=${EVAL_IMAGES:-8}
  EVAL_STEPS=${EVAL_STEPS:-3}
  EVAL_BATCH=${EVAL_BATCH:-8}
else
  WORK=${WORK:-runs/latent-bundle}
  DEST=${DEST:-diffusers_scorevae/pretrained/fashion-mnist-latent}
  SAMPLES=""
  AE_ARGS="--block_out_channels 16,32,64 --reconstruction_loss l2 --train_batch_size 64 --max_train_steps ${AE_STEPS:-2000} \
    --checkpointing_steps 100"
  PRIOR_ARGS="--block_out_channels 64,128,128 --layers_per_block 1 --attention_levels 2 --attention_head_dim 32 \
    --train_batch_size 128 --max_train_steps ${PRIOR_STEPS:-2400} --checkpointing_steps 200 --use_ema"
  BETA_VAE_ARGS="--block_out_channels 64,128,128 --latent_dim 32 --beta 0.01 --train_batch_size 128 \
    --max_train_steps ${BETA_VAE_STEPS:-1500} --checkpointing_steps 250"
  ENCODER_ARGS="--train_batch_size 128 --learning_rate 2e-4 --use_ema --max_train_steps ${ENCODER_STEPS:-3000} \
    --checkpointing_steps 250"
  EVAL_IMAGES=${EVAL_IMAGES:-10000}
  EVAL_STEPS=${EVAL_STEPS:-50}
  EVAL_BATCH=${EVAL_BATCH:-500}
fi
EVAL_SCHEDULER=${EVAL_SCHEDULER:-ddpm}
EVAL_GUIDANCE=${EVAL_GUIDANCE:-2.0}
if [ -n "$DATASET_NAME" ]; then
  DATA_ARGS="--dataset_name $DATASET_NAME"
  EVAL_DATA_ARGS="--dataset-name $DATASET_NAME"
else
  DATA_ARGS="--fashion_mnist_dir $DATA"
  EVAL_DATA_ARGS="--fashion-mnist-dir $DATA"
fi
mkdir -p "$WORK"

stamp() { echo "[$(date +%H:%M:%S)] $*"; }

# stage NAME COMMAND...: skip when WORK/NAME.done exists; else run, add the wall seconds to WORK/NAME.seconds, mark done
stage() {
  local name=$1
  shift
  if [ -f "$WORK/$name.done" ]; then
    stamp "$name: done already ($WORK/$name.done), skipped"
    return
  fi
  stamp "$name: $*"
  local start=$SECONDS
  "$@"
  local previous
  previous=$(cat "$WORK/$name.seconds" 2>/dev/null || echo 0)
  echo $((previous + SECONDS - start)) >"$WORK/$name.seconds"
  touch "$WORK/$name.done"
}

# shellcheck disable=SC2086  # the *_ARGS are word lists
stage autoencoder python examples/train_autoencoder_kl.py $DATA_ARGS $SAMPLES $AE_ARGS \
  --output_dir "$WORK/autoencoder" --resume_from_checkpoint latest
# shellcheck disable=SC2086
stage prior python examples/train_prior.py $DATA_ARGS $SAMPLES $PRIOR_ARGS --vae "$WORK/autoencoder" \
  --output_dir "$WORK/prior"
# shellcheck disable=SC2086
stage beta_vae python examples/train_beta_vae.py $DATA_ARGS $SAMPLES $BETA_VAE_ARGS --vae "$WORK/autoencoder" \
  --output_dir "$WORK/beta_vae" --device cpu
# shellcheck disable=SC2086
stage encoder python examples/train_scorevae_encoder.py $DATA_ARGS $SAMPLES $ENCODER_ARGS --pad_images --center_crop \
  --pretrained_model_name_or_path "$WORK/prior" --objective posterior --teacher "$WORK/beta_vae" --logger none \
  --checkpoints_total_limit 2 --output_dir "$WORK/encoder" --resume_from_checkpoint latest
stage assemble python scripts/assemble_latent_bundle.py --pipeline "$WORK/encoder" --dest "$DEST"
if [ "$EVAL_IMAGES" = 0 ]; then
  stamp "EVAL_IMAGES=0: built $DEST; the evaluate stage is left for a later run"
  exit 0
fi
# shellcheck disable=SC2086
stage evaluate python -m diffusers_scorevae.cli evaluate --pipeline "$DEST" $EVAL_DATA_ARGS \
  --num-images "$EVAL_IMAGES" --num-inference-steps "$EVAL_STEPS" --scheduler "$EVAL_SCHEDULER" \
  --guidance-scale "$EVAL_GUIDANCE" --batch-size "$EVAL_BATCH" --device cpu --output "$WORK/evaluate.json"
python scripts/latent_bundle_report.py --work_dir "$WORK" --evaluation "$WORK/evaluate.json"
