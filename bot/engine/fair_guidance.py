"""Fair guidance (Fair Diffusion, Friedrich et al. 2023): semantic guidance toward one of two attribute
directions, chosen per image, during denoising.

Fair Diffusion builds on SEGA (Brack et al. 2023): besides the unconditional and the prompt's noise
estimates, the UNet also predicts the noise for each edit concept ("female person", "male person"). Each
concept's difference to the unconditional estimate is scaled (`edit_scale`), signed (toward one concept,
away from the other: the image's direction), and thresholded per channel to the strongest
1 − `threshold` of its values; a momentum term accumulates it from the first step, and from step
`warmup_steps` on the sum is added to the classifier-free guidance. Per image, the direction is one of the
two, balanced over the grid and shuffled by the job seed (recorded with the job), so a rerun repeats it.

This is done on the diffusers UNet call, not a pipeline of its own: a forward hook on `pipe.unet` sees
the pipeline's batch [unconditional × N, prompt × N], runs the UNet once more on the prompt latents with the
edit concepts' embeddings, and hands the pipeline a prompt estimate moved by `edit / guidance`, so the
pipeline's own `uncond + guidance · (prompt − uncond)` comes out as SEGA's sum. The unconditional and
prompt estimates themselves are computed exactly as without the hook (same batch, same call), so with the
edit not yet applied (warm-up) the latents are bit for bit the plain render's. Plain data in, a context
manager around the pipeline call: it runs the same on the local GPU thread and on a remote worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bot.engine.mitigation import FairGuidance, directions, mitigation_mode
from bot.engine.types import GenerationRequest


class _EditState:
    """One render's SEGA state: the step counter and the momentum."""

    def __init__(self) -> None:
        self.step = 0
        self.momentum: torch.Tensor | None = None
        self.applied_steps: list[int] = []


def edit_guidance(
    uncond: torch.Tensor,
    edits: Sequence[torch.Tensor],
    signs: torch.Tensor,
    params: FairGuidance,
    state: _EditState,
) -> torch.Tensor | None:
    """SEGA's edit term for this step (None during warm-up); updates the momentum in `state`.

    `edits[c]` is the noise estimate for concept c ([N, C, H, W]); `signs` is [concepts, N]: +1 toward, −1 away.
    """
    total = torch.zeros_like(uncond)
    for c, estimate in enumerate(edits):
        term = (estimate - uncond) * signs[c].view(-1, 1, 1, 1).to(uncond.dtype) * params.edit_scale
        magnitude = term.abs().flatten(start_dim=2)
        # torch.quantile needs float32 (or 64); per image and channel over the latent's pixels.
        cut = torch.quantile(magnitude.float(), params.threshold, dim=2).to(term.dtype)
        total = total + torch.where(term.abs() >= cut[:, :, None, None], term, torch.zeros_like(term))
    if state.momentum is None:
        state.momentum = torch.zeros_like(total)
    total = total + params.momentum_scale * state.momentum
    state.momentum = params.momentum_beta * state.momentum + (1 - params.momentum_beta) * total
    step = state.step
    state.step += 1
    if step < params.warmup_steps:
        return None
    state.applied_steps.append(step)
    return total


@contextlib.contextmanager
def fair_guidance_hooks(
    pipe: Any, params: FairGuidance, toward: Sequence[int], guidance: float
) -> Iterator[_EditState]:
    """While open, `pipe`'s UNet calls add fair guidance for the images whose directions `toward` gives.

    The pipeline must run classifier-free guidance (`guidance` > 1) on a batch of len(toward) images.
    """
    count = len(toward)
    with torch.inference_mode():
        embeds, _ = pipe.encode_prompt(
            list(params.concepts),
            pipe._execution_device,
            1,
            False,
        )
    signs = torch.tensor(
        [[1.0 if toward[i] == c else -1.0 for i in range(count)] for c in range(2)], device=embeds.device
    )
    state = _EditState()
    busy = False

    def after_unet(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        nonlocal busy
        if busy:
            return None  # our own call for the edit concepts
        sample = args[0] if args else kwargs["sample"]
        if sample.shape[0] != 2 * count:
            raise RuntimeError(f"fair guidance expected a batch of {2 * count}, got {sample.shape[0]}")
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        noise = output[0] if isinstance(output, tuple) else output.sample
        uncond, text = noise[:count], noise[count:]
        prompt_latents = sample[count:]
        if isinstance(timestep, torch.Tensor) and timestep.ndim > 0 and timestep.shape[0] == 2 * count:
            timestep = torch.cat([timestep[count:]] * 2)
        hidden = torch.cat([embeds[c : c + 1].expand(count, -1, -1) for c in range(2)]).to(sample.dtype)
        busy = True
        try:
            edit_noise = module(
                torch.cat([prompt_latents, prompt_latents]),
                timestep,
                encoder_hidden_states=hidden,
                return_dict=False,
            )[0]
        finally:
            busy = False
        term = edit_guidance(uncond, edit_noise.chunk(2), signs, params, state)
        if term is None:
            return None  # warm-up: the pipeline gets the UNet's own output, untouched
        moved = torch.cat([uncond, text + term / guidance])
        if isinstance(output, tuple):
            return (moved, *output[1:])
        output.sample = moved
        return output

    handle = pipe.unet.register_forward_hook(after_unet, with_kwargs=True)
    try:
        yield state
    finally:
        handle.remove()


@dataclass
class FairGuidancePlan:
    """One render's fair guidance: the parameters, each image's direction, and (after it ran) its state."""

    params: FairGuidance
    toward: list[int]
    guidance: float
    state: _EditState | None = None

    def record(self) -> dict[str, Any]:
        """What the render record says: the parameters, each image's concept, the steps it was added at."""
        record = self.params.record() | {"toward": [self.params.concepts[d] for d in self.toward]}
        if self.state is not None:
            record["edited_steps"] = list(self.state.applied_steps)
        return record


def plan_for(request: GenerationRequest) -> tuple[FairGuidancePlan | None, str | None]:
    """The fair guidance a request renders with, or None and why not (another mitigation, img2img, ...)."""
    if mitigation_mode(request.mitigation) != "fair-guidance":
        return None, None
    assert request.mitigation is not None
    if request.mode != "txt2img":
        # An upscale or a variation starts from an image that was already guided (or not): leave it be.
        return None, f"not applied: {request.mode} starts from an image"
    if request.guidance <= 1.0:
        return None, "not applied: it needs classifier-free guidance above 1"
    params = FairGuidance.from_record(request.mitigation)
    return FairGuidancePlan(params, directions(request.job_seed, request.count), request.guidance), None


@contextlib.contextmanager
def guided(pipe: Any, plan: FairGuidancePlan | None) -> Iterator[None]:
    """The renderer's one hook: `fair_guidance_hooks` around a pipeline call when there is a plan."""
    if plan is None:
        yield
        return
    with fair_guidance_hooks(pipe, plan.params, plan.toward, plan.guidance) as state:
        plan.state = state
        yield
