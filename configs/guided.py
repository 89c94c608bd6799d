"""Perceptual ball, guided variant (paper Sec. 3): ReLU layers 2-13, lam' = 1e4, lam = 1, gradient-guided map.

  python -m perturb_jax.main --config=configs/guided.py --workdir=/tmp/guided
  python -m perturb_jax.main --config=configs/guided.py:imagenet --workdir=/tmp/guided_imagenet \
      --config.data.manual_dir=$HOME/imagenet --config.data.boxes=$HOME/imagenet/ILSVRC2012_bbox_val_v3.tgz \
      --config.model.checkpoint=$HOME/vgg19_bn_flax

The argument after ':' picks the data (see perturb_jax/explain/config.py: '', 'imagenet', 'cub', 'folder', 'tiny').
"""

from perturb_jax.explain import config as base


def get_config(arg=None):
    c = base.get_config(arg or "")
    c.method.perceptual_ball.relu_layers = tuple(range(2, 14))
    c.method.perceptual_ball.guided = True
    return c
