"""Trains the embedded classifier: VGG19_bn with widths / 8 on the clutter_shapes benchmark.

The shipped checkpoint (perturb_jax/assets/clutter_shapes_vgg19bn_w8) was made by

  python -m perturb_jax.train_classifier --config=configs/classifier.py --workdir=/tmp/classifier \
      --config.export_dir=perturb_jax/assets/clutter_shapes_vgg19bn_w8

Variant ``tiny`` trains a few steps on the tiny builder config (used by the tests).
"""

from perturb_jax import train_classifier


def get_config(arg=None):
    return train_classifier.get_config(arg or "")
