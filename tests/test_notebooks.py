"""The course notebooks (notebooks/*.ipynb) run top to bottom offline on huabu-tiny, each in a fresh kernel, and
their last cell prints `RESULT {json}` with what they computed; each test checks those numbers. A further test
keeps the committed notebooks free of outputs (nbstripout)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT_S = 300
TESTED = {
    "01-pipelines-and-schedulers.ipynb",
    "02-denoising-loop-by-hand.ipynb",
    "03-img2img-and-inpainting.ipynb",
    "04-controlnet.ipynb",
    "05-lora-training.ipynb",
    "06-unet-vs-dit.ipynb",
}


def run_notebook(name: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Execute notebooks/`name` in a python3 kernel of this interpreter, with the repository importable and the
    notebook's files written under `out`; the parsed RESULT line."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    monkeypatch.setenv("HUABU_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's huabu, not another install's
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # No kernel folders searched: only the native kernel, which runs sys.executable, so a python3 kernel spec
    # elsewhere on the machine (another venv's, the user's) cannot take over.
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    for cell in reversed(notebook.cells):
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith("RESULT "):
                    return json.loads(line.removeprefix("RESULT "))
    raise AssertionError(f"{name} printed no RESULT line")


def test_pipelines_and_schedulers(tmp_path, monkeypatch):
    r = run_notebook("01-pipelines-and-schedulers.ipynb", tmp_path, monkeypatch)
    assert r["components"] == {
        "vae": "AutoencoderKL",
        "text_encoder": "CLIPTextModel",
        "tokenizer": "CLIPTokenizer",
        "unet": "UNet2DConditionModel",
        "scheduler": "DPMSolverMultistepScheduler",
    }
    assert r["same_seed_identical"] and r["other_seed_differs"]
    steps = r["step_distance"]
    assert steps["20"] < steps["4"] < steps["2"]
    # deterministic samplers land near the converged picture; ancestral Euler a wanders off it
    assert (
        max(r["sampler_distance"][s] for s in ("Euler", "DDIM", "DPM++ 2M", "UniPC")) < r["sampler_distance"]["Euler a"]
    )
    from PIL import Image

    assert Image.open(r["samplers_png"]).size == (6 * 64, 64)


def test_denoising_loop_by_hand(tmp_path, monkeypatch):
    r = run_notebook("02-denoising-loop-by-hand.ipynb", tmp_path, monkeypatch)
    assert r["formula_error"] < 1e-5  # scheduler.add_noise is sqrt(abar) x0 + sqrt(1 - abar) noise
    assert r["max_pixel_difference"] == 0  # the hand-written loop is the pipeline, pixel for pixel
    assert r["previews"] == 5
    from PIL import Image

    assert Image.open(r["by_hand_png"]).size == (64, 64)


def test_img2img_and_inpainting(tmp_path, monkeypatch):
    r = run_notebook("03-img2img-and-inpainting.ipynb", tmp_path, monkeypatch)
    assert r["same_unet"]
    assert r["steps_run"] == {"0.2": 4, "0.4": 8, "0.6": 12, "0.8": 16, "1.0": 20}  # strength x steps
    distances = list(r["img2img_distance"].values())
    assert distances == sorted(distances)  # more strength, further from the source
    assert r["change_inside"] > 3 * r["change_outside"]  # the mask's part was repainted, the rest kept
    assert r["pasted_outside"] == 0.0
    from PIL import Image

    assert Image.open(r["inpaint_png"]).size == (4 * 64, 64)


def test_controlnet(tmp_path, monkeypatch):
    r = run_notebook("04-controlnet.ipynb", tmp_path, monkeypatch)
    assert r["f1_controlled"] > 2 * r["f1_free"]  # outlines follow the canny map
    assert r["f1_by_weight"]["1.0"] > r["f1_by_weight"]["0.0"]
    assert r["colour_controlled"] < 0.6 * r["colour_free"]  # colours follow the colour grid
    from PIL import Image

    assert Image.open(r["canny_png"]).size == (4 * 64, 3 * 64)


def test_lora_training(tmp_path, monkeypatch):
    r = run_notebook("05-lora-training.ipynb", tmp_path, monkeypatch)
    assert r["trainable"] < 0.02 * r["unet_parameters"]
    curve = r["eval_curve"]
    assert curve["60"] < 0.8 * curve["0"]  # the same noise and timesteps are predicted better after training
    assert r["lora_kib"] < 1024
    assert r["weight0_vs_base"] == 0  # weight 0 is the base model exactly
    assert r["weight1_vs_trained"] == 0  # saved and loaded again, weight 1 is what was trained
    from PIL import Image

    assert Image.open(r["before_after_png"]).size == (3 * 64, 2 * 64)


def test_unet_vs_dit(tmp_path, monkeypatch):
    r = run_notebook("06-unet-vs-dit.ipynb", tmp_path, monkeypatch)
    assert 0.8 < r["dit_params"] / r["unet_params"] < 1.2  # a DiT of about huabu-tiny's size
    small = r["table"]["16"]
    assert 0.7 < small["dit_gflops"] / small["unet_gflops"] < 1.3
    assert small["unet_ms"] > 0 and small["dit_ms"] > 0
    assert r["unet_growth"] > r["dit_growth"] > 1
    assert max(r["oracle_error"].values()) < 1e-5  # Euler on the straight path with the true velocity is exact
    assert r["unet_loss"] < 0.1 < r["dit_loss"]  # trained UNet, random DiT
    assert r["reload_identical"]
    # the trained huabu-tiny-dit: a sentence and its translation encode alike, both draw the asked background
    assert r["same_pair_similarity"] > r["other_pair_similarity"]
    assert r["backgrounds"]["DiT, en"] == r["backgrounds"]["DiT, zh"] == r["asked"]
    assert r["speed"]["DiT"] > 0 and r["speed"]["UNet"] > 0
    from PIL import Image

    assert Image.open(r["random_png"]).size == (64, 64)
    assert Image.open(r["bilingual_png"]).size == (3 * 64, 4 * 64)


def committed_notebooks() -> list[Path]:
    """The notebooks git tracks (the files on disk where there is no git, as in an unpacked release)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "notebooks/*.ipynb"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return sorted(NOTEBOOKS.glob("*.ipynb"))
    return [ROOT / name for name in listed]


def test_every_notebook_is_tested_and_stripped():
    import nbformat

    notebooks = committed_notebooks()
    assert {path.name for path in notebooks} == TESTED  # a new notebook needs a test above
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: run nbstripout on it"
    # and nbstripout itself would change nothing (metadata included)
    check = subprocess.run(
        [sys.executable, "-m", "nbstripout", "--verify", *map(str, notebooks)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
