"""LoRA training for real on the tiny SD2 model (CPU): the loss falls, the LoRA loads into diffusers and moves
the output toward the training pictures, a stopped run resumes exactly, the files land where promised.

The synthetic dataset: 16 pictures of one red square on dark noise, 32x32, one caption.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.train.dataset import Dataset, load_dataset
from bot.train.lora import LoraHyperparameters, LoraJob, LoraResult, TrainingError, train_lora

CAPTION = "a photo of sks square"
SIZE = 64  # latents 8×8: the tiny models have SD 2's ×8 VAE
STEPS = 60
# Measured on this CPU: the last tenth's mean loss is ~10 % below the first tenth's; we ask for 4 %.
LOSS_DROP = 0.04
# Measured: the LoRA's final latents are ~9 % closer (MSE) to the training latents than the base's; we ask for 5 %.
TOWARD_DATA = 0.05

pytest.importorskip("peft", reason="the `train` extra (scripts/test.sh installs it)")
pytest.importorskip("matplotlib", reason="the `train` extra (scripts/test.sh installs it)")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # Two threads on a shared 2-core box run the tiny UNet ~10x slower than one (oversubscription).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_square_pictures(folder: Path, count: int = 16) -> None:
    """`count` pictures of one red square on dark noise (the instance the LoRA learns)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 80, (SIZE, SIZE, 3), dtype=np.uint8)
        pixels[8:24, 8:24] = (230, 30, 30)
        Image.fromarray(pixels).save(folder / f"square{i:02d}.png")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    folder = tmp_path_factory.mktemp("squares")
    make_square_pictures(folder)
    return load_dataset(folder, caption=CAPTION)


def _job(root: Path, sd: Path, dataset: Dataset, **changes: object) -> LoraJob:
    job = LoraJob(
        name="square",
        base=str(sd),
        dataset=dataset,
        hyper=LoraHyperparameters(steps=STEPS, rank=4, lr=1e-2, batch=2, resolution=SIZE, seed=0),
        output_dir=root / "loras",
        work_dir=root / "train" / "square",
        checkpoint_every=20,
        validate_every=30,
        validation_seeds=(1, 2),
        validation_steps=2,
    )
    return replace(job, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path], dataset: Dataset
) -> tuple[LoraJob, LoraResult]:
    job = _job(tmp_path_factory.mktemp("lora"), tiny_models[0], dataset)
    return job, train_lora(job)


def test_the_training_loss_falls(trained: tuple[LoraJob, LoraResult]) -> None:
    _, result = trained
    assert len(result.losses) == STEPS and not result.interrupted
    tenth = STEPS // 10
    first, last = np.mean(result.losses[:tenth]), np.mean(result.losses[-tenth:])
    assert last < first * (1 - LOSS_DROP), (first, last)


def test_the_lora_and_its_sidecar_land_exactly_in_the_lora_dir(trained: tuple[LoraJob, LoraResult]) -> None:
    job, result = trained
    assert sorted(p.name for p in job.output_dir.iterdir()) == ["square.json", "square.safetensors"]
    assert result.weights == job.output_dir / "square.safetensors"
    record = json.loads((job.output_dir / "square.json").read_text())
    assert record["base_model"] == job.base and record["base_revision"].startswith("sha256:")
    assert record["dataset"]["hash"] == job.dataset.digest and record["dataset"]["captions"] == [CAPTION]
    assert record["hyperparameters"]["rank"] == 4 and record["hyperparameters"]["lr"] == 1e-2
    assert record["steps"] == STEPS and record["device"] == "cpu" and record["prediction_type"] == "epsilon"
    assert record["final_loss"] == pytest.approx(np.mean(result.losses[-STEPS // 10 :]))
    assert record["training_seconds"] > 0
    # Checkpoints, validation rows and plots stay in the work folder.
    assert result.loss_plot is not None and result.loss_plot.read_bytes()[:4] == b"\x89PNG"
    assert result.contact_sheet is not None
    with Image.open(result.contact_sheet) as sheet:  # rows for steps 0 (the base), 30, 60; a column per seed
        assert sheet.height == 3 * SIZE and sheet.width > 2 * SIZE
    assert sorted(p.name for p in (job.work_dir / "checkpoints").iterdir()) == [
        "step-0000040",
        "step-0000060",
    ]


def test_the_lora_loads_into_diffusers_and_moves_output_toward_the_pictures(
    trained: tuple[LoraJob, LoraResult], tiny_models: tuple[Path, Path]
) -> None:
    from diffusers import StableDiffusionPipeline

    job, result = trained
    assert result.weights is not None
    pipe = StableDiffusionPipeline.from_pretrained(
        str(tiny_models[0]), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pixels = torch.stack(
        [
            torch.from_numpy(
                np.asarray(Image.open(image.path).convert("RGB"), dtype=np.float32) / 127.5 - 1
            ).permute(2, 0, 1)
            for image in job.dataset.images
        ]
    )
    with torch.no_grad():
        target = (pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor).mean(0)

    def distance() -> float:
        # Latent space: the tiny VAE is random, so its decoder cannot draw the square even for a perfect UNet.
        latents = [
            pipe(
                CAPTION,
                num_inference_steps=8,
                height=SIZE,
                width=SIZE,
                output_type="latent",
                generator=torch.Generator().manual_seed(seed),
            ).images[0]
            for seed in range(1, 5)
        ]
        return float(((torch.stack(latents) - target) ** 2).mean())

    base = distance()
    pipe.load_lora_weights(str(result.weights.parent), weight_name=result.weights.name)
    with_lora = distance()
    assert with_lora < base * (1 - TOWARD_DATA), (base, with_lora)


def test_a_stopped_run_resumes_where_it_stopped(
    tmp_path: Path, tiny_models: tuple[Path, Path], dataset: Dataset, trained: tuple[LoraJob, LoraResult]
) -> None:
    _, uninterrupted = trained
    stop = threading.Event()
    job = _job(
        tmp_path, tiny_models[0], dataset, hyper=replace(trained[0].hyper, steps=20), validate_every=1000
    )

    def stop_at_seven(step: int, loss: float) -> None:
        if step == 7:
            stop.set()  # what Ctrl-C does in the CLI

    first = train_lora(job, stop=stop, on_step=stop_at_seven)
    assert first.interrupted and first.steps_done == 7 and first.weights is None
    assert first.checkpoint == job.work_dir / "checkpoints" / "step-0000007"
    assert not job.output_dir.exists()
    with pytest.raises(TrainingError, match="pass --resume"):
        train_lora(job)
    second = train_lora(replace(job, resume=True))
    assert second.resumed_from == 7 and second.steps_done == 20 and not second.interrupted
    # The same 20 steps as a run that never stopped (the RNG state travels in the checkpoint).
    np.testing.assert_allclose(second.losses, uninterrupted.losses[:20], rtol=1e-4)
    with pytest.raises(TrainingError, match="rank=4 \\(now 8\\)"):
        train_lora(replace(job, resume=True, hyper=replace(job.hyper, rank=8, steps=30)))
