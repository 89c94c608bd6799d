"""A torch VGG19_bn replica with random weights and batch-norm statistics, for the parity and job tests."""

import pytest


def random_torch_model(num_classes, width_divisor, seed=0):
    """The torch replica in eval mode with random weights, biases and non-trivial batch-norm statistics."""
    torch = pytest.importorskip("torch")
    from benchmarks.references.torch_reference import TorchVGG19BN

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


def paired_models(num_classes, width_divisor, seed=0):
    """(torch replica, the same network as a JAX ``VGG19BN``): identical weights and batch-norm statistics."""
    from perturb_jax.runtime import convert_weights

    torch_model = random_torch_model(num_classes, width_divisor, seed)
    state_dict = {k: v.numpy().copy() for k, v in torch_model.state_dict().items()}  # no memory shared
    pure, n, d = convert_weights.convert_state_dict(state_dict, num_classes, width_divisor)
    return torch_model, convert_weights.build_model(pure, n, d)


def run_method(name, jax_model, images_nchw, targets, key_seed=0, chunk_size=64, **options):
    """Our method ``name`` on NCHW float images (as torch takes them) -> its outputs as numpy, maps (B, H, W)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from perturb_jax import methods

    method = methods.get(name)
    opts = {k: o.default for k, o in method.options.items()} | {"chunk_size": chunk_size} | options
    graphdef, state = nnx.split(jax_model)
    fn = methods.make_fn(name, graphdef, opts)
    images = jnp.asarray(np.asarray(images_nchw).transpose(0, 2, 3, 1))
    out = fn(state, images, jnp.asarray(np.asarray(targets), jnp.int32), jax.random.key(key_seed))
    return {k: np.asarray(v) for k, v in out.items()}
