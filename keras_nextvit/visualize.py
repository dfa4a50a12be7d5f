"""Looking inside Next-ViT: stage features, E-MHSA attention, class activation maps.

The computations return NumPy arrays and work on every Keras backend; the
``plot_*`` helpers return matplotlib figures, so notebooks and scripts share
them.

**Attention geometry.** In a Next Transformer Block the queries are the
``H x W`` tokens of the feature map, flattened row-major. With
``sr_ratio > 1`` each key (and value) is the mean of ``p = sr_ratio**2``
*consecutive* tokens in that order: key ``k`` covers tokens
``k*p .. k*p + p - 1``, a horizontal strip of the feature map (which wraps
to the next row when ``p`` does not divide ``W``), not a square patch.
Tokens past the last full window belong to no key. :func:`key_token_map`
gives, for every feature-map position, the key it belongs to, and
:func:`attention_image` spreads a query's attention over those strips.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from .layers import NTB
from .model import feature_extractor, stage_block_names


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


# ----------------------------------------------------------------- features


def stage_features(model, images):
    """The four stage outputs (channels-last NumPy arrays) for ``images``."""
    extractor = feature_extractor(model)
    return [_numpy(f) for f in extractor(np.asarray(images, np.float32), training=False)]


def activation_statistics(features):
    """Per-stage statistics: shape, mean, std, max and the share of values
    that are <= 0."""
    stats = []
    for i, f in enumerate(features, start=1):
        f = np.asarray(f, np.float64)
        stats.append({
            "stage": i,
            "shape": tuple(f.shape),
            "mean": float(f.mean()),
            "std": float(f.std()),
            "max": float(f.max()),
            "nonpositive": float(np.mean(f <= 0)),
        })
    return stats


def pca_rgb(feature):
    """Project a ``(H, W, C)`` map on its first 3 principal components -> RGB in [0, 1]."""
    f = np.asarray(feature, np.float64)
    if f.ndim != 3:
        raise ValueError(f"pca_rgb expects one (H, W, C) feature map, got shape {f.shape}.")
    h, w, c = f.shape
    flat = f.reshape(-1, c)
    flat = flat - flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    proj = flat @ vt[:3].T
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return rgb.reshape(h, w, 3)


# ---------------------------------------------------------------- attention


@dataclasses.dataclass
class BlockAttention:
    """E-MHSA attention probabilities of one NTB."""

    block: str  # layer name, e.g. "stages_2_blocks_4"
    stage: int  # 1-based stage number
    probabilities: np.ndarray  # (batch, heads, queries, keys); rows sum to 1
    grid: tuple  # (H, W) of the feature map the queries come from
    pool_size: int  # tokens per key: sr_ratio ** 2

    @property
    def num_keys(self):
        return self.probabilities.shape[-1]


def attention_maps(model, images):
    """E-MHSA attention of every NTB of ``model`` for ``images``.

    Runs the model layer by layer (eagerly) and asks each NTB for its
    attention probabilities. Returns a list of :class:`BlockAttention`.
    """
    x = np.asarray(images, np.float32)
    results = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, NTB):
            x, probs = layer(x, training=False, return_attention_scores=True)
            h, w = x.shape[1], x.shape[2]
            results.append(BlockAttention(
                block=layer.name,
                stage=int(layer.name.split("_")[1]) + 1,
                probabilities=_numpy(probs),
                grid=(int(h), int(w)),
                pool_size=layer.e_mhsa.pool_size,
            ))
        elif layer.name == "norm":
            break  # the head adds no attention
        else:
            x = layer(x, training=False)
    return results


def key_token_map(grid, pool_size):
    """``(H, W)`` int array: the key each feature-map position belongs to
    (-1 for the tokens dropped after the last full window)."""
    h, w = grid
    tokens = np.arange(h * w)
    keys = tokens // pool_size
    keys[keys >= (h * w) // pool_size] = -1
    return keys.reshape(h, w)


def query_position(query, grid):
    """``(row, col)`` of query token ``query`` in a ``grid`` feature map."""
    return divmod(int(query), grid[1])


def attention_image(weights, grid, pool_size):
    """Spread one query's attention over the image.

    ``weights``: ``(keys,)`` probabilities. Every position gets the weight
    of the key whose strip it belongs to; dropped positions are NaN.
    """
    weights = np.asarray(weights, np.float64)
    keys = key_token_map(grid, pool_size)
    if weights.shape != (int(keys.max()) + 1,):
        raise ValueError(
            f"{weights.shape[0]} attention weights do not fit a {grid} grid with "
            f"{pool_size} tokens per key ({int(keys.max()) + 1} keys)."
        )
    out = np.full(keys.shape, np.nan)
    valid = keys >= 0
    out[valid] = weights[keys[valid]]
    return out


# ------------------------------------------------------- class activation


def class_activation_map(model, images, class_index=None):
    """Grad-CAM on the last stage, for every image.

    Next-ViT's head is ``Dense(GlobalAveragePool(BN(A)))`` on the last-stage
    map ``A``. The gradient of a class score with respect to ``A`` is then
    the same at every position, ``w_c * s / (H W)`` (``s`` the final BN's
    scale), so Grad-CAM's channel weights are exact without autodiff and the
    map is ``ReLU(sum_k alpha_k A_k)`` -- the same for any backend.
    ``tests/test_visualize.py`` checks this against TensorFlow's gradients.

    Returns ``(cams, class_index)``: cams ``(batch, H/32, W/32)`` scaled to
    [0, 1] per image, and the explained class of each image (the top class
    when ``class_index`` is ``None``).
    """
    head = model.get_layer("head_fc")
    norm = model.get_layer("norm")
    last = model.get_layer(stage_block_names(model)[-1])
    probe = keras.Model(model.input, [last.output, model.output])
    features, logits = (_numpy(t) for t in probe(np.asarray(images, np.float32), training=False))
    if class_index is None:
        class_index = logits.argmax(axis=-1)
    class_index = np.broadcast_to(np.asarray(class_index), (len(features),))
    scale = _numpy(norm.gamma) / np.sqrt(_numpy(norm.moving_variance) + norm.epsilon)
    kernel = _numpy(head.kernel)  # (channels, classes)
    h, w = features.shape[1:3]
    alphas = kernel[:, class_index].T * scale / (h * w)  # (batch, channels)
    cams = np.maximum(np.einsum("bhwc,bc->bhw", features, alphas), 0)
    peak = cams.reshape(len(cams), -1).max(axis=1)
    cams = cams / np.maximum(peak, 1e-12)[:, None, None]
    return cams, class_index


def upsample(map2d, size):
    """Nearest-neighbour resize of a ``(h, w)`` map to ``size = (H, W)``."""
    map2d = np.asarray(map2d)
    rows = (np.arange(size[0]) * map2d.shape[0] // size[0]).clip(0, map2d.shape[0] - 1)
    cols = (np.arange(size[1]) * map2d.shape[1] // size[1]).clip(0, map2d.shape[1] - 1)
    return map2d[rows][:, cols]


# ----------------------------------------------------------------- plotting


def _figure(rows, cols, size=2.2):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def plot_channel_grid(feature, channels=16, title=None):
    """The first ``channels`` channels of one ``(H, W, C)`` map, each scaled alone."""
    feature = np.asarray(feature)
    n = min(channels, feature.shape[-1])
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = _figure(rows, cols, 1.6)
    for i, ax in enumerate(axes.flat):
        if i < n:
            ax.imshow(feature[..., i], cmap="viridis")
            ax.set_title(f"ch {i}", fontsize=7)
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_stage_pca(image, features, title=None):
    """The image beside a PCA-to-RGB view of each stage (one image)."""
    fig, axes = _figure(1, 1 + len(features), 2.4)
    axes[0, 0].imshow(np.asarray(image))
    axes[0, 0].set_title("input")
    for i, f in enumerate(features, start=1):
        axes[0, i].imshow(pca_rgb(f), interpolation="nearest")
        axes[0, i].set_title(f"stage {i}: {f.shape[0]}x{f.shape[1]}x{f.shape[2]}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_activation_statistics(stats):
    """Bar charts of per-stage mean, std and share of non-positive values."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    stages = [f"stage {s['stage']}" for s in stats]
    for ax, key in zip(axes, ("mean", "std", "nonpositive")):
        ax.bar(stages, [s[key] for s in stats], color="tab:blue")
        ax.set_title(key if key != "nonpositive" else "share <= 0")
    fig.tight_layout()
    return fig


def plot_attention(image, attention, query=None, heads=None, batch_index=0):
    """Where one query looks, per head, drawn on the image.

    Each key's weight covers its strip of ``pool_size`` consecutive tokens
    (see the module docstring); the query is marked with a red square and
    the dropped tail tokens are left blank.
    """
    probs = attention.probabilities[batch_index]
    h, w = attention.grid
    if query is None:
        query = (h // 2) * w + w // 2
    heads = range(probs.shape[0]) if heads is None else heads
    heads = list(heads)
    image = np.asarray(image)
    fig, axes = _figure(1, len(heads) + 1, 2.4)
    axes[0, 0].imshow(image)
    _mark_query(axes[0, 0], query, attention.grid, image.shape[:2])
    axes[0, 0].set_title(f"{attention.block}\nquery {query_position(query, attention.grid)}", fontsize=8)
    for ax, head in zip(axes[0, 1:], heads):
        weights = attention_image(probs[head, query], attention.grid, attention.pool_size)
        ax.imshow(image, alpha=0.35)
        ax.imshow(
            upsample(weights, image.shape[:2]), cmap="magma", alpha=0.75,
            extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5),
        )
        _mark_query(ax, query, attention.grid, image.shape[:2])
        ax.set_title(f"head {head}", fontsize=8)
    fig.tight_layout()
    return fig


def _mark_query(ax, query, grid, image_hw):
    from matplotlib.patches import Rectangle

    row, col = query_position(query, grid)
    sy, sx = image_hw[0] / grid[0], image_hw[1] / grid[1]
    ax.add_patch(Rectangle((col * sx - 0.5, row * sy - 0.5), sx, sy, fill=False, edgecolor="red", lw=1.5))


def plot_key_strips(grid, pool_size):
    """The strips of feature-map positions that make up each key."""
    keys = key_token_map(grid, pool_size)
    fig, axes = _figure(1, 1, 3.2)
    masked = np.ma.masked_less(keys, 0)
    axes[0, 0].imshow(masked, cmap="tab20", interpolation="nearest")
    for (r, c), k in np.ndenumerate(keys):
        if grid[0] * grid[1] <= 400:
            axes[0, 0].text(c, r, "-" if k < 0 else str(k), ha="center", va="center", fontsize=6)
    axes[0, 0].set_title(f"{grid[0]}x{grid[1]} tokens, {pool_size} per key", fontsize=9)
    fig.tight_layout()
    return fig


def plot_class_activation(images, cams, labels=None):
    """Each image with its class activation map overlaid."""
    images = np.asarray(images)
    fig, axes = _figure(1, len(images), 2.6)
    for i, ax in enumerate(axes.flat):
        ax.imshow(images[i])
        ax.imshow(
            upsample(cams[i], images[i].shape[:2]), cmap="jet", alpha=0.45,
            extent=(-0.5, images[i].shape[1] - 0.5, images[i].shape[0] - 0.5, -0.5),
        )
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=8)
    fig.tight_layout()
    return fig


def overlay_segmentation(image, classes, palette=None, alpha=0.5, ignore_index=255):
    """The image blended with the colours of its class map (uint8 RGB)."""
    from .segmentation.ade20k import PALETTE, colorize

    image = np.asarray(image)
    classes = np.asarray(classes)
    if image.shape[:2] != classes.shape:
        raise ValueError(
            f"The class map has shape {classes.shape}, the image {image.shape[:2]}: they must be "
            "the same size (segment() returns maps at the image's size)."
        )
    colours = colorize(classes, PALETTE if palette is None else palette, ignore_index=ignore_index)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def class_areas(classes, ignore_index=255):
    """``[(class, pixel share), ...]`` of a class map, largest first."""
    values, counts = np.unique(np.asarray(classes), return_counts=True)
    keep = values != ignore_index
    values, counts = values[keep], counts[keep]
    order = np.argsort(-counts, kind="stable")
    total = max(int(counts.sum()), 1)
    return [(int(values[i]), counts[i] / total) for i in order]


def plot_segmentation(image, classes, class_names=None, palette=None, alpha=0.5, top=10, title=None):
    """The image, and its class map overlaid with a legend of the ``top``
    largest classes (ADE20K's names and colours by default)."""
    from matplotlib.patches import Patch

    from .segmentation.ade20k import CLASSES, PALETTE

    palette = PALETTE if palette is None else palette
    names = CLASSES if class_names is None else class_names
    fig, axes = _figure(1, 2, 4.0)
    axes[0, 0].imshow(np.asarray(image))
    axes[0, 0].set_title("image")
    axes[0, 1].imshow(overlay_segmentation(image, classes, palette, alpha))
    axes[0, 1].set_title(title or "segmentation")
    handles = []
    for value, share in class_areas(classes)[:top]:
        name = names[value] if value < len(names) else f"class {value}"
        colour = np.asarray(palette[value % len(palette)]) / 255.0
        handles.append(Patch(color=colour, label=f"{name} ({share:.0%})"))
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    return fig


def _detection_colour(label):
    """A fixed, distinct colour per class (golden-angle hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.75, 0.95)
    return np.array([r, g, b])


def overlay_detections(image, result, alpha=0.45):
    """The uint8 image with each detection's mask blended in its class colour
    (no boxes or text: :func:`plot_detections` draws those)."""
    out = np.asarray(image, dtype=np.float32).copy()
    for label, mask in zip(result["labels"], result["masks"]):
        colour = _detection_colour(int(label)) * 255.0
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def plot_detections(image, result, class_names=None, top=None, ax=None, title=None):
    """The image with the detections of :func:`keras_nextvit.detect`: mask
    overlays, boxes, and ``label score`` tags (COCO's names by default).
    ``top`` draws only the best ``top`` detections."""
    from matplotlib.patches import Rectangle

    from .detection.coco import CLASSES

    names = CLASSES if class_names is None else class_names
    count = len(result["scores"]) if top is None else min(int(top), len(result["scores"]))
    shown = {key: np.asarray(value)[:count] for key, value in result.items()}
    if ax is None:
        fig, axes = _figure(1, 1, 6.0)
        ax = axes[0, 0]
    else:
        fig = ax.figure
    ax.imshow(overlay_detections(image, shown))
    for (x1, y1, x2, y2), score, label in zip(shown["boxes"], shown["scores"], shown["labels"]):
        colour = _detection_colour(int(label))
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))
        name = names[int(label)] if int(label) < len(names) else f"class {int(label)}"
        ax.text(x1, y1, f"{name} {score:.2f}", fontsize=7, color="white", va="bottom",
                bbox=dict(facecolor=colour, edgecolor="none", pad=1, alpha=0.8))
    ax.set_title(title or f"{count} detections")
    ax.axis("off")
    return fig
