"""torchvision vgg19_bn state_dict -> Orbax checkpoint: parity with the torch replica, readers and errors."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from perturb_jax.runtime import checkpoint
from torch_fixtures import random_torch_model
from perturb_jax.runtime.convert_weights import ConversionError, convert_file, convert_state_dict, read_state_dict
from perturb_jax.runtime.vgg import VGG19_CFG

PARITY_RELUS = tuple(range(1, 17))
TOLERANCE = 1e-5
_SAFETENSORS_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(ml_dtypes.bfloat16): "BF16",
                      np.dtype(np.int64): "I64"}


def write_safetensors(path, arrays: dict):
    """Writes ``arrays`` in the safetensors layout: u64 LE header size, JSON header, raw little-endian bytes."""
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        header[name] = {"dtype": _SAFETENSORS_NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        chunks.append(a.tobytes())
        offset += a.nbytes
    head = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(chunks))


def numpy_state_dict(model) -> dict:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def save_state_dict(model, path):
    """Writes the model's state_dict as .pth (torch.save), .npz or .safetensors, by the suffix of ``path``."""
    if str(path).endswith(".pth"):
        import torch

        torch.save(model.state_dict(), path)
    elif str(path).endswith(".npz"):
        np.savez(path, **numpy_state_dict(model))
    else:
        write_safetensors(path, numpy_state_dict(model))


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def max_rel_diffs(torch_model, jax_model, size, seed=1) -> dict:
    """{'logits' or relu number: max|jax - torch| / max|torch|} for one random image of ``size`` x ``size``."""
    import torch

    from benchmarks.references.torch_reference import forward_with_relus

    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        t_logits, t_acts = forward_with_relus(torch_model, x, PARITY_RELUS)
    with jax.default_matmul_precision("highest"):
        j_logits, j_acts = jax_model(jnp.asarray(x.permute(0, 2, 3, 1).numpy()), PARITY_RELUS)
    out = {"logits": rel_diff(j_logits, t_logits.numpy())}
    for n in PARITY_RELUS:
        assert float(t_acts[n].abs().max()) > 0, f"relu {n} is all zero; the comparison would be vacuous"
        out[n] = rel_diff(j_acts[n], t_acts[n].permute(0, 2, 3, 1).numpy())
    return out


def check_parity(tmp_path, fmt, num_classes, width_divisor, sizes):
    torch_model = random_torch_model(num_classes, width_divisor)
    source = tmp_path / f"vgg19_bn.{fmt}"
    save_state_dict(torch_model, source)
    out = tmp_path / "ckpt"
    assert convert_file(str(source), str(out)) == (num_classes, width_divisor)
    with open(out / "model.json") as f:
        assert json.load(f)["provenance"] == f"converted from vgg19_bn.{fmt}"
    jax_model = checkpoint.load_model(str(out))
    for size in sizes:
        diffs = max_rel_diffs(torch_model, jax_model, size)
        print(f"{fmt} width_divisor={width_divisor} {size}x{size}: max rel diff {max(diffs.values()):.2e} "
              f"(logits {diffs['logits']:.2e})")
        assert max(diffs.values()) <= TOLERANCE, (size, diffs)


@pytest.mark.parametrize("fmt", ["pth", "npz", "safetensors"])
def test_parity_narrow(tmp_path, fmt):
    """224x224 (adaptive pool is the identity) and 100x100 (a 3x3 map pooled up to 7x7), width / 8."""
    check_parity(tmp_path, fmt, num_classes=10, width_divisor=8, sizes=(224, 100))


@pytest.mark.slow
def test_parity_full_width(tmp_path):
    """The full-size network through a 550 MB .pth (40-65 s on 2 busy CPU cores, hence slow)."""
    check_parity(tmp_path, "pth", num_classes=1000, width_divisor=1, sizes=(224, 160))


@pytest.fixture(scope="module")
def state_dict():
    """A random width / 8, 10-class state_dict as torchvision lays it out, num_batches_tracked included; no torch."""
    rng = np.random.default_rng(0)
    sd, index, c_in = {}, 0, 3
    for v in VGG19_CFG:
        if v == "M":
            index += 1
            continue
        c_out = v // 8
        sd[f"features.{index}.weight"] = rng.normal(size=(c_out, c_in, 3, 3)).astype(np.float32)
        sd[f"features.{index}.bias"] = rng.normal(size=c_out).astype(np.float32)
        for name in ("weight", "bias", "running_mean", "running_var"):
            sd[f"features.{index + 1}.{name}"] = rng.uniform(0.5, 1.5, size=c_out).astype(np.float32)
        sd[f"features.{index + 1}.num_batches_tracked"] = np.array(5, np.int64)
        index, c_in = index + 3, c_out
    for i, (n_in, n_out) in zip((0, 3, 6), ((c_in * 49, 512), (512, 512), (512, 10))):
        sd[f"classifier.{i}.weight"] = rng.normal(size=(n_out, n_in)).astype(np.float32)
        sd[f"classifier.{i}.bias"] = rng.normal(size=n_out).astype(np.float32)
    return sd


def test_num_batches_tracked_ignored(state_dict):
    assert any(k.endswith("num_batches_tracked") for k in state_dict)
    with_counts, classes, divisor = convert_state_dict(state_dict)
    without = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    jax.tree.map(np.testing.assert_array_equal, with_counts, convert_state_dict(without)[0])
    assert (classes, divisor) == (10, 8)


def test_layout_matches_model_state(state_dict):
    from flax import nnx

    from perturb_jax.runtime.vgg import VGG19BN

    pure, classes, divisor = convert_state_dict(state_dict)
    abstract = checkpoint.model_state(nnx.eval_shape(lambda: VGG19BN(classes, divisor, rngs=nnx.Rngs(0))))
    assert jax.tree.structure(pure) == jax.tree.structure(abstract)
    assert jax.tree.map(np.shape, pure) == jax.tree.map(np.shape, abstract)
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(pure))


def test_missing_keys(state_dict):
    sd = {k: v for k, v in state_dict.items() if k not in ("features.3.bias", "classifier.3.weight")}
    with pytest.raises(ConversionError, match=r"^weights.npz: missing keys: classifier.3.weight, features.3.bias$"):
        convert_state_dict(sd, source="weights.npz")


def test_extra_keys(state_dict):
    with pytest.raises(ConversionError, match=r"^weights.npz: unexpected keys: classifier.7.weight$"):
        convert_state_dict({**state_dict, "classifier.7.weight": np.zeros((2, 2))}, source="weights.npz")


def test_wrong_shape(state_dict):
    sd = {**state_dict, "features.1.running_var": np.ones(5, np.float32)}
    with pytest.raises(ConversionError, match=r"weights.npz: .*features.1.running_var expected \[8\] got \[5\]") as e:
        convert_state_dict(sd, source="weights.npz")
    assert "\n" not in str(e.value)


def test_sizes_given_must_match(state_dict):
    with pytest.raises(ConversionError, match=r"classifier.6.weight expected \[1000, 512\] got \[10, 512\]"):
        convert_state_dict(state_dict, num_classes=1000)
    with pytest.raises(ConversionError, match=r"features.0.weight expected \[64, 3, 3, 3\] got \[8, 3, 3, 3\]"):
        convert_state_dict(state_dict, width_divisor=1)


def test_safetensors_half_precision(tmp_path):
    values = np.array([[1.5, -2.25], [0.0, 3.0]], np.float32)
    path = tmp_path / "half.safetensors"
    write_safetensors(path, {"a": values.astype(np.float16), "b": values.astype(ml_dtypes.bfloat16),
                             "c": values, "n": np.array(7, np.int64)})
    got = read_state_dict(str(path))
    for k in "abc":
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], values)
    assert got["n"] == 7


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pth"])
def test_corrupt_file(tmp_path, suffix):
    if suffix == ".pth":
        pytest.importorskip("torch")
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 64)
    with pytest.raises(ConversionError, match="^" + re.escape(f"{path}: ")) as e:
        read_state_dict(str(path))
    assert "\n" not in str(e.value)


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "short.safetensors"
    write_safetensors(path, {"features.0.weight": np.zeros((8, 3, 3, 3), np.float32)})
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ConversionError, match=r"features.0.weight has data_offsets"):
        read_state_dict(str(path))


def test_pth_without_torch(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"anything")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError.
    with pytest.raises(ConversionError, match=r"pip install -e \.\[torch\]"):
        read_state_dict(str(path))


_NO_TORCH_SCRIPT = """
import sys
from perturb_jax.runtime import convert_weights
argv = ["convert_weights", "--torch_checkpoint=" + sys.argv[1], "--out=" + sys.argv[2]]
convert_weights.define_flags()
convert_weights.FLAGS(argv)
convert_weights.main(argv[:1])
print("torch imported:", "torch" in sys.modules)
"""


def test_npz_cli_does_not_import_torch(tmp_path, state_dict):
    path = tmp_path / "weights.npz"
    np.savez(path, **state_dict)
    run = subprocess.run([sys.executable, "-c", _NO_TORCH_SCRIPT, str(path), str(tmp_path / "ckpt")],
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    assert run.returncode == 0, run.stderr
    assert "torch imported: False" in run.stdout
    model = checkpoint.load_model(str(tmp_path / "ckpt"))
    np.testing.assert_array_equal(model.bns[0].var.value, state_dict["features.1.running_var"])


def test_cli_error_is_one_line(tmp_path, state_dict):
    path = tmp_path / "weights.npz"
    np.savez(path, **{k: v for k, v in state_dict.items() if k != "features.50.running_mean"})
    run = subprocess.run([sys.executable, "-m", "perturb_jax.runtime.convert_weights", f"--torch_checkpoint={path}",
                          f"--out={tmp_path / 'ckpt'}"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == f"convert_weights: {path}: missing keys: features.50.running_mean"
    assert not (tmp_path / "ckpt").exists()


def test_torch_perceptual_ball_runs_max_iter_steps():
    """With zero tolerances the reference optimiser takes exactly max_iter L-BFGS steps, one evaluation each."""
    torch = pytest.importorskip("torch")
    from benchmarks.references.torch_reference import perceptual_ball, perceptual_ball_loss

    model = random_torch_model(10, 8)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([3, 7])
    x_adv, evaluations = perceptual_ball(model, x, target, max_iter=4, tolerance_grad=0.0, tolerance_change=0.0)
    assert evaluations == 4 and x_adv.shape == x.shape and not x_adv.requires_grad
    with torch.no_grad():
        before = perceptual_ball_loss(model, x, x, target)
        after = perceptual_ball_loss(model, x_adv, x, target)
    assert before.shape == (2,) and float(after.sum()) < float(before.sum())
