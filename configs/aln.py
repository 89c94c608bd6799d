"""Adversarial Localization Network (Fan, Zhao, Ermon): corruption network and classifier trained adversarially.

  python -m aln_jax.main --config=configs/aln.py --workdir=/tmp/aln
  python -m aln_jax.main --config=configs/aln.py:tiny --workdir=/tmp/aln_tiny
  python -m aln_jax.main --config=configs/aln.py:imagenet --workdir=/tmp/aln_imagenet \
      --config.data.manual_dir=$HOME/imagenet --config.data.boxes=$HOME/imagenet/ILSVRC2012_bbox_val_v3.tgz \
      --config.eval.strong_checkpoint=$HOME/vgg19_bn_flax
"""

from aln_jax import config as base


def get_config(arg=None):
    # The argument after ':' picks comma-separated variants (aln_jax/config.py: 'paper', 'plain', 'tiny', 'imagenet');
    # '' is our variant that localises on the embedded benchmark. The Sec. 3.4 ablation:
    # --config.train.freeze_classifier=true.
    return base.get_config(arg or "")
