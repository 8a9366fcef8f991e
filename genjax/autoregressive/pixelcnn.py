"""The Gated PixelCNN as a model: an exact likelihood of discrete images by the
chain rule over pixels, ancestral sampling, and range coding.

With L levels per pixel and pixels in raster order, the network
(`genjax.nn.pixelcnn.PixelCNN`) gives every conditional at once,

    log P(x | c) = sum_{i=1}^{D} log softmax(f_theta(x_<i, c)_i)[x_i]       (van den Oord et al. 2016, eq. 1)

with c an optional class label, and the loss is the exact negative
log-likelihood of the integer levels — the cross-entropy of L-way
categoricals, no dequantization bound.

Data convention. The image families see images in model space [-1, 1]
(`genjax.data.images`), uniformly dequantized: y = -1 + 2 (x + u) / L. The
PixelCNN reads the levels back, x = floor((y + 1) L / 2), and feeds the network
each level's cell centre -1 + (2 x + 1) / L, so nothing depends on u. Its
`log_prob(y)` is the log-density of the piecewise-constant density that spreads
P(x) uniformly over x's cell of volume (2 / L)^D:

    log p(y) = log P(x(y)) - D log(2 / L),

a normalized density on [-1, 1]^D for which the dequantization bound of the other
families (Theis et al. 2016; Ho et al. 2019, eq. 1),
-log P(x) <= -E_u[log p(y)] - D log(2 / L), holds with equality for every u. So
the evaluation's "NLL of the discrete data" (`genjax.diffusion.likelihood.discrete_nll`)
is exactly -log P(x) here, comparable with the bounds of the other families.
`discrete_log_prob` returns log P(x) itself.

Sampling draws the D pixels one after another, one network pass each, in one
`lax.fori_loop`. Classifier-free guidance (Ho & Salimans 2022) mixes the logits,
(1 + w) l(x, c) - w l(x, null), both from one network call of batch 2N.

Coding (`code_images`): the conditionals drive the range coder of
`genjax.autoregressive.coding`; one jitted program codes in both directions,
pixel by pixel, so encoder and decoder quantize bit-identical probabilities.
"""
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from genjax import guidance as guidance_lib
from genjax.autoregressive import coding
from genjax.core import Model
from genjax.data import images as images_lib


def check_levels(net, num_levels: int) -> None:
    """A ValueError naming both numbers when the network's output levels differ
    from the data's levels."""
    if net.num_levels != num_levels:
        raise ValueError(f"the PixelCNN outputs {net.num_levels} levels per pixel but the data has "
                         f"{num_levels} levels; set the network's num_levels to {num_levels}")


def pixel_log_probs(logits_BHWCL, x_int_BHWC):
    """log p(x_i | x_<i) per pixel, (B, H, W, C): the categorical's log-probability of
    the observed level."""
    logp = jax.nn.log_softmax(logits_BHWCL.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, x_int_BHWC[..., None].astype(jnp.int32), axis=-1)[..., 0]


def make_pixelcnn_model(net, *, data_shape, num_levels: int, num_classes: int | None = None,
                        label_dropout: float = 0.0) -> Model:
    """A `genjax.core.Model` of discrete images with `num_levels` levels per pixel.

    net: a `genjax.nn.pixelcnn.PixelCNN` (net.num_levels must equal num_levels;
    net.num_classes equal num_classes). Batches are images in [-1, 1] (dequantized
    or not; only their levels count), or {"x", "label"} when class-conditional;
    labels are dropped to the null label num_classes with probability
    label_dropout during training (classifier-free guidance).

    loss(params, key, batch) -> (mean NLL per dimension in nats, metrics): exact.
    log_prob(params, key, y, labels=None): exact log-density in nats per image of
        the piecewise-constant density on model space (module docstring),
        log P(x) - D log(2/L); labels None on a conditional model: the null label.
    sample(params, key, num, labels=None, guidance=0.0, temperature=1.0): images in
        model space (cell centres), D network passes; labels default to 0, 1, ...,
        K-1, 0, ... on a conditional model.
    """
    check_levels(net, num_levels)
    if net.num_classes != num_classes:
        raise ValueError(f"the PixelCNN has num_classes={net.num_classes}; the model was asked for "
                         f"num_classes={num_classes}")
    data_shape = tuple(data_shape)
    if len(data_shape) != 3:
        raise ValueError(f"a PixelCNN models images (H, W, C); got data_shape {data_shape}")
    conditional = num_classes is not None
    null_label = num_classes
    dim = math.prod(data_shape)
    log_volume = images_lib.log_cell_volume(data_shape, num_levels)

    def levels_of(y):
        return images_lib.to_levels(y, num_levels)

    def null_labels(n):
        return jnp.full((n,), null_label, jnp.int32) if conditional else None

    def init(key, batch):
        x, labels = guidance_lib.split_batch(batch, conditional)
        return net.init(key, images_lib.level_centres(levels_of(x), num_levels), labels)

    def discrete_log_prob(params, x_int, labels=None, *, key=None):
        """log P(x | labels) in nats per image (B,), for integer levels (B, H, W, C);
        dropout active when a key is given."""
        x_int = jnp.asarray(x_int, jnp.int32)
        if conditional and labels is None:
            labels = null_labels(x_int.shape[0])
        x_in = images_lib.level_centres(x_int, num_levels)
        if key is None:
            logits = net.apply(params, x_in, labels)
        else:
            logits = net.apply(params, x_in, labels, train=True, rngs={"dropout": key})
        return jnp.sum(pixel_log_probs(logits, x_int), axis=(1, 2, 3))

    def loss(params, key, batch):
        x, labels = guidance_lib.split_batch(batch, conditional)
        drop_key, key = jax.random.split(key)
        if conditional and label_dropout:
            labels = guidance_lib.drop_labels(drop_key, labels, null_label, label_dropout)
        nll_B = -discrete_log_prob(params, levels_of(x), labels, key=key)
        nll_per_dim = jnp.mean(nll_B) / dim
        return nll_per_dim, {"nll_nats": jnp.mean(nll_B), "bits_per_dim": nll_per_dim / math.log(2.0)}

    def log_prob(params, key, y, labels=None):
        del key  # exact: no estimator
        return discrete_log_prob(params, levels_of(y), labels) - log_volume

    def logits_fn(params, labels, guidance):
        """x_int (N, H, W, C) -> logits, guided when guidance != 0 (one call of batch 2N)."""
        w = guidance_lib.check_guidance(guidance, num_classes)
        if not conditional or (isinstance(w, float) and w == 0.0):
            return lambda x_int: net.apply(params, images_lib.level_centres(x_int, num_levels), labels)
        both = jnp.concatenate([labels, null_labels(labels.shape[0])])

        def fn(x_int):
            n = x_int.shape[0]
            l2 = net.apply(params, images_lib.level_centres(jnp.concatenate([x_int, x_int]), num_levels), both)
            return (1.0 + w) * l2[:n] - w * l2[n:]

        return fn

    def sample(params, key, num, labels=None, guidance=0.0, temperature=1.0):
        if conditional and labels is None:
            labels = guidance_lib.cycled_labels(num, num_classes)
        elif labels is not None:
            labels = jnp.asarray(labels, jnp.int32)
        fn = logits_fn(params, labels, guidance)
        H, W, C = data_shape

        def step(i, x_NHWC):
            logits_NL = fn(x_NHWC).reshape(num, dim, num_levels)[:, i]
            level = jax.random.categorical(jax.random.fold_in(key, i), logits_NL / temperature)
            return x_NHWC.reshape(num, dim).at[:, i].set(level).reshape(num, H, W, C)

        x_int = jax.lax.fori_loop(0, dim, step, jnp.zeros((num,) + data_shape, jnp.int32))
        return images_lib.level_centres(x_int, num_levels)

    model = Model(init=init, loss=loss, sample=sample, log_prob=log_prob)
    return model


def discrete_log_prob(net, params, x_int_BHWC, labels_B=None):
    """log P(x | labels) in nats per image, (B,), of integer images under `net`."""
    x_int_BHWC = jnp.asarray(x_int_BHWC, jnp.int32)
    logits = net.apply(params, images_lib.level_centres(x_int_BHWC, net.num_levels), labels_B)
    return jnp.sum(pixel_log_probs(logits, x_int_BHWC), axis=(1, 2, 3))


# ----------------------------------------------------------------------------- coding

def stream_width(num_symbols: int) -> int:
    """Bytes of stream a decoder of `num_symbols` symbols may read: 4 to start, at
    most 2 per symbol (coding._MAX_RENORM), and the flush."""
    return 4 + coding._MAX_RENORM * num_symbols + 4


@partial(jax.jit, static_argnames=("net",))
def code_images(net, params, x_int_BNHWC, stream_BS, decoding, labels_BN=None):
    """Range-codes B lanes of N images each, pixel by pixel in raster order, image
    after image, in one compiled program for both directions (so encoder and
    decoder quantize bit-identical probabilities: each conditional is computed
    from the same partially filled image, whatever the direction).

    x_int_BNHWC: the levels to encode (ignored when decoding); stream_BS: uint8,
    each lane's coded bytes, zero-padded to `stream_width(N D)` (ignored when
    encoding); decoding: a traced bool; labels_BN: the labels of a conditional net.

    Returns dict(levels int32 (B, N, H, W, C): the images coded (decoded when
    decoding); cum, freq int32 (B, N D): each symbol's quantized cumulative
    frequency and frequency, for `coding.encode`; bits float32 (B, N, D): -log2 p
    of each pixel under the float model, the cross-entropy the coder aims at).
    """
    B, N, H, W, C = x_int_BNHWC.shape
    D, L = H * W * C, net.num_levels
    decoding = jnp.asarray(decoding, bool)
    dec0 = coding.init_decoder(stream_BS)

    def image(dec, inputs):
        x_known_BD, labels_B = inputs

        def pixel(i, carry):
            x_BD, dec, cum_BD, freq_BD, bits_BD = carry
            x_in = images_lib.level_centres(x_BD.reshape(B, H, W, C), L)
            logits_BL = net.apply(params, x_in, labels_B).reshape(B, D, L)[:, i]
            freq_BL = coding.quantize(logits_BL)
            sym_dec_B, dec = coding.decode_symbol(dec, freq_BL, stream_BS)
            sym_B = jnp.where(decoding, sym_dec_B, x_known_BD[:, i])
            cum_B = jnp.take_along_axis(coding.cumulative(freq_BL), sym_B[:, None], axis=-1)[:, 0]
            f_B = jnp.take_along_axis(freq_BL, sym_B[:, None], axis=-1)[:, 0]
            logp_BL = jax.nn.log_softmax(logits_BL.astype(jnp.float32), axis=-1)
            bits_B = -jnp.take_along_axis(logp_BL, sym_B[:, None], axis=-1)[:, 0] / jnp.log(2.0)
            return (x_BD.at[:, i].set(sym_B), dec, cum_BD.at[:, i].set(cum_B),
                    freq_BD.at[:, i].set(f_B), bits_BD.at[:, i].set(bits_B))

        zeros = jnp.zeros((B, D), jnp.int32)
        carry = (zeros, dec, zeros, zeros, jnp.zeros((B, D), jnp.float32))
        x_BD, dec, cum_BD, freq_BD, bits_BD = jax.lax.fori_loop(0, D, pixel, carry)
        return dec, (x_BD, cum_BD, freq_BD, bits_BD)

    x_NBD = jnp.swapaxes(x_int_BNHWC.reshape(B, N, D).astype(jnp.int32), 0, 1)
    labels_NB = None if labels_BN is None else jnp.swapaxes(jnp.asarray(labels_BN, jnp.int32), 0, 1)
    _, (x_NBD, cum_NBD, freq_NBD, bits_NBD) = jax.lax.scan(image, dec0, (x_NBD, labels_NB))

    def lanes(a_NBD):
        return jnp.swapaxes(a_NBD, 0, 1)

    return {"levels": lanes(x_NBD).reshape(B, N, H, W, C), "cum": lanes(cum_NBD).reshape(B, N * D),
            "freq": lanes(freq_NBD).reshape(B, N * D), "bits": lanes(bits_NBD)}


def encode_images(net, params, x_int_BNHWC, labels_BN=None):
    """B byte strings, lane b the range code of its N images x_int[b] (levels in
    0..L-1), and the model's bits per pixel (B, N, D) under the coder's conditioning.

    Decoding (`decode_images`) needs the same net, params, B, N and labels.
    """
    x = jnp.asarray(x_int_BNHWC)
    if x.ndim != 5 or not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"x_int must be integer levels (B, N, H, W, C); got {x.dtype} {x.shape}")
    lo, hi = int(jnp.min(x)), int(jnp.max(x))
    if lo < 0 or hi >= net.num_levels:
        raise ValueError(f"the images hold levels {lo}..{hi} but the PixelCNN outputs {net.num_levels} "
                         f"levels (0..{net.num_levels - 1})")
    B, N = x.shape[:2]
    width = stream_width(N * math.prod(x.shape[2:]))
    out = code_images(net, params, x, jnp.zeros((B, width), jnp.uint8), False, labels_BN)
    cum, freq = jax.device_get((out["cum"], out["freq"]))
    return [coding.encode(cum[b], freq[b]) for b in range(B)], jax.device_get(out["bits"])


def decode_images(net, params, streams, num_images: int, image_shape, labels_BN=None):
    """The levels (B, N, H, W, C) int32 that `encode_images` coded into `streams`
    (B byte strings, N = num_images per lane), and the bits per pixel."""
    image_shape = tuple(image_shape)
    width = stream_width(num_images * math.prod(image_shape))
    stream_BS = np.zeros((len(streams), width), np.uint8)
    for b, s in enumerate(streams):
        if len(s) > width:
            raise ValueError(f"stream {b} has {len(s)} bytes; {num_images} images of shape {image_shape} "
                             f"code into at most {width}")
        stream_BS[b, :len(s)] = np.frombuffer(s, np.uint8)
    dummy = jnp.zeros((len(streams), num_images) + image_shape, jnp.int32)
    out = code_images(net, params, dummy, jnp.asarray(stream_BS), True, labels_BN)
    return jax.device_get(out["levels"]), jax.device_get(out["bits"])
