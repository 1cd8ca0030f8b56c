"""Decode cost of ScoreVAE next to unconditional sampling with the same UNet, scheduler, steps and batch.

The UNet has the architecture of `google/ddpm-cifar10-32` (35.7M parameters, random weights: the cost does not depend
on them), the encoder is the default `ScoreVAEEncoder(32, 3, 384)`, the scheduler DDPM without x̂_0 clipping
(`--scheduler ddim`: DDIM). Both runs use one `ScoreVAEPipeline`: ScoreVAE decoding with latent codes given (one UNet
forward plus one encoder forward and backward per guided step) against `guidance_scale=0` (which is the
unconditional sampler bit for bit and never runs the encoder; the tests check this against diffusers' own pipelines).

Time: the two are alternated, after one warm-up each, and the median over `--repeats` calls is taken.
Memory:
  - cuda: `torch.cuda.max_memory_allocated` during one call, after `reset_peak_memory_stats`; reported as the peak
    (weights included) and as the peak above what was allocated before the call (activations and workspace).
  - cpu: each mode runs in a fresh subprocess. After building the models, the kernel's high-water mark of the
    resident set (VmHWM) is reset (`echo 5 > /proc/self/clear_refs`), one call runs, and VmHWM is read. Reported as
    the peak RSS (which includes the Python interpreter, torch's libraries and the weights, so its ratio is close to
    1 by construction) and as the peak's growth over the RSS before the call (what the decode itself needs:
    activations, the encoder's autograd graph, allocator caches). Where VmHWM cannot be reset, the lifetime peak
    `ru_maxrss` is used, and the growth is then a lower bound. `tracemalloc` does not see torch's allocations.
    On a shared CPU the wall-clock times are noisy; the process CPU time (`time.process_time`, all threads of this
    process) is reported beside them and is less disturbed by other processes.

`--pipeline NAME|PATH|ID` measures a trained ScoreVAEPipeline instead (e.g. the bundled `fashion-mnist`): its own
UNet, scheduler and encoder, decoding with the settings saved with it (`pipe.decode_defaults`: steps, guidance scale,
the log-SNR range of the encoder term, realism) against unconditional sampling with its own prior. `--prior
NAME|PATH|ID` swaps in another prior (e.g. the bundled flow prior `fashion-mnist-prior-flow`): the pipeline's encoder
decodes through it, against that prior's own unconditional sampling.

Every decode setting left unset is the pipeline's saved one (the random-weights pipeline saves none: 50 steps, γ 1,
every step guided); `--num_inference_steps N`, `--guidance_scale G`, `--scheduler ddpm|ddim`, `--every_step` (guide
every step) and `--realism R` (start from the `decoder`'s mean estimate part-way down the schedule; passed only when
given; both modes get it) measure others. Targets: time ratio <= 1.3, memory ratio <= 1.5.

    python benchmarks/bench_decode.py --batch_size 4 --num_inference_steps 10 --device cpu --repeats 3
    python benchmarks/bench_decode.py --pipeline fashion-mnist --batch_size 64
    python benchmarks/bench_decode.py --pipeline fashion-mnist --prior fashion-mnist-prior-flow --batch_size 64
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from diffusers import UNet2DModel

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline
from diffusers_scorevae.loading import SCHEDULERS, default_device, load_pipeline, scheduler_class
from diffusers_scorevae.noise import guided_steps, is_flow_scheduler, scheduler_log_snr
from diffusers_scorevae.noise import log_snr_range as log_snr_range_from

EVERY_STEP = (float("-inf"), float("inf"))

MODES = ("scorevae", "unconditional")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_inference_steps", type=int, default=None, help="Default: the pipeline's saved steps.")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default=None, help="Default: the pipeline's scheduler.")
    parser.add_argument(
        "--every_step", action="store_true", help="Guide every step (default: the saved guidance_log_snr_range)."
    )
    parser.add_argument(
        "--realism", type=float, default=None, help="Decode at this realism (0..1); default: the saved one."
    )
    parser.add_argument("--device", default=str(default_device()))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latent_dim", type=int, default=384)
    parser.add_argument("--pipeline", default=None, help="A trained ScoreVAEPipeline: bundled name, folder or Hub id.")
    parser.add_argument("--prior", default=None, help="Decode --pipeline's encoder through this prior instead.")
    parser.add_argument("--guidance_scale", type=float, default=None, help="Default: the pipeline's saved one.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory_worker", choices=MODES, help=argparse.SUPPRESS)  # internal: one CPU memory run
    return parser.parse_args(input_args)


def cifar10_unet() -> UNet2DModel:
    """google/ddpm-cifar10-32's UNet architecture (35.7M parameters) with random weights."""
    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )


def build_pipeline(args) -> ScoreVAEPipeline:
    """`--pipeline` as saved (`--scheduler` switches its scheduler type), or google/ddpm-cifar10-32's UNet
    architecture with random weights beside the default encoder, DDPM without x̂_0 clipping."""
    if args.pipeline is not None:
        pipe = load_pipeline(args.pipeline, prior=args.prior, scheduler=args.scheduler, device=args.device)
    else:
        torch.manual_seed(args.seed)
        unet = cifar10_unet()
        encoder = ScoreVAEEncoder(32, 3, args.latent_dim)
        torch.nn.init.normal_(encoder.proj_out.weight, std=1e-3)  # a non-zero score, as a trained encoder has
        scheduler_cls = scheduler_class(args.scheduler or "ddpm")
        scheduler = scheduler_cls(**({"clip_sample": False} if "clip_sample" in scheduler_cls().config else {}))
        pipe = ScoreVAEPipeline(unet=unet, scheduler=scheduler, encoder=encoder).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def decode_kwargs(args) -> dict:
    """The decode settings given on the command line; every other one is the pipeline's saved default."""
    given = {
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "guidance_log_snr_range": EVERY_STEP if args.every_step else None,
        "realism": args.realism,
    }
    return {key: value for key, value in given.items() if value is not None}


def decode(pipe: ScoreVAEPipeline, args, mode: str, latent_codes: torch.Tensor):
    kwargs = decode_kwargs(args)
    if mode == "unconditional":
        # the prior's own sampler over the whole schedule, bit for bit; the encoder never runs
        kwargs.update(guidance_scale=0.0, realism=1.0)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    return pipe(latent_codes=latent_codes, generator=generator, output_type="pt", **kwargs).images


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_modes(pipe, args, latent_codes) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall-clock and process-CPU seconds per call of each mode, alternating the two after a warm-up each."""
    wall, cpu = {mode: [] for mode in MODES}, {mode: [] for mode in MODES}
    for mode in MODES:
        decode(pipe, args, mode, latent_codes)
    for _ in range(args.repeats):
        for mode in MODES:
            synchronize(args.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            decode(pipe, args, mode, latent_codes)
            synchronize(args.device)
            wall[mode].append(time.perf_counter() - start)
            cpu[mode].append(time.process_time() - start_cpu)
    print(f"wall-clock seconds per call: {wall}")
    median = statistics.median
    return {mode: median(t) for mode, t in wall.items()}, {mode: median(t) for mode, t in cpu.items()}


def cuda_memory(pipe, args, latent_codes) -> dict[str, dict[str, float]]:
    memory = {}
    for mode in MODES:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        decode(pipe, args, mode, latent_codes)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        memory[mode] = {"peak_mib": peak / 2**20, "growth_mib": (peak - before) / 2**20}
    return memory


def proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_worker(args):
    """One mode in this fresh process: the RSS before one call and its peak during it."""
    pipe = build_pipeline(args)
    latent_codes = torch.randn(args.batch_size, args.latent_dim, generator=torch.Generator().manual_seed(1))
    gc.collect()
    before = proc_status_mib("VmRSS")
    exact = reset_peak_rss() and proc_status_mib("VmHWM") <= before + 1
    decode(pipe, args, args.memory_worker, latent_codes.to(args.device))
    peak = proc_status_mib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "growth_mib": peak - before, "hwm_reset": exact}))


def cpu_memory(args) -> dict[str, dict[str, float]]:
    memory = {}
    for mode in MODES:
        command = [sys.executable, __file__, "--memory_worker", mode, "--device", args.device]
        command += [
            "--batch_size",
            str(args.batch_size),
            "--latent_dim",
            str(args.latent_dim),
            "--seed",
            str(args.seed),
        ]
        command += ["--every_step"] if args.every_step else []
        for option in ("num_inference_steps", "scheduler", "pipeline", "prior", "guidance_scale", "realism"):
            if getattr(args, option) is not None:
                command += [f"--{option}", str(getattr(args, option))]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        memory[mode] = json.loads(result.stdout.strip().splitlines()[-1])
    return memory


def main(args):
    if args.memory_worker:
        return memory_worker(args)

    pipe = build_pipeline(args)
    unet_params = sum(p.numel() for p in pipe.unet.parameters())
    encoder_params = sum(p.numel() for p in pipe.encoder.parameters())
    print(f"device: {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    if args.pipeline is None:
        print(f"UNet (google/ddpm-cifar10-32 architecture): {unet_params / 1e6:.1f}M parameters")
        print(f"encoder ScoreVAEEncoder(32, 3, {args.latent_dim}): {encoder_params / 1e6:.2f}M parameters")
        if abs(unet_params / 1e6 - 35.7) > 0.1:
            raise RuntimeError(f"the UNet has {unet_params} parameters, not google/ddpm-cifar10-32's 35.7M")
    else:
        args.latent_dim = pipe.encoder.config.latent_dim
        print(
            f"pipeline {args.pipeline}: UNet {unet_params / 1e6:.2f}M, encoder {encoder_params / 1e6:.2f}M parameters"
        )
    settings = {**pipe.decode_defaults, **decode_kwargs(args)}  # what the ScoreVAE decode will use
    print(f"scheduler: {type(pipe.scheduler).__name__}, batch {args.batch_size}, {args.repeats} repeats")
    print(f"decode settings: {settings}")
    steps, log_snr_range = settings["num_inference_steps"], settings["guidance_log_snr_range"]
    log_snr_range = log_snr_range_from(log_snr_range)  # a JSON list from a config: `null` for an unbounded end
    pipe.scheduler.set_timesteps(steps)
    timesteps = pipe.scheduler.timesteps
    flow = is_flow_scheduler(pipe.scheduler)
    guided = sum(
        bool(guided_steps(scheduler_log_snr(pipe.scheduler, t), log_snr_range, zero_snr=flow)) for t in timesteps
    )
    print(f"encoder term at {guided} of {steps} scheduler steps (before any realism start part-way down)")

    latent_codes = torch.randn(args.batch_size, args.latent_dim, generator=torch.Generator().manual_seed(1))
    latent_codes = latent_codes.to(args.device)
    times, cpu_times = time_modes(pipe, args, latent_codes)
    if torch.device(args.device).type == "cuda":
        memory, what = cuda_memory(pipe, args, latent_codes), "torch.cuda.max_memory_allocated"
    else:
        del pipe
        memory = cpu_memory(args)
        what = "VmHWM" if all(m["hwm_reset"] for m in memory.values()) else "ru_maxrss, growth a lower bound"
        what += " of a fresh subprocess per mode"

    print()
    print(f"{'':16}{'s / call':>10}{'s / image':>11}{'CPU s / call':>14}{'peak MiB':>11}{'peak growth MiB':>17}")
    for mode in MODES:
        print(
            f"{mode:16}{times[mode]:10.3f}{times[mode] / args.batch_size:11.4f}{cpu_times[mode]:14.3f}"
            f"{memory[mode]['peak_mib']:11.1f}{memory[mode]['growth_mib']:17.1f}"
        )
    time_ratio = times["scorevae"] / times["unconditional"]
    peak_ratio = memory["scorevae"]["peak_mib"] / memory["unconditional"]["peak_mib"]
    growth_ratio = memory["scorevae"]["growth_mib"] / max(memory["unconditional"]["growth_mib"], 1e-9)
    print()
    print(f"time ratio (median):        {time_ratio:.3f}   (target <= 1.3)")
    print(f"CPU-time ratio (median):    {cpu_times['scorevae'] / cpu_times['unconditional']:.3f}")
    print(f"peak memory ratio:          {peak_ratio:.3f}   (target <= 1.5; {what})")
    print(f"peak memory growth ratio:   {growth_ratio:.3f}   (the call's own memory, weights and libraries excluded)")


if __name__ == "__main__":
    main(parse_args())
