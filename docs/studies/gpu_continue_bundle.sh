#!/usr/bin/env bash
# Second GPU session for the bundled Fashion-MNIST model (~9 minutes of wall time on one H200):
#   phase 0: decode-cost benchmark of the bundled pipeline (alone on the GPU, so the timing is clean)
#   phase 1 (in parallel): continue the large prior from its bundled weights (--init_unet); continue the bundled
#            encoder against the bundled prior (--init_encoder) in two batch sizes
#   phase 2 (in parallel): pick the encoder variant with the lower L2 on 500 test images; FD of both priors on 10k
#            samples; the full 10k test set for the winner with its own prior and with the large prior (next to the
#            beta-VAE); the steps and guidance sweeps on 1,000 images; the learning curve over its checkpoints
# Usage: DATA=folder-with-fashion-mnist-idx-gz OUT=results-folder bash docs/studies/gpu_continue_bundle.sh
set -u
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
OUT=${OUT:-runs/gpu2-out}
W=${W:-/tmp/bundle2}
P1=${P1:-4.5}
NTEST=${NTEST:-10000}
NSWEEP=${NSWEEP:-1000}
NCURVE=${NCURVE:-500}
NSELECT=${NSELECT:-500}
FD_SAMPLES=${FD_SAMPLES:-10000}
BENCH=${BENCH:-1}
PY=${PY:-python}
PKG=diffusers_scorevae/pretrained
mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
COMMON="--fashion_mnist_dir $DATA"

# ---- phase 0 -------------------------------------------------------------------------------------------------------
stamp "phase 0: benchmark"
[ "$BENCH" = 1 ] && $PY benchmarks/bench_decode.py --pipeline $PKG/fashion-mnist --batch_size 64 --num_inference_steps 250 --repeats 3 \
  > $OUT/bench_decode_bundled.txt 2>&1
[ "$BENCH" = 1 ] && $PY benchmarks/bench_decode.py --pipeline $PKG/fashion-mnist --batch_size 1000 --num_inference_steps 250 --repeats 3 \
  > $OUT/bench_decode_bundled_b1000.txt 2>&1
tail -n 4 $OUT/bench_decode_bundled*.txt

# ---- phase 1 -------------------------------------------------------------------------------------------------------
stamp "phase 1"
mkdir -p $W/large_init && cp -r $PKG/fashion-mnist-prior-large/* $W/large_init/
echo '{"step": 2149, "total_steps": 2149}' > $W/large_init/train_log.jsonl  # the bundled large prior's GPU steps
$PY examples/train_prior.py $COMMON --output_dir $W/prior_large --init_unet $W/large_init \
  --block_out_channels 64,128,128 --layers_per_block 2 --beta_schedule squaredcos_cap_v2 --prediction_type v_prediction \
  --train_batch_size 256 --learning_rate 5e-4 --lr_warmup_steps 100 --use_ema --ema_max_decay 0.999 \
  --mixed_precision bf16 --random_flip --max_train_minutes $P1 --num_epochs 100000 --checkpointing_steps 1000 \
  --logging_steps 500 > $W/prior_large.log 2>&1 &
ENC="--pretrained_model_name_or_path $PKG/fashion-mnist --init_encoder $PKG/fashion-mnist/encoder $COMMON \
  --max_train_steps 1000000 --max_train_minutes $P1 --checkpointing_steps 500 --logging_steps 50 --logger none \
  --seed 1 --random_flip --beta 0.01 --dataloader_num_workers 3 --lr_warmup_steps 100 --learning_rate 1e-3 \
  --loss_weighting likelihood --timestep_sampling importance --use_ema --ema_max_decay 0.999"
$PY examples/train_scorevae_encoder.py $ENC --train_batch_size 256 --output_dir $W/enc_b256 > $W/enc_b256.log 2>&1 &
$PY examples/train_scorevae_encoder.py $ENC --train_batch_size 512 --output_dir $W/enc_b512 > $W/enc_b512.log 2>&1 &
wait
stamp "phase 1 done"
tail -n 2 $W/*.log
for f in $W/prior_large/train_log.jsonl $W/enc_b256/train_log.jsonl $W/enc_b512/train_log.jsonl; do tail -n 1 $f; done
$PY scripts/to_fp16.py $W/prior_large/unet  # fp32 (26 MB) exceeds what comes back from the GPU machine; checkpoint/ keeps fp32
tar --ignore-failed-read -czf $OUT/prior_large.tgz -C $W prior_large/unet prior_large/scheduler \
  prior_large/model_index.json prior_large/train_log.jsonl prior_large.log
tar --ignore-failed-read -czf $OUT/encoders.tgz -C $W enc_b256/encoder enc_b256/train_log.jsonl enc_b256.log \
  enc_b512/encoder enc_b512/train_log.jsonl enc_b512.log
stamp "packed phase 1"

# ---- phase 2 -------------------------------------------------------------------------------------------------------
EVAL="--beta_vae $PKG/fashion-mnist-beta-vae --classifier $PKG/fashion-mnist-classifier $COMMON"
$PY examples/evaluate_prior.py --pipeline $PKG/fashion-mnist --classifier $PKG/fashion-mnist-classifier \
  --num_samples $FD_SAMPLES --scheduler ddim --num_inference_steps 50 --output_dir $W/fd_prior $COMMON > $W/fd_prior.log 2>&1 &
$PY examples/evaluate_prior.py --pipeline $W/prior_large --classifier $PKG/fashion-mnist-classifier \
  --num_samples $FD_SAMPLES --scheduler ddim --num_inference_steps 50 --output_dir $W/fd_prior_large $COMMON \
  > $W/fd_prior_large.log 2>&1 &
$PY examples/evaluate_prior.py --pipeline $W/large_init --classifier $PKG/fashion-mnist-classifier \
  --num_samples $FD_SAMPLES --scheduler ddim --num_inference_steps 50 --output_dir $W/fd_prior_large_init $COMMON \
  > $W/fd_prior_large_init.log 2>&1 &
SELECT=""
for v in enc_b256 enc_b512; do
  $PY examples/evaluate_scorevae.py --pipelines $W/$v --classifier $PKG/fashion-mnist-classifier $COMMON \
    --num_images $NSELECT --settings ddpm:250:4 --output $W/select_$v.json > $W/select_$v.log 2>&1 &
  SELECT="$SELECT $!"
done
wait $SELECT
BEST=$($PY - <<PY
import json, os
l2 = {}
for v in ("enc_b256", "enc_b512"):
    path = f"$W/select_{v}.json"
    l2[v] = json.load(open(path))["scorevae"][f"$W/{v}"]["ddpm:250:4"]["l2"] if os.path.exists(path) else 1e9
print(l2, file=__import__("sys").stderr)
print(min(l2, key=l2.get))
PY
)
stamp "selected $BEST"
echo $BEST > $W/best.txt
$PY examples/evaluate_scorevae.py --pipelines $W/$BEST $EVAL --num_images $NTEST --batch_size 2500 \
  --settings ddpm:250:4 --save_reconstructions 16 --output $W/eval_full.json > $W/eval_full.log 2>&1 &
$PY examples/evaluate_scorevae.py --pipelines $W/$BEST --prior $W/prior_large --classifier $PKG/fashion-mnist-classifier \
  $COMMON --num_images $NTEST --batch_size 2500 --settings ddpm:250:4 ddpm:250:1 --save_reconstructions 16 \
  --output $W/eval_swap.json > $W/eval_swap.log 2>&1 &
$PY examples/evaluate_scorevae.py --pipelines $W/$BEST --classifier $PKG/fashion-mnist-classifier $COMMON \
  --num_images $NSWEEP --batch_size 1000 --settings ddpm:10:4 ddpm:25:4 ddpm:50:4 ddpm:100:4 ddpm:250:4 ddpm:1000:4 \
  ddpm:250:0.5 ddpm:250:1 ddpm:250:2 ddim:50:4:noclip ddim:50:4 --output $W/eval_sweep.json > $W/eval_sweep.log 2>&1 &
$PY docs/studies/eval_curve.py --prior $PKG/fashion-mnist --encoders $W/$BEST --log $W/$BEST/train_log.jsonl \
  --num_images $NCURVE --num_inference_steps 250 --every 500 --step_offset 3609 $COMMON --output $W/curve.json \
  > $W/curve.md 2> $W/curve.log &
wait
stamp "phase 2 done"
tail -n 3 $W/fd_*.log $W/eval_*.log
cat $W/curve.md
tar --ignore-failed-read -czf $OUT/results.tgz -C $W best.txt fd_prior fd_prior_large fd_prior_large_init \
  $(cd $W && ls select_* eval_* curve.* fd_*.log)
ls -la $OUT
stamp "all done"
