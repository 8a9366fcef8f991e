"""The PixelCNN as a compressor of discrete images: range coding with a trained run.

    python -m experiments.pixelcnn_compress --workdir=runs/digits_pixelcnn [--split=test] [--json=OUT.json]

RUN is the workdir of an `experiments.main` run of the "pixelcnn" family
(configs/digits_pixelcnn.py); the weights config.eval.params names (the EMA by
default) drive the range coder of `genjax.autoregressive.coding`, pixel by pixel
(`genjax.autoregressive.pixelcnn.code_images`). Every image of the split is
coded, decoded back and checked equal, two ways:

- per image: each image its own stream (its bytes include the coder's 4-byte
  flush), all images side by side as lanes of one batch;
- whole split: one stream of all images, image after image (4 flush bytes in all).

Reported in bits per image: the model's NLL -log2 P(x) (what an ideal coder
spends), the range coder's output, lossless PNG (Pillow, optimize=True) and
lossless WebP (quality 100, method 6) of the same 17-level images (grey values
0..L-1, one byte per pixel), per image and for the whole split as one image (the
images tiled in a grid with no borders, empty cells 0), and the uniform code
D log2 L. A class-conditional run codes with the null label (no side information).
Each container's own bytes are counted as written (PNG's signature and chunks,
WebP's RIFF header); the range-coder streams carry no header (the decoder is told
the shape and count).
"""
import argparse
import io
import json
import math
import sys
import time

import jax.numpy as jnp
import numpy as np

from experiments import registry, run_config
from experiments.experiment import Experiment
from experiments.main import eval_params
from genjax.autoregressive import pixelcnn as pc

PNG = {"format": "PNG", "optimize": True}
WEBP = {"format": "WEBP", "lossless": True, "quality": 100, "method": 6}


def image_bytes(levels_HW: np.ndarray, **save_kwargs) -> int:
    """Bytes of the grey image levels_HW (uint8) saved with Pillow."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(levels_HW, np.uint8)).save(buf, **save_kwargs)  # 2-D uint8: mode "L"
    return len(buf.getvalue())


def tile(images_NHW: np.ndarray) -> np.ndarray:
    """N images in a grid of ceil(sqrt N) columns, no borders, empty cells 0."""
    n, h, w = images_NHW.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cells = np.zeros((rows * cols, h, w), images_NHW.dtype)
    cells[:n] = images_NHW
    return cells.reshape(rows, cols, h, w).transpose(0, 2, 1, 3).reshape(rows * h, cols * w)


def restore(workdir: str):
    """(net, params, config, step, source) of the trained pixelcnn run in workdir."""
    config = run_config.load_run(workdir)
    if config.family != "pixelcnn":
        raise ValueError(f"{workdir} holds a {config.family!r} run; this codes with a 'pixelcnn' run")
    exp = Experiment(config)
    state = exp.restore(workdir)
    net = registry.build_pixelcnn_net(config, exp.source)
    return net, eval_params(config, state), config, int(state.step), exp.source


def code_split(net, params, x_int_NHWC, num_classes=None):
    """Codes and decodes the images per image and as one stream; checks both round
    trips. Returns a dict of arrays and totals (bits)."""
    n = len(x_int_NHWC)
    shape = tuple(x_int_NHWC.shape[1:])
    x = jnp.asarray(x_int_NHWC, jnp.int32)
    null = None if num_classes is None else jnp.full((n,), num_classes, jnp.int32)
    nll_bits = -np.asarray(pc.discrete_log_prob(net, params, x, null)) / math.log(2)
    out = {"nll_bits": nll_bits}
    timings = {}
    for name, lanes in (("per_image", x[:, None]), ("one_stream", x[None])):
        labels = None if null is None else null.reshape(lanes.shape[:2])
        t0 = time.perf_counter()
        streams, bits = pc.encode_images(net, params, lanes, labels)
        t1 = time.perf_counter()
        decoded, _ = pc.decode_images(net, params, streams, lanes.shape[1], shape, labels)
        t2 = time.perf_counter()
        if not np.array_equal(decoded.reshape(x.shape), np.asarray(x)):
            bad = np.flatnonzero(np.any(decoded.reshape(n, -1) != np.asarray(x).reshape(n, -1), axis=1))
            raise ValueError(f"{name}: {len(bad)} decoded images differ from the originals (first: {bad[:5]})")
        out[f"{name}_bits"] = np.array([8 * len(s) for s in streams], float)
        out[f"{name}_model_bits"] = np.asarray(bits).reshape(n, -1).sum(-1)
        timings[name] = {"encode_s": t1 - t0, "decode_s": t2 - t1}
    out["timings"] = timings
    return out


def compare(workdir: str, split: str = "test") -> dict:
    net, params, config, step, source = restore(workdir)
    x_int, _ = source.load_split(split)
    n, (h, w, c) = len(x_int), x_int.shape[1:]
    levels = net.num_levels
    coded = code_split(net, params, x_int, source.num_classes)
    grey = np.asarray(x_int[..., 0], np.uint8)
    png = np.array([8 * image_bytes(im, **PNG) for im in grey], float)
    webp = np.array([8 * image_bytes(im, **WEBP) for im in grey], float)
    grid = tile(grey)
    dim = h * w * c

    def row(per_image, whole):
        per_image = np.asarray(per_image, float)
        return {"mean_bits_per_image": float(per_image.mean()), "median_bits_per_image": float(np.median(per_image)),
                "whole_split_bits": float(whole), "whole_split_bits_per_image": float(whole) / n}

    table = {
        "model NLL (-log2 P)": row(coded["nll_bits"], coded["nll_bits"].sum()),
        "PixelCNN + range coder": row(coded["per_image_bits"], coded["one_stream_bits"][0]),
        "PNG (Pillow, optimize)": row(png, 8 * image_bytes(grid, **PNG)),
        "WebP lossless (q100, m6)": row(webp, 8 * image_bytes(grid, **WEBP)),
        f"uniform code (D log2 {levels})": row(np.full(n, dim * math.log2(levels)), n * dim * math.log2(levels)),
    }
    return {"workdir": workdir, "step": step, "params": config.eval.get("params", "ema"), "split": split,
            "num_images": n, "image_shape": [h, w, c], "num_levels": levels, "round_trip": "exact",
            "grid_shape": list(grid.shape), "table": table, "timings": coded["timings"],
            "per_image": {k: coded[k].tolist() for k in ("nll_bits", "per_image_bits")}
            | {"png_bits": png.tolist(), "webp_bits": webp.tolist()}}


def markdown(result: dict) -> str:
    lines = [f"{result['num_images']} {result['split']} images, step {result['step']} ({result['params']} weights); "
             "bits per image",
             "", "| coder | per image: mean | median | whole split, per image | whole split, total bits |",
             "|---|---|---|---|---|"]
    for name, r in result["table"].items():
        lines.append(f"| {name} | {r['mean_bits_per_image']:.1f} | {r['median_bits_per_image']:.1f} | "
                     f"{r['whole_split_bits_per_image']:.1f} | {r['whole_split_bits']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.pixelcnn_compress",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", default=None, help="write the full result (per image too) here")
    args = parser.parse_args(argv)
    try:
        result = compare(args.workdir, args.split)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(markdown(result))
    print(json.dumps(result["timings"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
