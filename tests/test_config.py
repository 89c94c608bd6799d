"""Configs: variants, command-line overrides, a misspelt key, and one-line errors for bad values."""

import json
import os
import runpy
import subprocess
import sys

import ml_collections
import pytest

import eval.datasets
from perturb_jax.explain import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_PARSE = """
import json, sys
from absl import flags
from ml_collections import config_flags
config_flags.DEFINE_config_file("config", None, "", lock_config=True)
try:
    flags.FLAGS(sys.argv)
except Exception as e:
    print("ERROR", type(e).__name__, e)
else:
    print(flags.FLAGS.config.to_json())
"""


def _parse(argv):
    """Parses ``argv`` as the command line of a fresh process would (config_flags registers overrides globally)."""
    out = subprocess.run([sys.executable, "-c", _PARSE] + argv, capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout.strip().splitlines()[-1]
    if out.startswith("ERROR"):
        raise ValueError(out)
    return ml_collections.ConfigDict(json.loads(out))


def test_guided_and_unguided_match_the_paper():
    guided = _parse([f"--config={ROOT}/configs/guided.py"])
    unguided = _parse([f"--config={ROOT}/configs/unguided.py"])
    g, u = guided.method.perceptual_ball, unguided.method.perceptual_ball
    assert g.relu_layers == list(range(2, 14)) and g.guided
    assert u.relu_layers == [5, 6, 7, 8, 9, 10] and not u.guided
    for p in (g, u):
        assert (p.lam_perceptual, p.lam_pixel, p.target_margin, p.max_steps) == (1e4, 1.0, -2.0, 30)
    for name in ("guided", "unguided"):
        config_lib.validate(runpy.run_path(f"{ROOT}/configs/{name}.py")["get_config"]())


def test_overrides_and_variants():
    c = _parse([f"--config={ROOT}/configs/guided.py:imagenet", "--config.method.perceptual_ball.lam_perceptual=1000",
                "--config.method.perceptual_ball.relu_layers=(5,6)", "--config.data.manual_dir=/data/imagenet"])
    p = c.method.perceptual_ball
    assert p.lam_perceptual == 1000 and p.relu_layers == [5, 6] and p.max_steps == 100  # ImageNet: the authors' 100
    assert c.data.name == "imagenet2012" and c.data.eval_split == "validation[:1000]"
    assert c.data.manual_dir == "/data/imagenet" and c.model.checkpoint == ""


def test_misspelt_key_fails():
    with pytest.raises(ValueError, match='Did you mean "lam_perceptual"'):
        _parse([f"--config={ROOT}/configs/guided.py", "--config.method.perceptual_ball.lam_perceptul=1000"])


@pytest.mark.parametrize("field,value,message", [
    ("method.perceptual_ball.relu_layers", (0, 5), r"config.method.perceptual_ball.relu_layers: must be >= 1"),
    ("method.perceptual_ball.relu_layers", (17,), r"config.method.perceptual_ball.relu_layers: must be <= 16"),
    ("method.perceptual_ball.relu_layers", (2.5,), r"config.method.perceptual_ball.relu_layers: must be of type"),
    ("method.perceptual_ball.relu_layers", (), "config.method.perceptual_ball.relu_layers: must be of type tuple"),
    ("method.perceptual_ball.lam_perceptual", -1.0, "config.method.perceptual_ball.lam_perceptual: must be >= 0"),
    ("method.perceptual_ball.lam_pixel", -0.5, "config.method.perceptual_ball.lam_pixel: must be >= 0"),
    ("method.perceptual_ball.optimizer", "sgd", "config.method.perceptual_ball.optimizer: must be one of"),
    ("protocol.value_alphas", (0.5, 1.5), r"config.protocol.value_alphas: every alpha must be in \[0, 1.0\]"),
    ("protocol.mean_alphas", (-1.0,), "config.protocol.mean_alphas: every alpha must be >= 0"),
    ("batch_size", 0, "config.batch_size: 0 does not divide"),
    ("data.tune_split", "validation[1200:1300]", "config.data.tune_split: .* overlaps"),
])
def test_bad_values_fail_in_one_line(field, value, message):
    c = config_lib.get_config()
    *path, key = field.split(".")
    group = c
    for part in path:
        group = group[part]
    group[key] = value
    with pytest.raises(config_lib.ConfigError, match=message) as e:
        config_lib.validate(c)
    assert "\n" not in str(e.value)


def test_batch_that_does_not_divide_over_devices_fails_before_compiling():
    """Two forced CPU devices: an odd batch size is refused by name."""
    code = ("from perturb_jax.explain import config as c; cfg = c.get_config(); cfg.batch_size = 3\n"
            "try:\n    c.validate(cfg)\nexcept c.ConfigError as e:\n    print(e)")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == ("config.batch_size: 3 does not divide over the 2 devices; use a multiple of 2")


def test_unknown_variant():
    with pytest.raises(config_lib.ConfigError, match="variant 'imagenett' is unknown"):
        config_lib.get_config("imagenett")


def test_unknown_variant_on_the_command_line_is_its_own_one_line_error():
    """config_flags wraps the variant's ConfigError in a traceback; the command line shows the error alone."""
    from aln_jax import config as aln_config

    commands = {
        ("aln_jax.main", "configs/aln.py:tinyy"): f"error: config variant 'tinyy' is unknown; known: "
                                                  f"{sorted(aln_config.VARIANTS)} (comma-separated)",
        ("perturb_jax.main", "configs/guided.py:bogus"): "error: config variant 'bogus' is unknown; known: ['', "
                                                         "'cub', 'folder', 'imagenet', 'tiny']",
    }
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = {key: subprocess.Popen([sys.executable, "-m", key[0], f"--config={key[1]}", "--workdir=/tmp/x"], cwd=ROOT,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for key in commands}
    for key, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert err.strip().splitlines()[-1] == commands[key]
        assert "Traceback" not in err


def test_builder_config_must_be_one_of_the_dataset():
    c = config_lib.get_config()
    c.data.builder_config = "plainn"
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(c)
    assert str(e.value) == ("config.data.builder_config: clutter_shapes has no config 'plainn'; use one of "
                            "['default', 'plain', 'tiny']")
    c.data.builder_config, c.data.name, c.data.manual_dir, c.data.boxes = "default", "imagenet2012", "/i", "/b"
    with pytest.raises(config_lib.ConfigError, match=r"^config.data.builder_config: imagenet2012 has no builder "
                                                     r"configs, got 'default'; leave it empty"):
        config_lib.validate(c)
    for variant in ("", "tiny", "imagenet", "cub", "folder"):
        eval.datasets.check_builder_config(config_lib.get_config(variant).data)
    c.data.builder_config = ""
    eval.datasets.check_builder_config(c.data)


def _set(c, field, value):
    *path, leaf = field.split(".")
    for part in path:
        c = c[part]
    c[leaf] = value


@pytest.mark.parametrize("field,value,message", [
    ("methods", ("gradient", "lime"), r"config.methods: \('gradient', 'lime'\) must name each method once, from "
                                      r"perceptual_ball, gradient, .*, occlusion"),
    ("methods", ("gradient", "gradient"), "config.methods: .* must name each method once"),
    ("methods", (), "config.methods: .* must name each method once"),
    ("chunk_size", 0, r"config.chunk_size: must be an integer >= 1 \(network evaluations per pass\), got 0"),
    ("chunk_size", -5, "config.chunk_size: must be an integer >= 1"),
    ("method.grad_cam.layer", "features.99", "config.method.grad_cam.layer: 'features.99' is not a layer of "
                                             "VGG19_bn; accepted: features.0 to features.52"),
    ("method.grad_cam.upsample", "bicubic", r"config.method.grad_cam.upsample: must be one of \('bilinear', "
                                            r"'nearest'\), got 'bicubic'"),
    ("method.integrated_gradients.steps", 0, "config.method.integrated_gradients.steps: must be >= 1, got 0"),
    ("target", "largest", "config.target: must be one of"),
    ("protocol.given_alphas.value", 1.5, r"config.protocol.given_alphas.value: must be in \[0, 1\]"),
])
def test_bad_method_settings_fail_in_one_line(field, value, message):
    c = config_lib.get_config()
    with c.unlocked():
        _set(c, field, value)
    with pytest.raises(config_lib.ConfigError, match=message) as e:
        config_lib.validate(c)
    assert "\n" not in str(e.value)


def test_a_method_option_of_the_wrong_type_fails_in_one_line():
    """The command line refuses it by the field's type; a config edited in code, by ``validate``."""
    with pytest.raises(ValueError, match=r"--config.method.integrated_gradients.steps=2.5: invalid literal for int"):
        _parse([f"--config={ROOT}/configs/table1.py", "--config.method.integrated_gradients.steps=2.5"])
    c = config_lib.get_config()
    c.method.smoothgrad = ml_collections.ConfigDict({"samples": 50, "noise_level": "high"})
    with pytest.raises(config_lib.ConfigError, match=r"config.method.smoothgrad.noise_level: must be of type float "
                                                     r"\(like the default 0.15\), got 'high'"):
        config_lib.validate(c)


def test_every_method_is_in_table1_with_the_reference_defaults():
    c = _parse([f"--config={ROOT}/configs/table1.py:imagenet", "--config.methods=gradient,rise",
                "--config.method.rise.num_masks=4000"])
    assert config_lib.method_names(c.methods) == ("gradient", "rise") and c.method.rise.num_masks == 4000
    assert config_lib.method_names(["(gradient, rise)"]) == config_lib.method_names(("gradient", "rise"))
    from perturb_jax import methods
    table1 = runpy.run_path(f"{ROOT}/configs/table1.py")["get_config"]("imagenet")
    assert tuple(table1.methods) == methods.NAMES
    assert (table1.method.integrated_gradients.steps, table1.method.rise.num_masks, table1.method.rise.num_cells,
            table1.method.rise.p) == (50, 8000, 7, 0.5)
    assert (tuple(table1.method.extremal_perturbation.areas), table1.method.extremal_perturbation.iterations) == (
        (0.025, 0.05, 0.1, 0.2), 800)
    assert (table1.method.deepfool.overshoot, table1.method.deepfool.steps, table1.method.deepfool.candidates) == (
        0.02, 50, 10)
    for variant in ("", "imagenet", "cub", "tiny"):
        c = runpy.run_path(f"{ROOT}/configs/table1.py")["get_config"](variant)
        if variant in ("", "tiny"):
            config_lib.validate(c)
