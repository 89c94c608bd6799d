"""PyTorch reference: torchvision's ``vgg19_bn`` rebuilt from scratch (the module layout, hence every ``state_dict``
key, matches torchvision's; tensors are NCHW) and the authors' perceptual-ball optimiser (one ``LBFGS.step``).
Needs torch (``pip install -e .[torch]``). Not run on its own: the parity tests and the benchmarks import it.

    python -m pytest tests/test_convert_weights.py tests/test_benchmark.py
    python -m benchmarks.explainer_vs_torch --models=embedded --batch_sizes_embedded=1
"""

from typing import Iterable, Optional

import torch
from torch import nn

from perturb_jax.runtime.vgg import RELU_TO_TORCH_INDEX, VGG19_CFG

DEFAULT_RELU_LAYERS = (5, 6, 7, 8, 9, 10)


class TorchVGG19BN(nn.Module):
    """torchvision ``vgg19_bn`` (``features``, ``avgpool``, ``classifier``), every width divided by ``width_divisor``."""

    def __init__(self, num_classes: int = 1000, width_divisor: int = 1, dropout: float = 0.5):
        super().__init__()
        layers, c_in = [], 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                c_out = v // width_divisor
                layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.BatchNorm2d(c_out),
                           nn.ReLU(inplace=False)]
                c_in = c_out
        hidden = 4096 // width_divisor
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(c_in * 49, hidden), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))
        for m in self.modules():  # torchvision's initialisation.
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def forward_with_relus(model: TorchVGG19BN, x: torch.Tensor, relu_layers: Iterable[int] = ()):
    """Returns (logits, {relu number (1-based): output of ``model.features[RELU_TO_TORCH_INDEX[n]]``})."""
    wanted = {RELU_TO_TORCH_INDEX[n]: n for n in relu_layers}
    acts = {}
    for index, layer in enumerate(model.features):
        x = layer(x)
        if index in wanted:
            acts[wanted[index]] = x
    x = model.avgpool(x)
    return model.classifier(torch.flatten(x, 1)), acts


def _margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """M_t = C_t - max_{j != t} C_j per image."""
    onehot = nn.functional.one_hot(target, logits.shape[1]).bool()
    own = logits.gather(1, target[:, None])[:, 0]
    return own - logits.masked_fill(onehot, float("-inf")).amax(1)


def perceptual_ball_loss(model: TorchVGG19BN, x_adv: torch.Tensor, x: torch.Tensor, target: torch.Tensor, *,
                         relu_layers: Iterable[int] = DEFAULT_RELU_LAYERS, lam_perceptual: float = 1e4,
                         lam_pixel: float = 1.0, value: float = -2.0,
                         x_features: Optional[dict] = None) -> torch.Tensor:
    """Per-image loss, shape (B,): (M_t(x') - T)^2 + lam_perceptual * sum_l mean((C_l(x') - C_l(x))^2)
    + lam_pixel * mean((x' - x)^2); ``x_features`` are the ReLU outputs of ``x`` if already computed."""
    relu_layers = tuple(relu_layers)
    if x_features is None:
        with torch.no_grad():
            _, x_features = forward_with_relus(model, x, relu_layers)
    logits, feats = forward_with_relus(model, x_adv, relu_layers)
    loss = (_margin(logits, target) - value) ** 2
    for n in relu_layers:
        loss = loss + lam_perceptual * ((feats[n] - x_features[n]) ** 2).flatten(1).mean(1)
    return loss + lam_pixel * ((x_adv - x) ** 2).flatten(1).mean(1)


def perceptual_ball(model: TorchVGG19BN, x: torch.Tensor, target: Optional[torch.Tensor] = None, *,
                    relu_layers: Iterable[int] = DEFAULT_RELU_LAYERS, lam_perceptual: float = 1e4,
                    lam_pixel: float = 1.0, value: float = -2.0, max_iter: int = 100, history_size: int = 100,
                    tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9):
    """The authors' optimiser: one ``torch.optim.LBFGS(lr=1, line_search_fn=None).step`` from x' = x.

    The loss is summed over the batch, so each image gets its own gradient; L-BFGS's step scaling and curvature
    history are still shared by the batch, so only a batch of one reproduces a per-image optimiser exactly.
    ``target`` defaults to the predicted class. Puts ``model`` in eval mode. Returns (x', number of closure evaluations); with both tolerances 0 the
    step runs exactly ``max_iter`` iterations, one evaluation each.
    """
    model.eval()
    relu_layers = tuple(relu_layers)
    x = x.detach()
    with torch.no_grad():
        logits, x_features = forward_with_relus(model, x, relu_layers)
    if target is None:
        target = logits.argmax(1)
    x_adv = x.clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([x_adv], lr=1, max_iter=max_iter, history_size=history_size,
                                  tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                                  line_search_fn=None)
    evaluations = 0

    def closure():
        nonlocal evaluations
        evaluations += 1
        loss = perceptual_ball_loss(model, x_adv, x, target, relu_layers=relu_layers, lam_perceptual=lam_perceptual,
                                    lam_pixel=lam_pixel, value=value, x_features=x_features).sum()
        x_adv.grad = torch.autograd.grad(loss, x_adv)[0]  # Only x' needs a gradient, not the weights.
        return loss.detach()

    optimiser.step(closure)
    return x_adv.detach(), evaluations
