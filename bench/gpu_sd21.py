"""The real SD 2.1 architecture (random weights) on the accelerator: speed of each optimisation step.

Builds UNet2DConditionModel / AutoencoderKL / CLIPTextModel (OpenCLIP-H text tower) from the published
stabilityai/stable-diffusion-2-1 configs with random weights (no download), a DPM-Solver++ scheduler with
v-prediction, and a StableDiffusionPipeline around them. The CLIP tokenizer comes from `--sd-model`
(tiny models by default): prompts are padded to 77 tokens, so its vocabulary does not change the cost.

Measures, for `--count` images of `--width`x`--height` at `--steps` steps, guidance 7.5:
  * s/grid and images/min per configuration, cumulative in this order (names for `--configs`):
    fp16 (eager), bf16 (eager), channels_last, fused_qkv, compile (unet.compile_repeated_blocks(fullgraph=True),
    with its compile start-up time); fp32 is the CPU default
  * per-component cost: text encoder, one UNet step (CFG batch), VAE decode
  * the cost of 20/30/50 steps with the last configuration (`--sweep-steps`)
  * GPT-2 small (GPT2Config() defaults, 124M, random weights): `count` tiles x 2 candidates = 8 sequences of 60
    tokens, the expander's sampling arguments
  * the cheap progress preview (bot.engine.renderer.latents_to_preview) per call and per job
  * the comparison with the physical floor: 0.46 s for 4x768² at 25 steps on an H100 in bf16
  * with `--actions`: each Midjourney-style action (upscale, vary, zoom out, pan, image prompt) against a
    plain grid of the same size, with the last configuration (bench/actions.py)

    python -m bench.gpu_sd21                                  # on the GPU: 4x768², 25 steps, every config
    python -m bench.gpu_sd21 --device cpu --steps 2 --width 512 --height 512 --count 1 --reps 1   # smoke
    python -m bench.gpu_sd21 --actions                        # plus the cost of each action vs a grid
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench._common import (
    SEED_TEXT,
    add_common_args,
    machine_line,
    offline,
    print_table,
    resolve_models,
    setup_logging,
)

# stabilityai/stable-diffusion-2-1 unet/config.json
UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 96,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "upcast_attention": True,
    "use_linear_projection": True,
}

# stabilityai/stable-diffusion-2-1 vae/config.json
VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# stabilityai/stable-diffusion-2-1 text_encoder/config.json (OpenCLIP ViT-H/14 text tower, 23 layers)
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
    "vocab_size": 49408,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# stabilityai/stable-diffusion-2-1 scheduler/scheduler_config.json (DDIM) as the bot turns it into DPM-Solver++.
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "steps_offset": 1,
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
    "use_karras_sigmas": False,
}

EXPECTED_UNET_PARAMS = 865_910_724
FLOOR_SECONDS = 0.46  # 4x768², 25 steps, H100, bf16: the physical floor this bench compares against
FLOOR_SHAPE = (4, 768, 768, 25)
CONFIG_ORDER = ("fp32", "fp16", "bf16", "channels_last", "fused_qkv", "compile")
DTYPE_CONFIGS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


# -- building ------------------------------------------------------------------------------------------
def build_pipeline(sd_model: str, device: Any, dtype: Any) -> Any:
    """StableDiffusionPipeline with the SD 2.1 architecture and random weights, on `device` in `dtype`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(sd_model, subfolder="tokenizer")
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device directly: 1.3 B parameters
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DPMSolverMultistepScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device=device, dtype=dtype)
    return pipe


def parameter_count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


# -- timing --------------------------------------------------------------------------------------------
def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Timing:
    """Wall and process-CPU seconds of the warm-up calls and of the measured calls."""

    first: list[float]
    walls: list[float]
    cpus: list[float]

    @property
    def wall(self) -> float:
        return median(self.walls)

    @property
    def cpu(self) -> float:
        return median(self.cpus)


def timed(fn: Callable[[], Any], device: Any) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU time is this process's, all threads (robust to a busy host)."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(fn: Callable[[], Any], device: Any, *, reps: int, warmup: int) -> Timing:
    first = [timed(fn, device)[0] for _ in range(warmup)]
    pairs = [timed(fn, device) for _ in range(reps)]
    return Timing(first, [w for w, _ in pairs], [c for _, c in pairs])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class GridResult:
    name: str
    grid: Timing
    text: Timing
    unet: Timing
    vae: Timing

    @property
    def seconds(self) -> float:
        return self.grid.wall

    @property
    def first_call(self) -> float:
        return self.grid.first[0] if self.grid.first else float("nan")


class Bench:
    """Holds the pipeline and the fixed inputs of every measurement."""

    def __init__(self, pipe: Any, args: argparse.Namespace, device: Any) -> None:
        self.pipe = pipe
        self.args = args
        self.device = device

    @property
    def generator_device(self) -> str:
        return "cpu" if self.device.type == "mps" else self.device.type

    def grid(self, steps: int | None = None) -> Any:
        import torch

        a = self.args
        generators = [torch.Generator(self.generator_device).manual_seed(i) for i in range(a.count)]
        with torch.inference_mode():
            return self.pipe(
                prompt=[SEED_TEXT] * a.count,
                num_inference_steps=steps or a.steps,
                guidance_scale=a.guidance,
                width=a.width,
                height=a.height,
                generator=generators,
                output_type="pil",
            )

    def component_inputs(self) -> dict[str, Any]:
        import torch

        a, pipe = self.args, self.pipe
        dtype = pipe.unet.dtype
        batch = 2 * a.count if a.guidance > 1.0 else a.count
        latent = (a.height // 8, a.width // 8)
        return {
            "ids": torch.randint(0, 1000, (batch, 77), device=self.device),
            "latents": torch.randn(batch, 4, *latent, device=self.device, dtype=dtype),
            "timestep": torch.tensor(500, device=self.device),
            "context": torch.randn(batch, 77, 1024, device=self.device, dtype=dtype),
            "decode": torch.randn(a.count, 4, *latent, device=self.device, dtype=dtype),
        }

    def components(self, reps: int, warmup: int) -> tuple[Timing, Timing, Timing]:
        """(text encoder, one UNet step, VAE decode) at the job's shapes."""
        import torch

        pipe, x = self.pipe, self.component_inputs()
        scale = pipe.vae.config.scaling_factor
        with torch.inference_mode():
            text = measure(lambda: pipe.text_encoder(x["ids"]), self.device, reps=reps, warmup=warmup)
            unet = measure(
                lambda: pipe.unet(x["latents"], x["timestep"], encoder_hidden_states=x["context"]),
                self.device,
                reps=reps,
                warmup=warmup,
            )
            vae = measure(lambda: pipe.vae.decode(x["decode"] / scale), self.device, reps=reps, warmup=warmup)
        return text, unet, vae

    def run_config(self, name: str) -> GridResult:
        a = self.args
        grid = measure(self.grid, self.device, reps=a.reps, warmup=a.warmup)
        text, unet, vae = self.components(a.component_reps, 1)
        return GridResult(name, grid, text, unet, vae)


def apply_config(pipe: Any, name: str) -> None:
    """Cumulative: a dtype name converts the pipeline; the others add to what is already applied."""
    import torch

    if name in DTYPE_CONFIGS:
        pipe.to(dtype=getattr(torch, DTYPE_CONFIGS[name]))
    elif name == "channels_last":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    elif name == "fused_qkv":
        pipe.fuse_qkv_projections()
    elif name == "compile":
        pipe.unet.compile_repeated_blocks(fullgraph=True)
    else:
        raise ValueError(f"unknown config {name!r}")


# -- GPT-2 and previews --------------------------------------------------------------------------------
def gpt2_small(text_model: str, device: Any, count: int, reps: int, warmup: int) -> tuple[float, int, int]:
    """(median seconds, sequences, new tokens each) for one expander-style generate() on GPT-2 small."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from bot.engine.expander import SamplingSettings

    s = SamplingSettings()
    tokenizer = AutoTokenizer.from_pretrained(text_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = GPT2Config()  # 124M: n_layer 12, n_embd 768, vocab 50257
    torch.manual_seed(0)
    with torch.device(device):
        model: Any = GPT2LMHeadModel(config)
    dtype = torch.float16 if device.type == "cuda" else torch.float32  # as bot.engine.loading does
    model = model.to(dtype=dtype).eval()
    sequences = max(count * s.candidates_per_tile, 2)
    encoded = tokenizer([SEED_TEXT + ","], return_tensors="pt").to(device)

    def generate() -> Any:
        torch.manual_seed(1)
        with torch.inference_mode():
            return model.generate(
                **encoded,
                do_sample=True,
                max_new_tokens=s.max_new_tokens,
                min_new_tokens=s.max_new_tokens,  # random weights: force the full length every time
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
                repetition_penalty=s.repetition_penalty,
                num_return_sequences=sequences,
                pad_token_id=tokenizer.pad_token_id,
            )

    times = measure(generate, device, reps=reps, warmup=warmup).walls
    params = parameter_count(model)
    print(f"GPT-2 small: {params / 1e6:.1f} M parameters ({str(dtype).removeprefix('torch.')})")
    return median(times), sequences, s.max_new_tokens


def preview_cost(pipe: Any, args: argparse.Namespace, device: Any) -> float:
    """Median seconds of one latents_to_preview call on a job's latents (includes the copy to the CPU)."""
    import torch

    from bot.engine.renderer import latents_to_preview

    latents = torch.randn(
        args.count, 4, args.height // 8, args.width // 8, device=device, dtype=pipe.unet.dtype
    )
    times = measure(lambda: latents_to_preview(latents), device, reps=20, warmup=3).walls
    return median(times)


# -- main ------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    import torch

    from bot.engine.loading import quiet_libraries, resolve_device

    quiet_libraries()
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # random weights: NaN pixels in the cast
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = _configs(args, device)
    first_dtype = getattr(torch, DTYPE_CONFIGS[configs[0]])
    sd_model, text_model = resolve_models(args)
    print(machine_line())
    print(f"device {device}; configs {', '.join(configs)}")

    started = time.perf_counter()
    pipe = build_pipeline(sd_model, device, first_dtype)
    build_seconds = time.perf_counter() - started
    unet_params = parameter_count(pipe.unet)
    print(
        f"built SD 2.1 architecture in {build_seconds:.1f} s: UNet {unet_params / 1e6:.1f} M parameters "
        f"(expected {EXPECTED_UNET_PARAMS / 1e6:.1f} M: {'OK' if unet_params == EXPECTED_UNET_PARAMS else 'MISMATCH'}), "
        f"VAE {parameter_count(pipe.vae) / 1e6:.1f} M, text encoder {parameter_count(pipe.text_encoder) / 1e6:.1f} M"
    )
    bench = Bench(pipe, args, device)
    shape = f"{args.count}x{args.width}x{args.height}, {args.steps} steps, guidance {args.guidance}"
    print(f"grid: {shape}; {args.reps} reps after {args.warmup} warm-up(s) per config")
    print()

    results: list[GridResult] = []
    for name in configs:
        apply_config(pipe, name)
        label = name if not results else f"+ {name}"
        print(f"measuring {label} …", flush=True)
        results.append(bench.run_config(label))
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print()
    baseline = results[0].seconds
    rows = []
    for r in results:
        startup = r.first_call - r.seconds if "compile" in r.name else float("nan")
        rows.append(
            [
                r.name,
                r.seconds,
                args.count / r.seconds * 60.0,
                baseline / r.seconds,
                r.unet.wall * 1000.0,
                r.unet.cpu,
                r.text.wall * 1000.0,
                r.vae.wall * 1000.0,
                r.first_call,
                startup,
            ]
        )
    print_table(
        [
            "config",
            "s/grid",
            "images/min",
            "speed-up",
            "UNet step ms",
            "UNet step CPU-s",
            "text enc ms",
            "VAE dec ms",
            "1st call s",
            "compile start-up s",
        ],
        rows,
    )
    best = min(results, key=lambda r: r.seconds)
    last = results[-1]

    # Steps sweep with the last configuration.
    sweep = [int(s) for s in args.sweep_steps.split(",") if s.strip()] if args.sweep_steps else []
    if sweep:
        print()
        print(f"steps sweep ({last.name} config):")
        sweep_rows = [[str(args.steps), last.seconds, args.count / last.seconds * 60.0]]
        for steps in sweep:

            def grid(steps: int = steps) -> Any:
                return bench.grid(steps)

            times = measure(grid, device, reps=args.reps, warmup=1).walls
            sweep_rows.append([str(steps), median(times), args.count / median(times) * 60.0])
        sweep_rows.sort(key=lambda row: int(str(row[0])))
        print_table(["steps", "s/grid", "images/min"], sweep_rows)
        (s0, t0), (s1, t1) = (
            (int(str(row[0])), float(str(row[1]))) for row in (sweep_rows[0], sweep_rows[-1])
        )
        per_step = (t1 - t0) / (s1 - s0)
        print(
            f"marginal cost per step {per_step * 1000:.1f} ms; fixed cost "
            f"(text encoder + VAE + overheads) {t0 - per_step * s0:.3f} s"
        )

    # Extrapolation from the components (the CPU smoke run uses it: a full CPU run would take too long).
    print()
    threads = torch.get_num_threads()
    for steps in (20, 25):
        wall = last.text.wall + steps * last.unet.wall + last.vae.wall
        cpu = last.text.cpu + steps * last.unet.cpu + last.vae.cpu
        print(
            f"extrapolated {args.count}x{args.width}x{args.height} at {steps} steps ({last.name}): "
            f"{wall:.2f} s wall = text {last.text.wall:.2f} + {steps} x UNet {last.unet.wall:.3f} "
            f"+ VAE {last.vae.wall:.2f}"
        )
        if device.type == "cpu":
            print(
                f"    {cpu:.1f} CPU-s = text {last.text.cpu:.2f} + {steps} x UNet {last.unet.cpu:.2f} "
                f"+ VAE {last.vae.cpu:.2f}; on an idle machine with {threads} torch threads "
                f"~{cpu / threads:.1f} s wall (perfect scaling)"
            )

    # GPT-2 small.
    print()
    gpt2_seconds, sequences, tokens = gpt2_small(text_model, device, args.count, args.component_reps, 1)
    print(
        f"GPT-2 small generate: {sequences} sequences x {tokens} new tokens in {gpt2_seconds:.3f} s "
        f"({sequences * tokens / gpt2_seconds:.0f} tokens/s); {gpt2_seconds / best.seconds * 100:.1f} % of "
        f"the best grid"
    )

    # Preview.
    per_preview = preview_cost(pipe, args, device)
    every = args.preview_every
    calls = len([d for d in range(1, args.steps + 1) if every and d % every == 0 and d < args.steps])
    print(
        f"latents_to_preview: {per_preview * 1000:.2f} ms per call; {calls} call(s) per {args.steps}-step job "
        f"(every {every}) = {calls * per_preview * 1000:.2f} ms = "
        f"{calls * per_preview / best.seconds * 100:.2f} % of the best grid"
    )

    # Physical floor.
    print()
    count, width, height, steps = FLOOR_SHAPE
    same = (args.count, args.width, args.height, args.steps) == FLOOR_SHAPE
    print(
        f"physical floor: {FLOOR_SECONDS:.2f} s for {count}x{width}x{height} at {steps} steps on H100 bf16; "
        f"best here ({best.name}) {best.seconds:.3f} s = {best.seconds / FLOOR_SECONDS:.2f}x the floor"
        + ("" if same else " (different shape: not comparable)")
    )

    if args.actions:
        # Midjourney-style actions on the same pipeline and config (bench/actions.py): cost vs a plain grid.
        from bench.actions import HEADERS, action_rows
        from bot.engine.renderer import Renderer

        print()
        print(f"actions ({last.name} config; a compiled UNet recompiles for the new shapes in the warm-up):")
        renderer = Renderer(pipe, device=device, dtype=pipe.unet.dtype, preview_every=0)
        rows = action_rows(
            renderer,
            count=args.count,
            width=args.width,
            height=args.height,
            steps=args.steps,
            reps=max(1, args.reps // 2),
            synchronize=lambda: synchronize(device),
        )
        print_table(HEADERS, rows)
    return 0


def _configs(args: argparse.Namespace, device: Any) -> list[str]:
    if args.configs:
        configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    elif device.type == "cuda":
        configs = ["fp16", "bf16", "channels_last", "fused_qkv", "compile"]
        if args.dtype != "auto":
            configs = [_dtype_config(args.dtype), "channels_last", "fused_qkv", "compile"]
    else:
        configs = [_dtype_config(args.dtype if args.dtype != "auto" else "float32")]
    unknown = [c for c in configs if c not in CONFIG_ORDER]
    if unknown:
        raise SystemExit(f"unknown --configs {unknown}; choose from {', '.join(CONFIG_ORDER)}")
    if configs[0] not in DTYPE_CONFIGS:
        default = "bfloat16" if device.type == "cuda" else "float32"
        configs.insert(0, _dtype_config(args.dtype if args.dtype != "auto" else default))
    return configs


def _dtype_config(dtype: str) -> str:
    return {v: k for k, v in DTYPE_CONFIGS.items()}[dtype]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, width=768, height=768, steps=25, count=4, reps=5)
    parser.add_argument("--warmup", type=int, default=1, help="warm-up grids per config (the first is timed)")
    parser.add_argument(
        "--component-reps", type=int, help="reps of the per-component timings (CUDA 10, else 2)"
    )
    parser.add_argument(
        "--configs", help=f"comma list, cumulative, from {', '.join(CONFIG_ORDER)} (default: all on CUDA)"
    )
    parser.add_argument(
        "--sweep-steps", default=None, help="steps to time with the last config (CUDA: 20,30,50)"
    )
    parser.add_argument("--preview-every", type=int, default=5)
    parser.add_argument(
        "--actions",
        action="store_true",
        help="also time Upscale, Vary, Zoom Out, Pan and image prompts against a plain grid (bench/actions.py)",
    )
    args = parser.parse_args()
    offline()
    setup_logging(args.verbose)
    import torch

    on_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.sweep_steps is None:
        args.sweep_steps = "20,30,50" if on_cuda else ""
    if args.component_reps is None:
        args.component_reps = 10 if on_cuda else 2
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first call is reported)")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
