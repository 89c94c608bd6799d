"""The gradient (Simonyan, Vedaldi, Zisserman 2014): max over channels of |dC_t/dx| (Captum ``Saliency``, abs=True,
then TorchRay's channel reduction)."""

from perturb_jax.methods import common


def explain(model, images, targets, key, options):
    del key, options
    return {"saliency": common.max_abs_over_channels(common.input_gradient(model, images, targets))}


METHOD = common.Method("gradient", explain, {}, "Simonyan et al. 2014; Captum Saliency")
