"""Extremal perturbations (Fong, Patrick, Vedaldi, ICCV 2019, "Understanding deep networks via extremal
perturbations and smooth masks"), as TorchRay's ``extremal_perturbation`` computes them (preservation variant,
simple reward, blur perturbation): for each area a, a smooth mask m_a maximises Phi(m_a (x) x) - lambda
||vecsort(m_a) - r_a||^2 (``extremal_masks``); the map sums the smoothed masks over areas (``explain``). Where
TorchRay and the paper differ, this follows TorchRay (``area_loss``).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from perturb_jax.methods import common

OPTIONS = {
    "areas": common.Option((0.025, 0.05, 0.1, 0.2), "TorchRay attribution benchmark (VOC 2007; its function's "
                           "default is 0.1)", minimum=0.0),
    "iterations": common.Option(800, "TorchRay (max_iter) and its benchmark", minimum=1),
    "step": common.Option(7, "TorchRay MaskGenerator (step): pixels between mask parameters", minimum=1),
    "sigma": common.Option(21.0, "TorchRay MaskGenerator (sigma): the smoothing kernel's width", minimum=1.0),
    "num_levels": common.Option(8, "TorchRay Perturbation (num_levels): blur levels", minimum=2),
    "max_blur": common.Option(20.0, "TorchRay Perturbation (max_blur): the strongest blur's sigma", minimum=0.0),
    "jitter": common.Option(True, "TorchRay (jitter): flip the image left-right on even iterations"),
    "smooth": common.Option(0.09, "TorchRay attribution benchmark (smooth, of the shorter side; the function's "
                            "default is 0)", minimum=0.0),
    "learning_rate": common.Option(0.01, "TorchRay (SGD lr)", minimum=0.0),
    "momentum": common.Option(0.9, "TorchRay (SGD momentum, with dampening equal to it)", minimum=0.0),
    "regul_weight": common.Option(300.0, "TorchRay: lambda of the area constraint at the first iteration",
                                  minimum=0.0),
    "regul_growth": common.Option(1.0035, "TorchRay: lambda's factor per iteration", minimum=0.0),
}

COLDNESS = 20.0  # TorchRay MaskGenerator: its smooth max is a softmax-weighted mean at temperature 1/20.


# ---------------------------------------------------------------------------------------------------------------
# Blur (TorchRay's imsmooth) and the perturbation pyramid.


def gaussian_taps(sigma: float) -> np.ndarray:
    """TorchRay's ``imsmooth`` kernel: exp(-i^2 / 2 sigma^2) for |i| <= ceil(4 sigma), summing to 1 (float32, as
    TorchRay computes it; sigma 0 gives the identity)."""
    sigma = np.float32(sigma)
    width = math.ceil(np.float32(4) * sigma)
    i = np.arange(-width, width + 1, dtype=np.float32)
    z = i / (np.float32(np.sqrt(2.0)) * sigma + np.finfo(np.float32).eps)
    taps = np.exp(-z * z)
    return taps / taps.sum(dtype=np.float32)


def blur_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) M with (M v)_i = sum_j taps[j - i + width] v_j: ``imsmooth`` along one axis, zero padding."""
    taps = gaussian_taps(sigma)
    width = len(taps) // 2
    offset = np.arange(size)[None, :] - np.arange(size)[:, None] + width
    return np.where(np.abs(offset - width) <= width, taps[np.clip(offset, 0, len(taps) - 1)], 0).astype(np.float32)


def pyramid_sigmas(num_levels: int, max_blur: float) -> np.ndarray:
    """sigma_l = (1 - l / (L - 1)) max_blur in float32, l = 0 (most blurred) .. L - 1 (the image), the fractions
    as ``torch.linspace(0, 1, L)`` makes them."""
    f32 = np.float32
    step = f32(1) / f32(num_levels - 1)
    idx = np.arange(num_levels, dtype=f32)
    fractions = np.where(idx < num_levels // 2, idx * step, f32(1) - (f32(num_levels - 1) - idx) * step)
    return (f32(1) - fractions) * f32(max_blur)


def blur(images: jax.Array, sigma: float) -> jax.Array:
    """TorchRay ``imsmooth(x, sigma)`` (zero padding) of NHWC images, by two band matrices."""
    _, h, w, _ = images.shape
    mh, mw = (jnp.asarray(blur_matrix(n, sigma)) for n in (h, w))
    hi = jax.lax.Precision.HIGHEST
    out = jnp.einsum("ij,bjwc->biwc", mh, images, precision=hi)
    return jnp.einsum("kw,bhwc->bhkc", mw, out, precision=hi)


def blur_maps(maps: jax.Array, sigma: float) -> jax.Array:
    """``imsmooth`` of (..., H, W) single-channel maps."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, *maps.shape[-2:], 1)
    return blur(flat, sigma).reshape(*lead, *maps.shape[-2:])


def pyramid(images: jax.Array, num_levels: int, max_blur: float) -> jax.Array:
    """(B, L, H, W, C): each image blurred with sigma_l (TorchRay ``Perturbation``, blur type; the paper's
    blur perturbation operator)."""
    return jnp.stack([blur(images, float(s)) for s in pyramid_sigmas(num_levels, max_blur)], axis=1)


def perturb(levels: jax.Array, masks: jax.Array) -> jax.Array:
    """``Perturbation.apply``: per pixel, the pyramid read at level m (L - 1) with linear interpolation between the
    two nearest levels; m = 1 keeps the pixel, 0 blurs it most. levels (B, L, H, W, C), masks (B, A, H, W) ->
    (B, A, H, W, C)."""
    num_levels = levels.shape[1]
    scaled = masks * (num_levels - 1)
    low = jax.lax.stop_gradient(jnp.floor(scaled))
    frac = (scaled - low)[..., None]
    low = low.astype(jnp.int32)[..., None]
    high = jnp.minimum(low + 1, num_levels - 1)
    lv = levels[:, None]  # (B, 1, L, H, W, C)
    y0 = sum(jnp.where(low == l, lv[:, :, l], 0.0) for l in range(num_levels))
    y1 = sum(jnp.where(high == l, lv[:, :, l], 0.0) for l in range(num_levels))
    return (1 - frac) * y0 + frac * y1


# ---------------------------------------------------------------------------------------------------------------
# Smooth masks (TorchRay's MaskGenerator).


@dataclasses.dataclass(frozen=True)
class MaskGeometry:
    """TorchRay ``MaskGenerator``'s sizes for an (H, W) image: parameters on a ``shape_in`` grid, one every
    ``step`` pixels; each output pixel pools the (2 radius + 1)^2 nearest parameters; the full mask has a margin
    of ``sigma`` pixels and ``shape_out`` pixels a side (the area constraint sorts it); ``crop`` is its offset."""

    shape: tuple[int, int]
    step: int
    sigma: float

    @property
    def padding(self) -> int:
        return 1 + math.ceil(2 * self.sigma / self.step)  # TorchRay: margin = sigma, padding 1 + (margin + sigma)

    @property
    def radius(self) -> int:
        return 1 + math.ceil(self.sigma / self.step)

    @property
    def shape_in(self) -> tuple[int, int]:
        return tuple(math.ceil(z / self.step) for z in self.shape)

    @property
    def shape_mid(self) -> tuple[int, int]:
        return tuple(z + 2 * self.padding - 2 * self.radius for z in self.shape_in)

    @property
    def shape_out(self) -> tuple[int, int]:
        return tuple(self.step * z - self.step + 1 for z in self.shape_mid)

    @property
    def crop(self) -> int:
        return round(self.sigma)

    def kernel_table(self) -> np.ndarray:
        """(step, step, K, K), K = 2 radius + 1: the weight k(|u - c| / sigma) = exp(-2 max(0, d / sigma - 1/2)^2)
        of parameter (ky, kx) around the cell of output pixel u at offset (ry, rx) inside its cell. TorchRay
        tabulates it for every output pixel; it depends only on these four indices, since output pixel
        u = step c + r reads parameter c + k - padding whose centre is at margin + step (c + k - padding)."""
        f32 = np.float32
        r = np.arange(self.step, dtype=f32)
        k = np.arange(2 * self.radius + 1, dtype=f32)
        u = f32(self.step) * f32(self.padding) + r  # any cell c gives the same differences; c = padding here
        d = u[:, None] - (f32(self.sigma) + f32(self.step) * k[None, :])  # (r, k)
        dist = np.sqrt(d[:, None, :, None] ** 2 + d[None, :, None, :] ** 2)  # (ry, rx, ky, kx)
        z = np.maximum(dist / f32(self.sigma) - f32(0.5), f32(0))
        return np.exp(f32(-2) * z * z).astype(f32)

    def check(self) -> None:
        """TorchRay finds an output pixel's cell as floor(float32(1 / step) * u); the cell table above assumes it
        is u // step, true for every step unless float32 rounds 1 / step down far enough to matter."""
        n = self.step * max(self.shape_mid)
        inv = np.float32(self.shape_mid[0]) / np.float32(self.step * self.shape_mid[0])
        if not np.array_equal(np.floor(inv * np.arange(n, dtype=np.float32)), np.arange(n) // self.step):
            raise ValueError(f"step {self.step}: TorchRay's float32 cell index is not u // step")


def clamp01(x: jax.Array) -> jax.Array:
    """clip to [0, 1] with torch's gradient: passed where 0 <= x <= 1, bounds included (``jnp.clip`` passes half at
    the bounds). It matters: the mask is exactly 0 wherever the nearby parameters have been clipped to 0."""
    return jnp.where((x >= 0) & (x <= 1), x, jnp.clip(x, 0.0, 1.0))


def _tree(op, terms: list) -> jax.Array:
    """op-combine ``terms`` pairwise (a sum in this order keeps float32's error at log2(n) roundings; TorchRay's
    softmax-weighted sum adds its 81 terms one after another and is 2-3e-6 off at some pixels)."""
    while len(terms) > 1:
        terms = [op(a, b) for a, b in zip(terms[::2], terms[1::2])] + terms[len(terms) // 2 * 2:]
    return terms[0]


@functools.cache
def _smooth_max(geom: MaskGeometry):
    """The paper's smooth max as TorchRay pools: out = sum_k v_k e_k / sum_k e_k, e_k = exp(20 (v_k - 1)), over the
    K = (2 radius + 1)^2 terms v_k = mbar_k T_k(r) of every pixel. (..., K, cells) parameters around each cell ->
    (..., step^2, cells) pixels, r the pixel's offset in its cell. TorchRay's softmax shifts by max_k v_k instead;
    the result is the same, and with parameters and weights in [0, 1] the exponents lie in [-20, 0] (no overflow).
    A max over the terms, cheap, was fused by XLA into every consumer and recomputed there (10x slower at step 2).

    Written as explicit sums of K (forward) and step^2 (backward, by hand: d out / d v_k = e_k / den
    (1 - 20 out + 20 v_k)) elementwise terms so that XLA fuses each into one loop: the autodiff form materialises
    the (..., K, step^2, cells) array several times over and was 5-10x slower on XLA:CPU. The barrier keeps the
    numerator's and the denominator's exponentials apart, each then fused with its single consumer (shared, they
    are materialised)."""
    table = geom.kernel_table()
    k = table.shape[-1] ** 2
    table = table.reshape(geom.step ** 2, k).T[:, :, None]  # (K, R, 1)

    def terms(mbar):
        return [mbar[..., j, None, :] * table[j] for j in range(k)]

    def forward(mbar):
        num = _tree(jnp.add, [v * jnp.exp(COLDNESS * (v - 1)) for v in terms(mbar)])
        den = _tree(jnp.add, [jnp.exp(COLDNESS * (v - 1)) for v in terms(jax.lax.optimization_barrier(mbar))])
        return num / den, (mbar, num / den, den)

    def backward(res, g):
        mbar, out, den = res
        a, b = g / den, 1 - COLDNESS * out
        grads = []
        for r in range(table.shape[1]):
            v = mbar * table[:, r]
            e = jnp.exp(COLDNESS * (v - 1))
            grads.append(table[:, r] * e * a[..., r, None, :] * (b[..., r, None, :] + COLDNESS * v))
        return (_tree(jnp.add, grads),)

    pool = jax.custom_vjp(lambda mbar: forward(mbar)[0])
    pool.defvjp(forward, backward)
    return pool


def generate(pmask: jax.Array, geom: MaskGeometry) -> tuple[jax.Array, jax.Array]:
    """TorchRay ``MaskGenerator.generate``: parameters (..., h, w) in [0, 1] -> (mask cropped to the image
    (..., H, W), full mask with margin (..., shape_out)). Each pixel is the smooth max (coldness 20) over the
    (2 radius + 1)^2 nearest parameters of mbar_c k(|u - c| / sigma) (the paper's smooth max-convolution), clipped
    to [0, 1]."""
    p, k, s = geom.padding, 2 * geom.radius + 1, geom.step
    (mh, mw), (oh, ow) = geom.shape_mid, geom.shape_out
    lead = pmask.shape[:-2]
    padded = jnp.pad(pmask, [(0, 0)] * len(lead) + [(p, p), (p, p)])
    around = jnp.stack([padded[..., ky:ky + mh, kx:kx + mw].reshape(*lead, mh * mw)
                        for ky in range(k) for kx in range(k)], axis=-2)  # (..., K, cells)
    pooled = _smooth_max(geom)(around).reshape(*lead, s, s, mh, mw)
    n = len(lead)
    pooled = pooled.transpose(*range(n), n + 2, n, n + 3, n + 1).reshape(*lead, mh * s, mw * s)
    full = clamp01(pooled[..., :oh, :ow])
    c = geom.crop
    return full[..., c:c + geom.shape[0], c:c + geom.shape[1]], full


# ---------------------------------------------------------------------------------------------------------------
# The area constraint and the optimisation.


def top_counts(areas, num_pixels: int) -> tuple[int, ...]:
    """How many ones each sorted reference mask r_a has: TorchRay sets its first int(N (1 - a)) entries to 0."""
    return tuple(num_pixels - int(num_pixels * (1 - a)) for a in areas)


def _bisect(count_at_least, lo: jax.Array, hi: jax.Array, steps: int) -> jax.Array:
    """The largest c in [lo, hi] with ``count_at_least(c)`` true (true at lo, monotone decreasing)."""
    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2 + (hi - lo) % 2  # the upper middle, without overflowing int32
        ok = count_at_least(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    return jax.lax.fori_loop(0, steps, body, (lo, hi))[0]


def _top_split(flat: jax.Array, counts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Where vecsort puts each entry against r_a: the n_a-th largest value t and an index cut c such that the
    entries ranked in the top n_a are those > t and those == t at index >= c (a stable ascending sort puts equal
    values in index order; TorchRay's unstable one in an unspecified order). Two bisections (on the float's bits,
    valid for values >= 0, then on the index) instead of a sort, which is slow on XLA:CPU."""
    lead = flat.shape[:-1]
    n = flat.shape[-1]
    as_float = lambda bits: jax.lax.bitcast_convert_type(bits, jnp.float32)[..., None]
    bits = _bisect(lambda b: (flat >= as_float(b)).sum(-1) >= counts,
                   jnp.zeros(lead, jnp.int32), jnp.full(lead, 2 ** 31 - 1, jnp.int32), 31)
    t = as_float(bits)
    slots = counts - (flat > t).sum(-1)
    tied_from = lambda c: ((flat == t) & (jnp.arange(n) >= c[..., None])).sum(-1) >= slots
    cut = _bisect(tied_from, jnp.zeros(lead, jnp.int32), jnp.full(lead, n, jnp.int32), n.bit_length())
    return t, cut[..., None]


def area_loss(full_masks: jax.Array, areas) -> jax.Array:
    """||vecsort(m) - r_a||^2 / N for each full mask m (..., A, h, w) and its area (the paper's area term as
    TorchRay averages it) -> (..., A). Computed as (sum m^2 - 2 sum_top m + n_a) / N, sum_top over the n_a entries
    the sort ranks against ones; the gradient is 2 (m - [m ranked top]) / N, as through the sort.

    Where TorchRay and the paper differ, this follows TorchRay: the area term is a mean over the pixels, and the mask
    it sorts is TorchRay's full mask, the image plus a margin of ``sigma`` pixels on every side, so a mask of area a
    covers about a * (H + 2 sigma)(W + 2 sigma) / HW of the image: 1.35 a at 224 x 224, 2.7 a at 64 x 64 (the
    paper's Omega is the image)."""
    n = full_masks.shape[-1] * full_masks.shape[-2]
    counts = jnp.asarray(top_counts(areas, n))

    def forward(m):
        flat = m.reshape(*m.shape[:-2], n)
        t, cut = _top_split(flat, counts)
        top = (flat > t) | ((flat == t) & (jnp.arange(n) >= cut))
        value = ((flat * flat).sum(-1) - 2 * jnp.where(top, flat, 0).sum(-1) + counts) / n
        return value, (flat, top)

    def backward(res, g):
        flat, top = res
        return ((2 * (flat - top) / n * g[..., None]).reshape(*flat.shape[:-1], *full_masks.shape[-2:]),)

    loss = jax.custom_vjp(lambda m: forward(m)[0])
    loss.defvjp(forward, backward)
    return loss(full_masks)


def regul_weights(options: dict, updates: int) -> np.ndarray:
    """lambda_t = 300 * 1.0035^t for t < ``updates``, multiplied in float64 step by step and used in float32, as
    TorchRay does."""
    out, w = [], float(options["regul_weight"])
    for _ in range(updates):
        out.append(w)
        w *= options["regul_growth"]
    return np.asarray(out, np.float32)


def energy(model, levels: jax.Array, targets: jax.Array, pmask: jax.Array, flip: jax.Array, weight: jax.Array,
           geom: MaskGeometry, areas: tuple, grad_kernels=None) -> jax.Array:
    """TorchRay's energy, summed over images and areas: C_t(the image perturbed by mask m_a, flipped left-right if
    ``flip``) - lambda ||vecsort(m_a) - r_a||^2 / N (the preservation game, simple reward). ``levels``
    the pyramids (B, L, H, W, C), ``pmask`` the parameters (B, A, h, w)."""
    b, _, h, w, c = levels.shape
    cropped, full = generate(pmask, geom)
    x = perturb(levels, cropped).reshape(b * len(areas), h, w, c)
    x = jnp.where(flip, jnp.flip(x, axis=2), x)
    logits = model(x, grad_kernels=grad_kernels)[0]
    reward = jnp.take_along_axis(logits, jnp.repeat(targets, len(areas))[:, None], axis=1).sum()
    return reward - weight * area_loss(full, areas).sum()


def extremal_masks(model, images: jax.Array, targets: jax.Array, options: dict) -> tuple[jax.Array, jax.Array]:
    """The masks after ``options["iterations"]`` iterations, one per image and area, all optimised together in one
    ``lax.scan`` (images and areas are independent: the network is in eval mode): (cropped to the image
    (B, A, H, W), full with TorchRay's margin (B, A, shape_out)). TorchRay's SGD: buf = g at the first step, then
    buf = momentum buf + (1 - dampening) g with dampening = momentum; mbar <- clip(mbar - lr buf, 0, 1).

    For each area a, a smooth mask m_a (the paper's smooth masks: parameters mbar on a grid of ``step`` pixels, each
    pixel the smooth max over nearby parameters weighted by a kernel of width ``sigma``; TorchRay's
    ``MaskGenerator``) maximises Phi(m_a (x) x) - lambda ||vecsort(m_a) - r_a||^2 (the extremal perturbation of area
    a, its area constraint as the paper's ranking penalty): Phi the target logit of the image blurred where the mask
    is 0 (the paper's blur perturbation, TorchRay's perturbation pyramid), r_a the sorted reference mask with a
    fraction a of ones. TorchRay's optimiser: SGD with momentum 0.9 and dampening 0.9, lr 0.01, the parameters
    clipped to [0, 1] after every step, lambda = 300 growing by 1.0035 per iteration, the image flipped left-right on
    iterations 0, 2, 4, ... (``jitter``)."""
    h, w = images.shape[1:3]
    areas = tuple(float(a) for a in options["areas"])
    geom = MaskGeometry((h, w), int(options["step"]), float(options["sigma"]))
    geom.check()
    levels = pyramid(images, int(options["num_levels"]), float(options["max_blur"]))
    grad_kernels = model.input_grad_kernels()  # made once, outside the loop (``vgg.conv_same``)
    lr, momentum = options["learning_rate"], options["momentum"]
    negative_energy = lambda *args: -energy(model, levels, targets, *args, geom, areas, grad_kernels)

    def step(carry, xs):
        pmask, buf = carry
        t, weight = xs
        flip = jnp.logical_and(options["jitter"], t % 2 == 0)
        grad = jax.grad(negative_energy)(pmask, flip, weight)
        buf = jnp.where(t == 0, grad, momentum * buf + (1 - momentum) * grad)
        return (jnp.clip(pmask - lr * buf, 0.0, 1.0), buf), None

    # TorchRay returns the mask of the last iteration's forward pass (made before that iteration's step, which is
    # therefore skipped here).
    updates = int(options["iterations"]) - 1
    pmask = jnp.ones((images.shape[0], len(areas), *geom.shape_in), images.dtype)
    xs = (jnp.arange(updates), jnp.asarray(regul_weights(options, updates)))
    (pmask, _), _ = jax.lax.scan(step, (pmask, jnp.zeros_like(pmask)), xs)
    return generate(pmask, geom)


def saliency_from_masks(masks: jax.Array, smooth: float) -> jax.Array:
    """TorchRay's benchmark map: each mask smoothed (sigma = ``smooth`` x the shorter side; none at 0), summed
    over areas. (B, A, H, W) -> (B, H, W)."""
    if smooth > 0:
        masks = blur_maps(masks, smooth * min(masks.shape[-2:]))
    return masks.sum(axis=1)


def explain(model, images, targets, key, options):
    """``saliency`` is TorchRay's attribution benchmark's map: each mask smoothed by a Gaussian of sigma ``smooth``
    times the image's shorter side (TorchRay's ``smooth``), then the masks summed over areas. Masks are made at the
    image size, so TorchRay's resize to the image is the identity here. ``areas`` (B, A) is the mean of each full mask
    (what the constraint targets), ``image_areas`` (B, A) its mean over the image alone."""
    # Randomness: none. The parameters start at 1 everywhere (TorchRay) and the jitter alternates deterministically,
    # so the result is a function of the image alone; ``key`` is unused.
    del key
    b = images.shape[0]
    per_pass = common.samples_per_pass(options["chunk_size"], len(options["areas"]), b)
    if per_pass == b:
        masks, full = extremal_masks(model, images, targets, options)
    else:  # groups of ``per_pass`` images one after another; the last group padded with copies of the first image
        groups = -(-b // per_pass)
        pad = groups * per_pass - b
        grouped = [jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]).reshape(groups, per_pass, *a.shape[1:])
                   for a in (images, targets)]
        masks, full = (m.reshape(groups * per_pass, *m.shape[2:])[:b]
                       for m in jax.lax.map(lambda g: extremal_masks(model, *g, options), grouped))
    return {"saliency": saliency_from_masks(masks, float(options["smooth"])),
            "areas": full.mean(axis=(2, 3)), "image_areas": masks.mean(axis=(2, 3))}


METHOD = common.Method("extremal_perturbation", explain, OPTIONS,
                       "Fong, Patrick, Vedaldi 2019; TorchRay extremal_perturbation and its attribution benchmark")
