"""`train lora`'s dataset checks: every problem one line on stderr, unreadable files before the count rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bot.cli import main
from bot.train.dataset import MIN_IMAGES, DatasetError, load_dataset


def _pictures(folder: Path, count: int, size: int = 16) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (size, size), (i * 10, 0, 0)).save(folder / f"pic{i:02d}.png")


def _problems(folder: Path, **kwargs: object) -> list[str]:
    with pytest.raises(DatasetError) as raised:
        load_dataset(folder, **kwargs)  # type: ignore[arg-type]
    return raised.value.problems


def test_sixteen_captioned_pictures_are_enough(tmp_path: Path) -> None:
    assert MIN_IMAGES == 16
    _pictures(tmp_path, 16)
    (tmp_path / "pic03.txt").write_text("a photo of sks mascot\non a beach\n", encoding="utf-8")
    dataset = load_dataset(tmp_path, caption="a photo of sks mascot")
    assert len(dataset.images) == 16
    by_name = {image.path.name: image.caption for image in dataset.images}
    assert by_name["pic03.png"] == "a photo of sks mascot on a beach"  # its own file wins, one line
    assert by_name["pic04.png"] == "a photo of sks mascot"
    assert dataset.digest == load_dataset(tmp_path, caption="a photo of sks mascot").digest
    (tmp_path / "pic04.txt").write_text("another caption", encoding="utf-8")
    assert dataset.digest != load_dataset(tmp_path, caption="a photo of sks mascot").digest


def test_too_few_pictures_states_the_minimum(tmp_path: Path) -> None:
    _pictures(tmp_path, 15)
    assert _problems(tmp_path, caption="x") == [
        f"{tmp_path} has 15 usable image(s); a LoRA needs at least 16"
    ]


def test_an_unreadable_file_is_named_before_the_count_rule(tmp_path: Path) -> None:
    _pictures(tmp_path, 3)
    (tmp_path / "notes.png").write_bytes(b"not a picture at all")
    (tmp_path / "half.png").write_bytes((tmp_path / "pic00.png").read_bytes()[:40])  # truncated PNG
    problems = _problems(tmp_path, caption="x")
    assert problems[0].startswith(f"{tmp_path / 'half.png'} is not a readable image")
    assert problems[1].startswith(f"{tmp_path / 'notes.png'} is not a readable image")
    assert problems[-1].endswith("a LoRA needs at least 16")


def test_a_caption_without_its_image(tmp_path: Path) -> None:
    _pictures(tmp_path, 16)
    (tmp_path / "ghost.txt").write_text("a ghost", encoding="utf-8")
    assert _problems(tmp_path, caption="x") == [
        f"{tmp_path / 'ghost.txt'} is a caption without its image (no ghost.png/.jpg/.webp beside it)"
    ]


def test_too_many_pixels_and_no_caption(tmp_path: Path) -> None:
    _pictures(tmp_path, 16)
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    problems = _problems(tmp_path, caption=None, max_pixels=1000)
    assert (
        problems[0]
        == f"{tmp_path / 'big.png'} has too many pixels (40x30 = 1,200; at most 1,000); scale it down"
    )
    assert f"{tmp_path / 'pic00.png'} has no caption: add pic00.txt beside it or pass --caption" in problems


def test_cli_prints_each_problem_as_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGINE_DATA_DIR", str(tmp_path / "data"))
    folder = tmp_path / "pictures"
    _pictures(folder, 2)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    (folder / "orphan.txt").write_text("x", encoding="utf-8")
    code = main(["train", "lora", "mascot", "--images", str(folder), "--caption", "a photo of sks mascot"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err == [
        f"error: {folder / 'broken.jpg'} is not a readable image (PNG, JPEG, WebP…); remove it from the folder",
        f"error: {folder / 'orphan.txt'} is a caption without its image (no orphan.png/.jpg/.webp beside it)",
        f"error: {folder} has 2 usable image(s); a LoRA needs at least 16",
    ]
    assert not (tmp_path / "data" / "loras").exists()


def test_cli_refuses_bad_numbers_before_reading_pictures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGINE_DATA_DIR", str(tmp_path / "data"))
    code = main(["train", "lora", "mascot", "--images", str(tmp_path), "--resolution", "100"])
    assert code == 2
    assert capsys.readouterr().err == "error: `--resolution` must be a multiple of 8 in 32..2048, got 100\n"
