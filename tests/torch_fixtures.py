"""A torch VGG19_bn replica with random weights and batch-norm statistics, for the parity and job tests."""

import pytest


def random_torch_model(num_classes, width_divisor, seed=0):
    """The torch replica in eval mode with random weights, biases and non-trivial batch-norm statistics."""
    torch = pytest.importorskip("torch")
    from perturb_jax.torch_reference import TorchVGG19BN

    torch.manual_seed(seed)
    model = TorchVGG19BN(num_classes, width_divisor).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(123)
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.bias.normal_(0.0, 0.05)
    return model
