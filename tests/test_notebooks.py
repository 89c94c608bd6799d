"""The notebooks of ``notebooks/``: stored without outputs, one shared first cell, and (slow) each executed top to
bottom headless with nbclient, as CI's second step runs them: this interpreter as the ``python3`` kernel, the working
directory ``notebooks/``, ``PERTURB_JAX_NOTEBOOK_SMALL=1``. A cell that raises fails the test; the figures must have
rendered (an ``image/png`` output). ``imagenet.ipynb`` runs twice: without the ImageNet files (every cell that needs
them says it is skipped) and on a miniature ILSVRC tree with random narrow weights (conversion, the job, the table).
"""

import io
import json
import pathlib
import sys
import tarfile
import time

import numpy as np
import pytest
from ilsvrc_fixtures import random_state_dict
from PIL import Image

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("quickstart", "aln", "imagenet")
TIMEOUT_S = 600  # per cell


def _read(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NAMES)
def test_stored_without_outputs_with_a_parameters_cell(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "python3"
    for cell in _code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and "PERTURB_JAX_NOTEBOOK_SMALL" in parameters[0].source
    assert _code_cells(nb).index(parameters[0]) == 1  # right after the setup cell


def test_every_notebook_starts_with_the_same_setup_cell():
    first = {name: _code_cells(_read(name))[0].source for name in NAMES}
    assert len(set(first.values())) == 1
    setup = first[NAMES[0]]
    assert 'os.environ.get("PERTURB_JAX_REPO", "https://github.com/' in setup
    assert '"-e", str(ROOT)' in setup and "sys.path.insert(0, str(ROOT))" in setup
    assert "jax[{ACCELERATOR}]" in setup and "[torch" not in setup and '"torch"' not in setup  # never torch


def _kernel_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A ``python3`` kernelspec running this interpreter, first on JUPYTER_PATH (so no other python3 is taken)."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (perturb-jax tests)", "language": "python"}))
    return tmp_path / "jupyter"


def execute(name: str, tmp_path: pathlib.Path, monkeypatch, **env) -> tuple:
    """(the executed notebook, seconds); a cell that raises raises ``CellExecutionError`` here."""
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_dir(tmp_path)))
    monkeypatch.setenv("PERTURB_JAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the notebooks' temporary workdirs, removed with tmp_path
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = _read(name)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    seconds = time.perf_counter() - start
    print(f"{name}.ipynb: {seconds:.0f} s")
    return nb, seconds


def _outputs(nb) -> list:
    return [o for c in _code_cells(nb) for o in c.outputs]


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for o in _outputs(nb))


def _text(nb) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb) if o.output_type == "stream")


@pytest.mark.slow
def test_quickstart(tmp_path, monkeypatch):
    nb, _ = execute("quickstart", tmp_path, monkeypatch)
    text = _text(nb)
    assert _images(nb) >= 3  # the guided perceptual ball, Table 1's methods, the user's image
    assert all(f"{m:22s} IoU" in text for m in ("perceptual_ball", "occlusion", "extremal_perturbation"))
    assert "images: ['demo.png', 'demo.xml']" in text and "backend cpu" in text


@pytest.mark.slow
def test_aln(tmp_path, monkeypatch):
    nb, _ = execute("aln", tmp_path, monkeypatch)
    assert _images(nb) >= 3  # the learning curves, eval/figure.png, the diagnostic
    markdown = "".join(o.data.get("text/markdown", "") for o in _outputs(nb) if "data" in o)
    assert "GT-known" in markdown and "optimum from nothing" in markdown


@pytest.mark.slow
def test_imagenet_without_the_files(tmp_path, monkeypatch):
    nb, _ = execute("imagenet", tmp_path, monkeypatch, IMAGENET_DIR=str(tmp_path / "nothing"),
                    VGG19_BN_FLAX=str(tmp_path / "no_checkpoint"))
    text = _text(nb)
    assert text.count("MISSING") == 4 and text.count("skipped:") == 4, text


# The miniature ILSVRC tree: 16 validation images, each with one box of its class, and a narrow random VGG19_bn.
NUM_FILES = 16
WIDTH_DIVISOR = 16


def miniature_imagenet(root: pathlib.Path) -> None:
    """root/ILSVRC2012_img_val.tar, root/ILSVRC2012_bbox_val_v3.tgz (a striped box of the file's synset on a
    gradient) and root/vgg19_bn.npz."""
    from eval.datasets import ilsvrc

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    synsets = ilsvrc.label_tables()[1]
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / ilsvrc.VAL_TAR, "w") as images, \
            tarfile.open(root / "ILSVRC2012_bbox_val_v3.tgz", "w:gz") as boxes:
        for k in range(1, NUM_FILES + 1):
            stem = f"ILSVRC2012_val_{k:08d}"
            h, w = rng.integers(60, 120, 2)
            x0, y0 = rng.integers(1, w // 2), rng.integers(1, h // 2)
            x1, y1 = rng.integers(x0 + 10, w + 1), rng.integers(y0 + 10, h + 1)
            y, x = np.mgrid[:h, :w]
            pixels = np.stack([40 + 150 * y / h, 60 + 120 * x / w, np.full((h, w), 90.0)], -1)
            stripes = ((y + x) // 3 % 2)[y0 - 1:y1, x0 - 1:x1, None]
            pixels[y0 - 1:y1, x0 - 1:x1] = np.where(stripes, (230, 200, 30), (120, 20, 160))
            jpeg = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(jpeg, "JPEG", quality=95)
            add(images, stem + ".JPEG", jpeg.getvalue())
            add(boxes, f"val/{stem}.xml", (
                f"<annotation><filename>{stem}</filename><object><name>{synsets[k - 1]}</name><bndbox>"
                f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                "</annotation>").encode())
    np.savez(root / "vgg19_bn.npz", **random_state_dict(width_divisor=WIDTH_DIVISOR))


@pytest.mark.slow
def test_imagenet_with_a_miniature_tree(tmp_path, monkeypatch):
    """The weights converted from .npz, the Table 1 job (SMALL: 8 + 8 images, two methods), its table and figure,
    and the ``:folder`` job on a folder of photos."""

    tree = tmp_path / "imagenet"
    miniature_imagenet(tree)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (80, 100, 3), np.uint8)).save(photos / f"{i}.png")
    nb, _ = execute("imagenet", tmp_path, monkeypatch, IMAGENET_DIR=str(tree),
                    VGG19_BN_WEIGHTS=str(tree / "vgg19_bn.npz"), VGG19_BN_FLAX=str(tmp_path / "vgg19_bn_flax"),
                    PERTURB_JAX_PHOTOS=str(photos))
    text = _text(nb)
    assert "MISSING converted checkpoint" in text and (tmp_path / "vgg19_bn_flax" / "model.json").is_file()
    assert "skipped:" not in text, text
    markdown = "".join(o.data.get("text/markdown", "") for o in _outputs(nb) if "data" in o)
    assert "perceptual_ball_guided" in markdown and "gradient" in markdown
    assert _images(nb) >= 2  # Table 1's figure.png, the photos' figure.png
