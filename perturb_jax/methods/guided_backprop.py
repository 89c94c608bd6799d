"""Guided backpropagation (Springenberg et al. 2015): the input gradient with every ReLU passing back only positive
gradients at positive inputs (Captum ``GuidedBackprop``); max |.| over channels."""

from perturb_jax.methods import common


def explain(model, images, targets, key, options):
    del key, options
    grad = common.input_gradient(model, images, targets, backward="guided")
    return {"saliency": common.max_abs_over_channels(grad)}


METHOD = common.Method("guided_backprop", explain, {}, "Springenberg et al. 2015; Captum GuidedBackprop")
