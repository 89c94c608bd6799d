"""Perceptual ball, unguided variant (paper Sec. 3; the authors' default layers): ReLU layers 5-10.

  python -m perturb_jax.main --config=configs/unguided.py --workdir=/tmp/unguided
  python -m perturb_jax.main --config=configs/unguided.py:imagenet --workdir=/tmp/unguided_imagenet \
      --config.data.manual_dir=$HOME/imagenet --config.data.boxes=$HOME/imagenet/ILSVRC2012_bbox_val_v3.tgz \
      --config.model.checkpoint=$HOME/vgg19_bn_flax

The argument after ':' picks the data (see perturb_jax/explain/config.py: '', 'imagenet', 'cub', 'folder', 'tiny').
"""

from perturb_jax.explain import config as base


def get_config(arg=None):
    c = base.get_config(arg or "")
    c.method.perceptual_ball.relu_layers = tuple(range(5, 11))
    c.method.perceptual_ball.guided = False
    return c
