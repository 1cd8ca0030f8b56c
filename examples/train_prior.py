#!/usr/bin/env python
"""Train the unconditional Fashion-MNIST prior of ScoreVAE: a diffusers `UNet2DModel` at native 28x28, one channel, or
with `--vae` a latent-diffusion prior over a frozen autoencoder's latents.

    accelerate launch examples/train_prior.py --output_dir runs/prior --use_ema --mixed_precision bf16
    python examples/train_prior.py --vae runs/autoencoder-kl --output_dir runs/latent-prior --use_ema

With `--vae` (a saved `AutoencoderKL` / `VQModel`, e.g. from `train_autoencoder_kl.py`): the images are padded
centrally with black to the autoencoder's `sample_size` (28 -> 32; never resized), encoded once through it by the
pipeline's rule (`diffusers_scorevae.autoencoders.latent_scaling`: posterior means times `scaling_factor`) and cached,
and the UNet models those latents (4x8x8 for the default autoencoder). `output_dir` then also holds the autoencoder in
`vae/` (and `model_index.json` names it): an LDM-style folder that
`ScoreVAEPipeline.from_pretrained(output_dir, encoder=...)`, `hub.load_latent_prior` and
`train_scorevae_encoder.py --pretrained_model_name_or_path` load.

With `--flow_matching` the prior is a rectified flow trained by diffusers' SD3 recipe: σ drawn by
`--weighting_scheme` (`none`: uniform; `logit_normal`; `mode`), x_σ = (1 − σ) x_0 + σ ε, the UNet called with the
float timestep σ · num_train_timesteps and regressed on the velocity ε − x_0; the folder's scheduler is then a
`FlowMatchEulerDiscreteScheduler` (`--shift`). `--init_unet` may start it from a prior of the other family (e.g. the
bundled DDPM prior): only the UNet's architecture must match, and the weights are a starting point.

`output_dir` ends up a `DDPMPipeline` folder (`unet/`, `scheduler/`, `model_index.json`, safetensors; the EMA weights
with `--use_ema`) next to `checkpoint/` and `train_log.jsonl`. The run can be killed at any moment: the same command
continues from `output_dir/checkpoint` (model, EMA, optimizer, learning rate, step, random states), which is replaced
atomically, so a kill leaves the previous complete checkpoint.
"""

import argparse
import json
import logging
import os
import shutil
import signal
import time

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import DDPMPipeline, DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import (
    EMAModel,
    compute_density_for_timestep_sampling,
    compute_loss_weighting_for_sd3,
)

from diffusers_scorevae.data import (
    FASHION_MNIST_DIR,
    images_to_tensor,
    load_fashion_mnist,
    load_fashion_mnist_from_hub,
)

logger = get_logger(__name__, log_level="INFO")

CHECKPOINT_NAME = "checkpoint"
PIPELINE_ENTRIES = ("unet", "scheduler", "model_index.json")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Train a UNet2DModel prior on Fashion-MNIST (28x28, 1 channel).")
    # data
    parser.add_argument(
        "--fashion_mnist_dir",
        type=str,
        default=FASHION_MNIST_DIR,
        help="Folder with the Fashion-MNIST idx files (Debian's `dataset-fashion-mnist`).",
    )
    parser.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="A Hub dataset (e.g. `zalando-datasets/fashion_mnist`) to use instead of `--fashion_mnist_dir`.",
    )
    parser.add_argument("--cache_dir", type=str, default=None, help="Cache folder for `--dataset_name`.")
    parser.add_argument("--random_flip", action="store_true", help="Randomly flip training images horizontally.")
    parser.add_argument(
        "--vae",
        type=str,
        default=None,
        help="A saved AutoencoderKL or VQModel (folder, or a pipeline folder with vae/): train a latent-diffusion "
        "prior on its latents of the images, padded with black to its sample_size.",
    )
    parser.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N training images.")
    parser.add_argument("--output_dir", type=str, default="ddpm-fashion-mnist-28")
    parser.add_argument(
        "--init_unet",
        type=str,
        default=None,
        help="Start a new run from the weights of a trained prior (a DDPMPipeline folder with unet/ and scheduler/, "
        "e.g. one this script wrote): its architecture and noise schedule must equal the arguments'. Its "
        "train_log.jsonl, when present, gives the steps already done, and the log counts `total_steps` from there.",
    )
    # model
    parser.add_argument("--block_out_channels", type=str, default="32,64,128", help="Comma list, one per level.")
    parser.add_argument("--layers_per_block", type=int, default=1)
    parser.add_argument(
        "--attention_levels",
        type=str,
        default="2",
        help="Comma list of levels (0 = full resolution) with attention blocks; the default 2 is the 7x7 level; "
        "'' for none.",
    )
    parser.add_argument("--attention_head_dim", type=int, default=32)
    parser.add_argument("--norm_num_groups", type=int, default=8)
    # noise schedule
    parser.add_argument("--num_train_timesteps", type=int, default=1000)
    parser.add_argument("--beta_schedule", type=str, default="linear", choices=["linear", "squaredcos_cap_v2"])
    parser.add_argument(
        "--prediction_type", type=str, default="epsilon", choices=["epsilon", "v_prediction", "sample"]
    )
    parser.add_argument(
        "--flow_matching",
        action="store_true",
        help="Train a flow-matching prior (target ε − x_0, FlowMatchEulerDiscreteScheduler) instead of a DDPM one; "
        "--beta_schedule and --prediction_type do not apply.",
    )
    parser.add_argument(
        "--weighting_scheme",
        type=str,
        default="none",
        choices=["none", "logit_normal", "mode"],
        help="With --flow_matching: how σ is drawn (diffusers' SD3 recipe); 'none' is uniform.",
    )
    parser.add_argument("--logit_mean", type=float, default=0.0, help="Mean of the 'logit_normal' scheme.")
    parser.add_argument("--logit_std", type=float, default=1.0, help="Std of the 'logit_normal' scheme.")
    parser.add_argument("--mode_scale", type=float, default=1.29, help="Scale of the 'mode' scheme.")
    parser.add_argument("--shift", type=float, default=1.0, help="With --flow_matching: the scheduler's `shift`.")
    # optimization
    parser.add_argument("--train_batch_size", type=int, default=128)
    parser.add_argument("--num_epochs", type=int, default=100)
    parser.add_argument(
        "--max_train_steps", type=int, default=None, help="Total training steps; overrides `--num_epochs`."
    )
    parser.add_argument(
        "--max_train_minutes",
        type=float,
        default=None,
        help="Stop cleanly after this many minutes of this invocation, writing a checkpoint and the pipeline.",
    )
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument(
        "--lr_scheduler",
        type=str,
        default="constant",
        choices=["constant", "constant_with_warmup", "cosine", "linear"],
    )
    parser.add_argument("--lr_warmup_steps", type=int, default=500)
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=0.0)
    parser.add_argument("--adam_epsilon", type=float, default=1e-08)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--use_ema", action="store_true", help="Keep an EMA of the weights and export it.")
    parser.add_argument("--ema_inv_gamma", type=float, default=1.0, help="EMA warmup inverse multiplicative factor.")
    parser.add_argument("--ema_power", type=float, default=3 / 4, help="EMA warmup power.")
    parser.add_argument("--ema_max_decay", type=float, default=0.9999, help="Maximum EMA decay.")
    parser.add_argument("--mixed_precision", type=str, default="no", choices=["no", "fp16", "bf16"])
    # bookkeeping
    parser.add_argument(
        "--checkpointing_steps",
        type=int,
        default=2000,
        help="Write the checkpoint, the pipeline and a train_log.jsonl line every this many steps.",
    )
    parser.add_argument("--logging_steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(input_args)

    args.block_out_channels = tuple(int(c) for c in args.block_out_channels.split(","))
    args.attention_levels = tuple(int(level) for level in args.attention_levels.split(",") if level.strip())
    for level in args.attention_levels:
        if not 0 <= level < len(args.block_out_channels):
            raise ValueError(
                f"`--attention_levels` must name levels 0..{len(args.block_out_channels) - 1} of "
                f"`--block_out_channels` {args.block_out_channels}, got {level}."
            )
    if args.vae is not None and args.random_flip:
        raise ValueError(
            "--random_flip cannot be combined with --vae: the latents are encoded once, and a flipped latent is not "
            "the latent of the flipped image."
        )
    if args.dataset_name is None and not os.path.isdir(args.fashion_mnist_dir):
        raise ValueError(
            f"`--fashion_mnist_dir` {args.fashion_mnist_dir} does not exist: `apt-get install dataset-fashion-mnist` "
            "or pass `--dataset_name zalando-datasets/fashion_mnist`."
        )
    return args


def diffusion_loss(noise_scheduler, model_output, clean_images, noise, timesteps):
    """Mean squared error between the UNet output and the target its `prediction_type` names."""
    prediction_type = getattr(noise_scheduler.config, "prediction_type", "epsilon")
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(clean_images, noise, timesteps)
    elif prediction_type == "sample":
        target = clean_images
    else:
        raise ValueError(
            f"`prediction_type` must be one of 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}."
        )
    return F.mse_loss(model_output.float(), target.float())


def flow_matching_batch(noise_scheduler, clean_images, noise, args, generator):
    """One batch of diffusers' SD3 flow-matching recipe: σ drawn by `args.weighting_scheme` on the scheduler's
    training grid, x_σ = (1 − σ) x_0 + σ ε, the float timesteps σ · num_train_timesteps the UNet is called with, the
    target velocity ε − x_0 and the per-sample loss weights. Returns `(noisy, timesteps, target, weights)`."""
    u = compute_density_for_timestep_sampling(
        args.weighting_scheme,
        len(clean_images),
        logit_mean=args.logit_mean,
        logit_std=args.logit_std,
        mode_scale=args.mode_scale,
        device=clean_images.device,
        generator=generator,
    )
    indices = (u * noise_scheduler.config.num_train_timesteps).long().clamp(max=len(noise_scheduler.sigmas) - 1)
    sigmas = noise_scheduler.sigmas.to(clean_images.device)[indices]
    timesteps = noise_scheduler.timesteps.to(clean_images.device)[indices]
    sigma = sigmas[:, None, None, None]
    noisy = (1.0 - sigma) * clean_images + sigma * noise
    weights = compute_loss_weighting_for_sd3(args.weighting_scheme, sigmas)
    return noisy, timesteps, noise - clean_images, weights


def make_noise_scheduler(args, latent: bool):
    """The training scheduler: DDPM (`--beta_schedule`, `--prediction_type`) or, with `--flow_matching`,
    `FlowMatchEulerDiscreteScheduler` (`--shift`)."""
    if args.flow_matching:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=args.num_train_timesteps, shift=args.shift)
    return DDPMScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule,
        prediction_type=args.prediction_type,
        # latents are not confined to [-1, 1] as pixels are: sampling must not clip the predicted x_0 to it
        **({"clip_sample": False} if latent else {}),
    )


def atomic_replace(src, dst):
    """Move `src` to `dst`, replacing it; a directory `dst` is first parked at `dst.old` (see `recover`)."""
    if os.path.isdir(dst):
        old = dst + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


def recover(dst):
    """Undo a kill between the two renames of `atomic_replace` and drop a half-written `dst.tmp`."""
    if not os.path.exists(dst) and os.path.isdir(dst + ".old"):
        os.rename(dst + ".old", dst)
    shutil.rmtree(dst + ".old", ignore_errors=True)
    shutil.rmtree(dst + ".tmp", ignore_errors=True)


def check_same_config(built, saved_config, what):
    """Raise if a resumed run was started with a different architecture or noise schedule."""
    differ = {
        key: (saved_config.get(key), value)
        for key, value in built.config.items()
        if not key.startswith("_") and json.loads(json.dumps(saved_config.get(key))) != json.loads(json.dumps(value))
    }
    if differ:
        raise ValueError(
            f"The checkpoint's {what} config differs from the arguments (key: (checkpoint, arguments)): {differ}. "
            "Resume with the arguments of the original run, or use a new `--output_dir`."
        )


def save_autoencoder_entry(folder, vae):
    """Add the autoencoder to a saved DDPMPipeline folder as `vae/`, named in `model_index.json` (the LDM layout the
    ScoreVAE loaders read)."""
    vae.save_pretrained(os.path.join(folder, "vae"))
    index_path = os.path.join(folder, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    index["vae"] = ["diffusers", type(vae).__name__]
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)


def main(args):
    # 1. Accelerator
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if accelerator.num_processes > 1:
        raise ValueError("train_prior.py keeps the data on one device and runs as a single process.")
    set_seed(args.seed)
    device = accelerator.device
    os.makedirs(args.output_dir, exist_ok=True)
    checkpoint_dir = os.path.join(args.output_dir, CHECKPOINT_NAME)
    for entry in ("unet", "scheduler", "vae", "model_index.json"):
        recover(os.path.join(args.output_dir, entry))
    recover(checkpoint_dir)
    shutil.rmtree(os.path.join(args.output_dir, "pipeline.tmp"), ignore_errors=True)
    resume = os.path.isdir(checkpoint_dir)

    # 2. data: the whole split as one tensor in [-1, 1] on the training device
    if args.dataset_name is not None:
        images, _ = load_fashion_mnist_from_hub("train", args.dataset_name, cache_dir=args.cache_dir)
    else:
        images, _ = load_fashion_mnist("train", args.fashion_mnist_dir)
    images = images[: args.max_train_samples]
    vae = None
    if args.vae is not None:  # a latent prior: pad to the autoencoder's resolution, encode once, cache the latents
        from diffusers_scorevae.autoencoders import encode_to_latents, latent_scaling, load_autoencoder
        from diffusers_scorevae.data import pad_images

        vae = load_autoencoder(args.vae).to(device)
        pixels = images_to_tensor(pad_images(images, vae.config.sample_size))
        train_images = encode_to_latents(vae, pixels).to(device)
        logger.info(
            f"{len(images)} images padded to {vae.config.sample_size}x{vae.config.sample_size}, encoded once by the "
            f"{type(vae).__name__} (scaling_factor, shift_factor = {latent_scaling(vae)}): latents "
            f"{tuple(train_images.shape[1:])}, std {train_images.std().item():.3f}"
        )
    else:
        train_images = images_to_tensor(images).to(device)
    num_images, channels, height, width = train_images.shape
    steps_per_epoch = num_images // args.train_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"`--train_batch_size` {args.train_batch_size} exceeds the {num_images} training images.")
    max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch

    # 3. model and noise scheduler
    num_levels = len(args.block_out_channels)
    model = UNet2DModel(
        sample_size=height,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=args.block_out_channels,
        layers_per_block=args.layers_per_block,
        down_block_types=tuple(
            "AttnDownBlock2D" if level in args.attention_levels else "DownBlock2D" for level in range(num_levels)
        ),
        up_block_types=tuple(
            "AttnUpBlock2D" if level in args.attention_levels else "UpBlock2D" for level in reversed(range(num_levels))
        ),
        attention_head_dim=args.attention_head_dim,
        norm_num_groups=args.norm_num_groups,
    )
    noise_scheduler = make_noise_scheduler(args, latent=vae is not None)
    scheduler_cls = type(noise_scheduler)
    logger.info(f"UNet2DModel: {sum(p.numel() for p in model.parameters()):,} parameters, {height}x{width}")
    if resume:
        saved = UNet2DModel.from_pretrained(os.path.join(checkpoint_dir, "unet"))
        check_same_config(model, saved.config, "UNet")
        model.load_state_dict(saved.state_dict())
        saved_scheduler = scheduler_cls.load_config(os.path.join(checkpoint_dir, "scheduler"))
        if saved_scheduler.get("_class_name") != scheduler_cls.__name__:
            raise ValueError(
                f"The checkpoint in {checkpoint_dir} trained a {saved_scheduler.get('_class_name')} prior, the "
                f"arguments ask for a {scheduler_cls.__name__} one (--flow_matching): resume with the original "
                "arguments, or use a new `--output_dir`."
            )
        check_same_config(noise_scheduler, saved_scheduler, "scheduler")
    init_steps = 0
    if args.init_unet is not None and not resume:
        init_folder = args.init_unet
        if os.path.isdir(os.path.join(init_folder, "unet")):
            unet_folder, scheduler_folder = os.path.join(init_folder, "unet"), os.path.join(init_folder, "scheduler")
        else:
            unet_folder, scheduler_folder = init_folder, None
        if not os.path.isfile(os.path.join(unet_folder, "config.json")):
            raise ValueError(f"`--init_unet` {args.init_unet} holds neither unet/config.json nor config.json.")
        saved = UNet2DModel.from_pretrained(unet_folder)
        check_same_config(model, saved.config, "--init_unet UNet")
        model.load_state_dict({key: value.float() for key, value in saved.state_dict().items()})
        init_scheduler = None
        if scheduler_folder is not None and os.path.isdir(scheduler_folder):
            init_scheduler = scheduler_cls.load_config(scheduler_folder)
        if init_scheduler is not None and init_scheduler.get("_class_name") == scheduler_cls.__name__:
            check_same_config(noise_scheduler, init_scheduler, "--init_unet scheduler")
        elif init_scheduler is not None:
            logger.info(
                f"--init_unet was trained with a {init_scheduler.get('_class_name')}, this run trains a "
                f"{scheduler_cls.__name__} prior: its weights are only a starting point"
            )
        log_path = os.path.join(init_folder, "train_log.jsonl")
        if os.path.isfile(log_path):
            with open(log_path) as f:
                lines = [json.loads(line) for line in f if line.strip()]
            if lines:
                init_steps = int(lines[-1].get("total_steps", lines[-1]["step"]))
        logger.info(f"Initialised from {args.init_unet} ({init_steps} steps already done)")
    model.to(device)
    model.train()

    # 4. EMA: its weights are a UNet folder in the checkpoint, its counters in training_state.json
    state = {"step": 0, "wall_seconds": 0.0, "images_seen": 0, "init_unet": args.init_unet, "init_steps": init_steps}
    if resume:
        with open(os.path.join(checkpoint_dir, "training_state.json")) as f:
            state = json.load(f)
        if ("ema" in state) != args.use_ema:
            raise ValueError(
                f"`--use_ema` is {args.use_ema} but the checkpoint in {checkpoint_dir} was written with the opposite: "
                "resume with the arguments of the original run."
            )
    if args.use_ema:
        ema_model = EMAModel(
            model.parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            foreach=True,
            model_cls=UNet2DModel,
            model_config=model.config,
        )
        if resume:
            ema_unet = UNet2DModel.from_pretrained(os.path.join(checkpoint_dir, "unet_ema"))
            ema_model.load_state_dict({**state["ema"], "shadow_params": [p.detach() for p in ema_unet.parameters()]})
        ema_model.to(device)

    # 5. optimizer and learning rate schedule
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=max_train_steps
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)

    # 6. resume: optimizer, learning rate, step counters, random states
    generator = torch.Generator(device=device).manual_seed(args.seed)
    if resume:
        tensors = torch.load(os.path.join(checkpoint_dir, "training_state.pt"), map_location="cpu", weights_only=True)
        optimizer.load_state_dict(tensors["optimizer"])
        lr_scheduler.load_state_dict(tensors["lr_scheduler"])
        if accelerator.scaler is not None and "scaler" in tensors:
            accelerator.scaler.load_state_dict(tensors["scaler"])
        torch.set_rng_state(tensors["torch_rng"])
        if torch.cuda.is_available() and "cuda_rng" in tensors:
            torch.cuda.set_rng_state_all(tensors["cuda_rng"])
        generator.set_state(tensors["generator"])
        logger.info(f"Resuming from {checkpoint_dir} at step {state['step']}")

    def save(loss_mean):
        """Write the checkpoint, then the pipeline, then one train_log.jsonl line."""
        unwrapped = accelerator.unwrap_model(model)
        if args.use_ema:
            ema_unet = UNet2DModel.from_config(unwrapped.config)
            ema_model.copy_to(ema_unet.parameters())
            state["ema"] = {key: value for key, value in ema_model.state_dict().items() if key != "shadow_params"}
        # checkpoint: fp32 weights and EMA (safetensors), our own optimizer/RNG state file, counters
        tmp = checkpoint_dir + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.save_pretrained(os.path.join(tmp, "unet"))
        noise_scheduler.save_pretrained(os.path.join(tmp, "scheduler"))
        if args.use_ema:
            ema_unet.save_pretrained(os.path.join(tmp, "unet_ema"))
        tensors = {
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "generator": generator.get_state(),
        }
        if accelerator.scaler is not None:
            tensors["scaler"] = accelerator.scaler.state_dict()
        if torch.cuda.is_available():
            tensors["cuda_rng"] = torch.cuda.get_rng_state_all()
        torch.save(tensors, os.path.join(tmp, "training_state.pt"))
        with open(os.path.join(tmp, "training_state.json"), "w") as f:
            json.dump(state, f, indent=2)
        atomic_replace(tmp, checkpoint_dir)

        # pipeline: the EMA weights with --use_ema, written aside and moved in entry by entry
        unet = ema_unet if args.use_ema else unwrapped
        pipeline_tmp = os.path.join(args.output_dir, "pipeline.tmp")
        shutil.rmtree(pipeline_tmp, ignore_errors=True)
        DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(pipeline_tmp)
        entries = PIPELINE_ENTRIES
        if vae is not None:
            save_autoencoder_entry(pipeline_tmp, vae)
            entries = ("vae",) + entries
        for entry in entries:
            atomic_replace(os.path.join(pipeline_tmp, entry), os.path.join(args.output_dir, entry))
        shutil.rmtree(pipeline_tmp)

        line = {
            "step": state["step"],
            "total_steps": state.get("init_steps", 0) + state["step"],
            "loss": loss_mean,
            "wall_seconds": round(state["wall_seconds"], 2),
            "images_seen": state["images_seen"],
            "lr": lr_scheduler.get_last_lr()[0],
        }
        with open(os.path.join(args.output_dir, "train_log.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
        logger.info(f"Saved checkpoint and pipeline at step {state['step']} to {args.output_dir}")

    # a SIGTERM (preemption, `timeout`) finishes the current step, saves and exits
    stop_requested = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_requested.append(signum))

    # 7. train
    logger.info(
        f"***** Training: {num_images} images, batch {args.train_batch_size}, {steps_per_epoch} steps per epoch, "
        f"steps {state['step']} -> {max_train_steps} *****"
    )
    start_time = last_log_time = time.time()
    start_wall_seconds = state["wall_seconds"]
    loss_sum, loss_count = torch.zeros((), device=device), 0
    log_loss_sum, log_count = torch.zeros((), device=device), 0
    step = state["step"]
    while step < max_train_steps:
        # the batch order is a function of (seed, epoch), so a resumed run continues the same epoch
        epoch = step // steps_per_epoch
        permutation = torch.randperm(
            num_images, device=device, generator=torch.Generator(device=device).manual_seed(args.seed + epoch)
        )
        for batch_index in range(step % steps_per_epoch, steps_per_epoch):
            indices = permutation[batch_index * args.train_batch_size : (batch_index + 1) * args.train_batch_size]
            clean_images = train_images[indices]
            if args.random_flip:
                flip = torch.rand(len(indices), device=device, generator=generator) < 0.5
                clean_images = torch.where(flip[:, None, None, None], clean_images.flip(-1), clean_images)

            noise = torch.randn(clean_images.shape, device=device, generator=generator)
            if args.flow_matching:
                # flow matching: x_σ = (1 − σ) x_0 + σ ε, the UNet called with σ · T (a float tensor), target ε − x_0
                noisy_images, timesteps, target, weights = flow_matching_batch(
                    noise_scheduler, clean_images, noise, args, generator
                )
                model_output = model(noisy_images, timesteps).sample
                loss = (weights[:, None, None, None] * (model_output.float() - target.float()) ** 2).mean()
            else:
                # forward diffusion: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε at uniformly drawn timesteps
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps, (len(indices),), device=device, generator=generator
                )
                noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
                model_output = model(noisy_images, timesteps).sample
                loss = diffusion_loss(noise_scheduler, model_output, clean_images, noise, timesteps)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if args.use_ema:
                ema_model.step(model.parameters())

            step += 1
            loss_sum += loss.detach()
            log_loss_sum += loss.detach()
            loss_count += 1
            log_count += 1
            state["step"] = step
            state["images_seen"] += len(indices)
            state["wall_seconds"] = start_wall_seconds + time.time() - start_time

            if step % args.logging_steps == 0:
                now = time.time()
                logger.info(
                    f"step {step}/{max_train_steps} epoch {epoch} loss {log_loss_sum.item() / log_count:.4f} "
                    f"lr {lr_scheduler.get_last_lr()[0]:.2e} {(now - last_log_time) / log_count:.3f} s/step"
                )
                log_loss_sum.zero_()
                log_count = 0
                last_log_time = now

            elapsed_minutes = (time.time() - start_time) / 60
            out_of_time = args.max_train_minutes is not None and elapsed_minutes >= args.max_train_minutes
            stop = step >= max_train_steps or out_of_time or bool(stop_requested)
            if step % args.checkpointing_steps == 0 or stop:
                save(loss_sum.item() / loss_count)
                loss_sum.zero_()
                loss_count = 0
            if stop:
                break
        if stop:
            break
    if step < max_train_steps:
        logger.info(f"Stopped at step {step}; run the same command again to continue.")


if __name__ == "__main__":
    main(parse_args())
