"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with
PixelCNN Decoders"): logits of p(x_i | x_<i, y) for every pixel in one pass.

The image distribution is factored in raster order (row by row, left to right),

    p(x | y) = prod_{i=1}^{H W} p(x_i | x_1, ..., x_{i-1}, y)          (paper, eq. 1)

and one network computes all H W conditionals at once, causally: the logits at
pixel i = (r, c) depend on the input pixels j < i only.

Masked convolutions. A convolution is made causal by zeroing kernel taps
(van den Oord et al. 2016a, "Pixel Recurrent Neural Networks", sec. 3.4): mask A
also zeroes the centre tap (the first layer, which must not see pixel i itself),
mask B keeps it (later layers, whose features at i already exclude input i). A
zeroed tap contributes nothing, so here each masked kernel is stored without its
zero taps and applied to a zero-padded input — the same function, with exactly
zero dependence on the masked pixels and no multiplications by zero:

- vertical stack, k x k kernel keeping the rows above (mask A: rows r - k//2 ..
  r - 1) or up to and including its own row (mask B: .. r), all k columns;
- horizontal stack, 1 x k kernel keeping the columns left of c in row r (mask A:
  c - k//2 .. c - 1) or up to and including c (mask B: .. c).

No blind spot (paper, sec. 2.2 and fig. 1). A single stack of masked k x k
convolutions never sees the pixels up and to the right beyond a growing
triangle. Two stacks fix it: the vertical stack's features at (r, c) depend on
all rows above within a widening window of columns on both sides, and never on
row r; the horizontal stack's features depend on row r left of c, and each layer
adds the vertical stack's features at the same position (the paper shifts the
vertical features down by one row before adding them because its vertical
kernel includes the current row; here the first vertical layer is mask A, so
they already end one row above). With a first layer of size k0 and L gated
layers of size k, the receptive field of pixel (r, c) is

    rows r - (k0//2 + L (k//2)) .. r - 1, columns c -+ (k0//2 + L (k//2))  (vertical)
    row r, columns c - (k0//2 + L (k//2)) .. c - 1                       (horizontal)

so every j < i of an H x W image is seen once k0//2 + L (k//2) >= max(H, W) - 1
(8 x 8 digits: 3 + 8 >= 7 at the defaults). `tests/test_pixelcnn.py` checks both
directions by the Jacobian.

Gated layer (paper, eqs. 2 and 4), for both stacks, with p channels:

    y = tanh(W_{k,f} * x + V_{k,f}^T h) ⊙ sigmoid(W_{k,g} * x + V_{k,g}^T h)

where h is the one-hot class label (a learned per-layer bias of 2p values per
class: `nn.Embed` is V^T h); the horizontal stack adds a 1 x 1 convolution of
the vertical stack's pre-activations to its own, and its output goes through a
1 x 1 convolution and a residual connection (paper, fig. 2). The label table has
num_classes + 1 rows: row num_classes is the null label that classifier-free
guidance trains with (Ho & Salimans 2022).

Channels: images with C = 1 channel only (the digits). C > 1 needs the
sub-pixel ordering of the paper (R before G before B, masks split by channel
group) and raises a ValueError here.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.nn.dropout import Dropout


def _shifted_conv(x_BHWC, conv: nn.Conv, top: int, left: int, right: int):
    """`conv` (VALID) applied to x zero-padded by `top` rows above and `left` /
    `right` columns, cropped to the input's H x W from the top-left corner: output
    (r, c) sees input rows r - top .. r - top + kh - 1 and columns c - left ..
    c - left + kw - 1."""
    H, W = x_BHWC.shape[1:3]
    padded = jnp.pad(x_BHWC, ((0, 0), (top, 0), (left, right), (0, 0)))
    return conv(padded)[:, :H, :W]  # kh <= top + 1 and kw <= left + right + 1 rows/columns suffice


class VerticalConv(nn.Module):
    """k x k convolution masked to the rows above (mask "A") or up to and including
    the current row (mask "B"); all k columns, centred."""

    features: int
    kernel: int
    mask: str

    @nn.compact
    def __call__(self, x_BHWC):
        half = self.kernel // 2
        rows = half + (self.mask == "B")
        conv = nn.Conv(self.features, (rows, self.kernel), padding="VALID")
        return _shifted_conv(x_BHWC, conv, top=half, left=half, right=half)


class HorizontalConv(nn.Module):
    """1 x k convolution masked to the columns left of the current pixel (mask "A")
    or up to and including it (mask "B"), in the current row."""

    features: int
    kernel: int
    mask: str

    @nn.compact
    def __call__(self, x_BHWC):
        half = self.kernel // 2
        cols = half + (self.mask == "B")
        conv = nn.Conv(self.features, (1, cols), padding="VALID")
        return _shifted_conv(x_BHWC, conv, top=0, left=half, right=0)


def _gate(pre_BHW2P):
    """tanh(f) ⊙ sigmoid(g) of the two halves of the channels (paper, eq. 2)."""
    f, g = jnp.split(pre_BHW2P, 2, axis=-1)
    return jnp.tanh(f) * jax.nn.sigmoid(g)


class GatedLayer(nn.Module):
    """One gated layer of both stacks (paper, fig. 2), with mask B: (v, h) -> (v', h')."""

    channels: int
    kernel: int
    num_classes: int | None
    dropout: float

    @nn.compact
    def __call__(self, v_BHWP, h_BHWP, labels_B, train: bool):
        p = self.channels
        v_pre = VerticalConv(2 * p, self.kernel, "B")(v_BHWP)
        h_pre = HorizontalConv(2 * p, self.kernel, "B")(h_BHWP) + nn.Conv(2 * p, (1, 1))(v_pre)
        if self.num_classes is not None:  # V^T h, h the one-hot label (paper, eq. 4)
            v_pre = v_pre + nn.Embed(self.num_classes + 1, 2 * p)(labels_B)[:, None, None, :]
            h_pre = h_pre + nn.Embed(self.num_classes + 1, 2 * p)(labels_B)[:, None, None, :]
        v_out = _gate(v_pre)
        h_gated = Dropout(self.dropout, deterministic=not train)(_gate(h_pre))
        h_out = h_BHWP + nn.Conv(p, (1, 1))(h_gated)
        return v_out, h_out


class PixelCNN(nn.Module):
    """Gated PixelCNN: images (B, H, W, C) in [-1, 1] -> logits (B, H, W, C, num_levels)
    of p(x_i | x_<i, label) in raster order (module docstring; van den Oord et al.
    2016, eqs. 1-4). The logits at pixel i depend on input pixels j < i only.

    num_levels:  categories per pixel (17 for the digits, 256 for 8-bit images)
    channels:    p, the width of both stacks
    num_layers:  gated layers after the first (mask A) layer
    kernel:      k of the gated layers' k x k (vertical) and 1 x k (horizontal) kernels
    first_kernel: k0 of the first layer's mask-A kernels
    head:        width of the two 1 x 1 layers (ReLU) that map the horizontal stack to logits
    num_classes: class-conditional when set; labels (B,) in 0..num_classes, where
                 num_classes is the null label (unconditional)
    dropout:     on the gated horizontal features, at training time
    """

    num_levels: int = 17
    channels: int = 64
    num_layers: int = 8
    kernel: int = 3
    first_kernel: int = 7
    head: int = 128
    num_classes: int | None = None
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x_BHWC, labels_B=None, train: bool = False):
        if x_BHWC.ndim != 4:
            raise ValueError(f"PixelCNN takes images (B, H, W, C); got shape {x_BHWC.shape}")
        B, H, W, C = x_BHWC.shape
        if C != 1:
            raise ValueError(f"PixelCNN models images with C = 1 channel; got C = {C} (shape "
                             f"{x_BHWC.shape}): the sub-pixel ordering of colour channels is not implemented")
        if self.first_kernel < 2 or self.kernel < 1:
            raise ValueError(f"PixelCNN needs first_kernel >= 2 (mask A keeps first_kernel // 2 rows and "
                             f"columns) and kernel >= 1; got first_kernel={self.first_kernel}, "
                             f"kernel={self.kernel}")
        if (self.num_classes is None) != (labels_B is None):
            raise ValueError(f"PixelCNN(num_classes={self.num_classes}) "
                             f"{'needs' if labels_B is None else 'takes no'} labels")
        if labels_B is not None:
            labels_B = jnp.asarray(labels_B, jnp.int32)
        p = self.channels
        v = VerticalConv(p, self.first_kernel, "A")(x_BHWC)
        h = HorizontalConv(p, self.first_kernel, "A")(x_BHWC)
        for _ in range(self.num_layers):
            v, h = GatedLayer(p, self.kernel, self.num_classes, self.dropout)(v, h, labels_B, train)
        out = nn.relu(nn.Conv(self.head, (1, 1))(nn.relu(h)))
        logits = nn.Conv(C * self.num_levels, (1, 1))(out)
        return logits.reshape(B, H, W, C, self.num_levels)
