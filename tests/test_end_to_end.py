"""The end-to-end comparison (ours against the authors' torch procedure) on a few embedded images."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import end_to_end
from perturb_jax.explain import results_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_head_cuts_the_configs_splits():
    assert end_to_end.head("validation[:200]", 2, "num_tune") == "validation[:2]"
    assert end_to_end.head("validation[1000:1500]", 500, "num_eval") == "validation[1000:1500]"
    with pytest.raises(end_to_end.UsageError, match="--num_eval must be in"):
        end_to_end.head("validation[1000:1500]", 501, "num_eval")


def test_refuses_a_non_empty_workdir(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "old").write_text("")
    with pytest.raises(end_to_end.UsageError, match="--workdir .* is not empty"):
        end_to_end.run(str(tmp_path), str(tmp_path / "out.json"), 2, 3, 2, 2)


# 30-50 s on two shared cores: two interpreters' imports, one XLA compilation, torch on five images.
def test_command_writes_table_and_json(tmp_path):
    pytest.importorskip("torch")
    work, out = tmp_path / "work", tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.end_to_end", f"--workdir={work}", f"--out={out}",
                           "--num_tune=2", "--num_eval=3", "--torch_steps=2", "--jax_steps=2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| procedure | images |" in proc.stdout and "| authors (torch LBFGS.step) | 5 |" in proc.stdout
    result = json.loads(out.read_text())
    assert result["splits"] == {"tune": "validation[:2]", "eval": "validation[1000:1003]"}
    assert result["table"] in proc.stdout
    ours, authors = result["results"]
    for row, limit in ((ours, 2), (authors, 2)):
        summary = row["summary"]
        assert row["images"] == 5 and summary["num_images"]["tune"] == 2 and summary["num_images"]["eval"] == 3
        assert 1 <= row["mean_steps"] <= row["max_steps_taken"] <= limit
        assert 0 < row["explain_s"] <= row["whole_s"] and row["images_per_s"] > 0
        errors = summary["localisation_error"][summary["methods"][0]]
        for strategy in ("value", "mean", "energy", "best"):
            assert 0 <= errors[strategy]["eval_error"] <= 1
        assert summary["failed_images"] == {"perceptual_ball_guided": [], "gradient": []}
        assert (work / os.path.basename(row["workdir"]) / "table.md").stat().st_size > 0
    assert sorted(os.listdir(work)) == ["jax", "torch"]
    assert sorted(os.listdir(work / "torch" / "maps")) == ["eval_00000.npz", "gradient", "perceptual_ball",
                                                           "tune_00000.npz"]
    # Same images, same classifier, same steps (one iteration each): the same batch files, the same maps.
    for split in ("tune", "eval"):
        ours, authors = (results_store.read_split(str(work / name), split, ["perceptual_ball", "gradient"])
                         for name in ("jax", "torch"))
        assert sorted(ours) == sorted(authors)
        for key in ("image_id", "label", "predicted", "target", "perceptual_ball/steps", "perceptual_ball/failed",
                    "gradient/failed"):
            np.testing.assert_array_equal(ours[key], authors[key], err_msg=key)
        for key in ("perceptual_ball/saliency", "gradient/saliency", "perceptual_ball/margin",
                    "perceptual_ball/margin_adv", "perceptual_ball/loss"):
            assert ours[key].dtype == authors[key].dtype, key
            np.testing.assert_allclose(authors[key], ours[key], rtol=1e-3, atol=1e-4 * np.abs(ours[key]).max(),
                                       err_msg=key)
