#!/usr/bin/env bash
# Trains everything the bundled Fashion-MNIST model needs on one GPU, in ~9 minutes of wall time:
#   phase 1 (in parallel): the default prior, the large prior, the beta-VAE baseline, the classifier
#   phase 2 (in parallel): ScoreVAE encoder variants against the default prior; FD of both priors
#   phase 3 (in parallel): reconstruction metrics of every encoder variant next to the beta-VAE
# Usage: DATA=folder-with-fashion-mnist-idx-gz OUT=results-folder bash docs/studies/gpu_train_bundle.sh
# Phase lengths (minutes) can be set with P1, P2. Results are packed into $OUT after each phase.
set -u
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
OUT=${OUT:-runs/gpu-out}
W=${W:-/tmp/bundle}
P1=${P1:-5.0}
P2=${P2:-2.7}
FD_SAMPLES=${FD_SAMPLES:-10000}
EVAL_IMAGES=${EVAL_IMAGES:-500}
SETTINGS=${SETTINGS:-"ddim:50:1 ddim:50:2 ddim:50:4 ddim:50:4:noclip ddpm:250:1 ddpm:250:4"}
CLS_EPOCHS=${CLS_EPOCHS:-15}
mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python}
COMMON="--fashion_mnist_dir $DATA"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

# ---- phase 1 -------------------------------------------------------------------------------------------------------
stamp "phase 1"
$PY examples/train_prior.py $COMMON --output_dir $W/prior --block_out_channels 32,64,128 --layers_per_block 1 \
  --train_batch_size 256 --learning_rate 1e-3 --lr_warmup_steps 500 --use_ema --mixed_precision bf16 --random_flip \
  --max_train_minutes $P1 --num_epochs 100000 --checkpointing_steps 4000 --logging_steps 500 > $W/prior.log 2>&1 &
$PY examples/train_prior.py $COMMON --output_dir $W/prior_large --block_out_channels 64,128,128 --layers_per_block 2 \
  --beta_schedule squaredcos_cap_v2 --prediction_type v_prediction \
  --train_batch_size 256 --learning_rate 5e-4 --lr_warmup_steps 500 --use_ema --mixed_precision bf16 --random_flip \
  --max_train_minutes $P1 --num_epochs 100000 --checkpointing_steps 4000 --logging_steps 500 > $W/prior_large.log 2>&1 &
$PY examples/train_beta_vae.py $COMMON --output_dir $W/beta_vae --latent_dim 32 --beta 0.01 --train_batch_size 256 \
  --learning_rate 1e-3 --max_train_steps 1000000 --max_train_minutes 3.5 --checkpointing_steps 5000 --logging_steps 500 \
  --random_flip > $W/beta_vae.log 2>&1 &
if [ -n "${CLASSIFIER:-}" ]; then cp -r $CLASSIFIER $W/classifier; echo "carried $CLASSIFIER" > $W/classifier.log; else
  $PY examples/train_classifier.py $COMMON --output_dir $W/classifier --num_epochs $CLS_EPOCHS ${CLS_EXTRA:-} > $W/classifier.log 2>&1 &
fi
wait
stamp "phase 1 done"
tail -n 3 $W/*.log
$PY - <<PY
import glob, json
for f in glob.glob("$W/*/train_log.jsonl"):
    lines = open(f).read().splitlines()
    print(f, lines[-1] if lines else None)
PY
tar --ignore-failed-read -czf $OUT/prior.tgz -C $W prior/unet prior/scheduler prior/model_index.json prior/train_log.jsonl prior.log
$PY scripts/to_fp16.py $W/prior_large/unet
tar --ignore-failed-read -czf $OUT/prior_large.tgz -C $W prior_large/unet prior_large/scheduler prior_large/model_index.json prior_large/train_log.jsonl prior_large.log
tar --ignore-failed-read -czf $OUT/baselines.tgz -C $W beta_vae/config.json beta_vae/diffusion_pytorch_model.safetensors beta_vae/train_log.jsonl beta_vae.log classifier classifier.log
stamp "packed phase 1"

# ---- phase 2 -------------------------------------------------------------------------------------------------------
ENC="--pretrained_model_name_or_path $W/prior $COMMON --train_batch_size 128 --max_train_steps 1000000 \
  --max_train_minutes $P2 --checkpointing_steps 100000 --logging_steps 100 --logger none --seed 0 --random_flip \
  --latent_dim 32 --beta 0.01 --dataloader_num_workers 2 --lr_warmup_steps 200"
$PY examples/train_scorevae_encoder.py $ENC --output_dir $W/enc_simple --learning_rate 1e-3 > $W/enc_simple.log 2>&1 &
$PY examples/train_scorevae_encoder.py $ENC --output_dir $W/enc_likelihood --learning_rate 1e-3 \
  --loss_weighting likelihood --timestep_sampling importance > $W/enc_likelihood.log 2>&1 &
$PY examples/train_scorevae_encoder.py $ENC --output_dir $W/enc_init_bvae --learning_rate 1e-3 \
  --init_encoder $W/beta_vae > $W/enc_init_bvae.log 2>&1 &
$PY examples/train_scorevae_encoder.py $ENC --output_dir $W/enc_init_bvae_ema --learning_rate 1e-3 --use_ema \
  --ema_max_decay 0.999 --init_encoder $W/beta_vae > $W/enc_init_bvae_ema.log 2>&1 &
$PY examples/evaluate_prior.py --pipeline $W/prior --classifier $W/classifier --num_samples $FD_SAMPLES --scheduler ddim \
  --num_inference_steps 50 --output_dir $W/fd_prior $COMMON > $W/fd_prior.log 2>&1 &
$PY examples/evaluate_prior.py --pipeline $W/prior_large --classifier $W/classifier --num_samples $FD_SAMPLES --scheduler ddim \
  --num_inference_steps 50 --output_dir $W/fd_prior_large $COMMON > $W/fd_prior_large.log 2>&1 &
wait
stamp "phase 2 done"
tail -n 2 $W/enc_*.log $W/fd_*.log
for v in enc_simple enc_likelihood enc_init_bvae enc_init_bvae_ema; do tail -n 1 $W/$v/train_log.jsonl; done
tar --ignore-failed-read -czf $OUT/encoders.tgz -C $W enc_simple/encoder enc_simple/train_log.jsonl enc_likelihood/encoder enc_likelihood/train_log.jsonl \
  enc_init_bvae/encoder enc_init_bvae/train_log.jsonl enc_init_bvae_ema/encoder enc_init_bvae_ema/train_log.jsonl \
  fd_prior fd_prior_large enc_simple.log enc_likelihood.log enc_init_bvae.log enc_init_bvae_ema.log fd_prior.log fd_prior_large.log
stamp "packed phase 2"

# ---- phase 3 -------------------------------------------------------------------------------------------------------
for v in enc_simple enc_likelihood enc_init_bvae enc_init_bvae_ema; do
  $PY examples/evaluate_scorevae.py --pipelines $W/$v --beta_vae $W/beta_vae --classifier $W/classifier $COMMON \
    --num_images $EVAL_IMAGES --settings $SETTINGS \
    --save_reconstructions 16 --output $W/eval_$v.json > $W/eval_$v.log 2>&1 &
done
wait
stamp "phase 3 done"
tail -n 8 $W/eval_*.log
tar --ignore-failed-read -czf $OUT/eval.tgz -C $W $(cd $W && ls eval_*)
for f in $OUT/*.tgz; do if [ $(stat -c %s $f) -gt 15000000 ]; then split -b 15000000 $f $f.part- && rm $f; fi; done
ls -la $OUT
stamp "all done"
