"""Guided Grad-CAM (Selvaraju et al. 2017, Sec. 3.1): guided backpropagation times the upsampled Grad-CAM map,
per channel (Captum ``GuidedGradCam``), then max |.| over channels."""

from perturb_jax.methods import common, grad_cam

OPTIONS = {
    "layer": grad_cam.OPTIONS["layer"],
    "upsample": common.Option("bilinear", "Selvaraju et al.'s code (bilinear); Captum GuidedGradCam's default is "
                              "nearest", choices=common.UPSAMPLE_MODES),
}


def explain(model, images, targets, key, options):
    del key
    cam = grad_cam.grad_cam(model, images, targets, options["layer"], options["upsample"])
    guided = common.input_gradient(model, images, targets, backward="guided")
    return {"saliency": common.max_abs_over_channels(guided * cam[..., None])}


METHOD = common.Method("guided_grad_cam", explain, OPTIONS, "Selvaraju et al. 2017; Captum GuidedGradCam")
