"""Trains the embedded classifier: VGG19_bn with widths / 8 on the clutter_shapes benchmark.

The shipped checkpoint (perturb_jax/assets/clutter_shapes_vgg19bn_w8) was made by

  python -m perturb_jax.train_classifier --config=configs/classifier.py --workdir=/tmp/classifier \
      --config.export_dir=perturb_jax/assets/clutter_shapes_vgg19bn_w8

Variant ``tiny`` trains a few steps on the tiny builder config (used by the tests).
"""

import ml_collections


def get_config(variant=None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_classes = 10
    c.width_divisor = 8
    c.data = ml_collections.ConfigDict()
    c.data.name = "clutter_shapes"
    c.data.builder_config = "default"
    c.data.data_dir = ""
    c.mean = (0.5, 0.5, 0.5)
    c.std = (0.25, 0.25, 0.25)
    c.batch_size = 128
    c.num_epochs = 24
    c.augment = "dihedral"  # random transposition and flips; "none" trains on the images as they are.
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.warmup_steps = 300
    c.export_dir = ""  # where the final model goes (default: WORKDIR/model).
    if variant == "tiny":
        c.data.builder_config = "tiny"
        c.batch_size = 16
        c.num_epochs = 1
        c.warmup_steps = 1
    elif variant:
        raise ValueError(f"unknown classifier config variant {variant!r}; known: '', 'tiny'")
    return c
