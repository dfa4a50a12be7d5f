"""ADE20K (SceneParse150): the 150 class names, their colours, and a colorizer.

The order is the one of the SceneParse150 benchmark and of mmsegmentation's
``ADE20KDataset`` (which the published Next-ViT segmentation checkpoints were
trained with): class ``i`` is channel ``i`` of a 150-class segmenter's logits,
and annotation value ``i + 1`` in the dataset's PNGs (0 is "other", ignored:
see ``reduce_zero_label`` in :mod:`keras_nextvit.segmentation.metrics`).

The colours are the palette mmsegmentation draws ADE20K with. mmsegmentation
spells class 7 ``'bed '`` with a trailing space; here it is ``'bed'``.
"""

import numpy as np

# (name, RGB colour) per class, in class-index order.
_TABLE = (
    ('wall', (120, 120, 120)),  # 0
    ('building', (180, 120, 120)),  # 1
    ('sky', (6, 230, 230)),  # 2
    ('floor', (80, 50, 50)),  # 3
    ('tree', (4, 200, 3)),  # 4
    ('ceiling', (120, 120, 80)),  # 5
    ('road', (140, 140, 140)),  # 6
    ('bed', (204, 5, 255)),  # 7
    ('windowpane', (230, 230, 230)),  # 8
    ('grass', (4, 250, 7)),  # 9
    ('cabinet', (224, 5, 255)),  # 10
    ('sidewalk', (235, 255, 7)),  # 11
    ('person', (150, 5, 61)),  # 12
    ('earth', (120, 120, 70)),  # 13
    ('door', (8, 255, 51)),  # 14
    ('table', (255, 6, 82)),  # 15
    ('mountain', (143, 255, 140)),  # 16
    ('plant', (204, 255, 4)),  # 17
    ('curtain', (255, 51, 7)),  # 18
    ('chair', (204, 70, 3)),  # 19
    ('car', (0, 102, 200)),  # 20
    ('water', (61, 230, 250)),  # 21
    ('painting', (255, 6, 51)),  # 22
    ('sofa', (11, 102, 255)),  # 23
    ('shelf', (255, 7, 71)),  # 24
    ('house', (255, 9, 224)),  # 25
    ('sea', (9, 7, 230)),  # 26
    ('mirror', (220, 220, 220)),  # 27
    ('rug', (255, 9, 92)),  # 28
    ('field', (112, 9, 255)),  # 29
    ('armchair', (8, 255, 214)),  # 30
    ('seat', (7, 255, 224)),  # 31
    ('fence', (255, 184, 6)),  # 32
    ('desk', (10, 255, 71)),  # 33
    ('rock', (255, 41, 10)),  # 34
    ('wardrobe', (7, 255, 255)),  # 35
    ('lamp', (224, 255, 8)),  # 36
    ('bathtub', (102, 8, 255)),  # 37
    ('railing', (255, 61, 6)),  # 38
    ('cushion', (255, 194, 7)),  # 39
    ('base', (255, 122, 8)),  # 40
    ('box', (0, 255, 20)),  # 41
    ('column', (255, 8, 41)),  # 42
    ('signboard', (255, 5, 153)),  # 43
    ('chest of drawers', (6, 51, 255)),  # 44
    ('counter', (235, 12, 255)),  # 45
    ('sand', (160, 150, 20)),  # 46
    ('sink', (0, 163, 255)),  # 47
    ('skyscraper', (140, 140, 140)),  # 48
    ('fireplace', (250, 10, 15)),  # 49
    ('refrigerator', (20, 255, 0)),  # 50
    ('grandstand', (31, 255, 0)),  # 51
    ('path', (255, 31, 0)),  # 52
    ('stairs', (255, 224, 0)),  # 53
    ('runway', (153, 255, 0)),  # 54
    ('case', (0, 0, 255)),  # 55
    ('pool table', (255, 71, 0)),  # 56
    ('pillow', (0, 235, 255)),  # 57
    ('screen door', (0, 173, 255)),  # 58
    ('stairway', (31, 0, 255)),  # 59
    ('river', (11, 200, 200)),  # 60
    ('bridge', (255, 82, 0)),  # 61
    ('bookcase', (0, 255, 245)),  # 62
    ('blind', (0, 61, 255)),  # 63
    ('coffee table', (0, 255, 112)),  # 64
    ('toilet', (0, 255, 133)),  # 65
    ('flower', (255, 0, 0)),  # 66
    ('book', (255, 163, 0)),  # 67
    ('hill', (255, 102, 0)),  # 68
    ('bench', (194, 255, 0)),  # 69
    ('countertop', (0, 143, 255)),  # 70
    ('stove', (51, 255, 0)),  # 71
    ('palm', (0, 82, 255)),  # 72
    ('kitchen island', (0, 255, 41)),  # 73
    ('computer', (0, 255, 173)),  # 74
    ('swivel chair', (10, 0, 255)),  # 75
    ('boat', (173, 255, 0)),  # 76
    ('bar', (0, 255, 153)),  # 77
    ('arcade machine', (255, 92, 0)),  # 78
    ('hovel', (255, 0, 255)),  # 79
    ('bus', (255, 0, 245)),  # 80
    ('towel', (255, 0, 102)),  # 81
    ('light', (255, 173, 0)),  # 82
    ('truck', (255, 0, 20)),  # 83
    ('tower', (255, 184, 184)),  # 84
    ('chandelier', (0, 31, 255)),  # 85
    ('awning', (0, 255, 61)),  # 86
    ('streetlight', (0, 71, 255)),  # 87
    ('booth', (255, 0, 204)),  # 88
    ('television receiver', (0, 255, 194)),  # 89
    ('airplane', (0, 255, 82)),  # 90
    ('dirt track', (0, 10, 255)),  # 91
    ('apparel', (0, 112, 255)),  # 92
    ('pole', (51, 0, 255)),  # 93
    ('land', (0, 194, 255)),  # 94
    ('bannister', (0, 122, 255)),  # 95
    ('escalator', (0, 255, 163)),  # 96
    ('ottoman', (255, 153, 0)),  # 97
    ('bottle', (0, 255, 10)),  # 98
    ('buffet', (255, 112, 0)),  # 99
    ('poster', (143, 255, 0)),  # 100
    ('stage', (82, 0, 255)),  # 101
    ('van', (163, 255, 0)),  # 102
    ('ship', (255, 235, 0)),  # 103
    ('fountain', (8, 184, 170)),  # 104
    ('conveyer belt', (133, 0, 255)),  # 105
    ('canopy', (0, 255, 92)),  # 106
    ('washer', (184, 0, 255)),  # 107
    ('plaything', (255, 0, 31)),  # 108
    ('swimming pool', (0, 184, 255)),  # 109
    ('stool', (0, 214, 255)),  # 110
    ('barrel', (255, 0, 112)),  # 111
    ('basket', (92, 255, 0)),  # 112
    ('waterfall', (0, 224, 255)),  # 113
    ('tent', (112, 224, 255)),  # 114
    ('bag', (70, 184, 160)),  # 115
    ('minibike', (163, 0, 255)),  # 116
    ('cradle', (153, 0, 255)),  # 117
    ('oven', (71, 255, 0)),  # 118
    ('ball', (255, 0, 163)),  # 119
    ('food', (255, 204, 0)),  # 120
    ('step', (255, 0, 143)),  # 121
    ('tank', (0, 255, 235)),  # 122
    ('trade name', (133, 255, 0)),  # 123
    ('microwave', (255, 0, 235)),  # 124
    ('pot', (245, 0, 255)),  # 125
    ('animal', (255, 0, 122)),  # 126
    ('bicycle', (255, 245, 0)),  # 127
    ('lake', (10, 190, 212)),  # 128
    ('dishwasher', (214, 255, 0)),  # 129
    ('screen', (0, 204, 255)),  # 130
    ('blanket', (20, 0, 255)),  # 131
    ('sculpture', (255, 255, 0)),  # 132
    ('hood', (0, 153, 255)),  # 133
    ('sconce', (0, 41, 255)),  # 134
    ('vase', (0, 255, 204)),  # 135
    ('traffic light', (41, 0, 255)),  # 136
    ('tray', (41, 255, 0)),  # 137
    ('ashcan', (173, 0, 255)),  # 138
    ('fan', (0, 245, 255)),  # 139
    ('pier', (71, 0, 255)),  # 140
    ('crt screen', (122, 0, 255)),  # 141
    ('plate', (0, 255, 184)),  # 142
    ('monitor', (0, 92, 255)),  # 143
    ('bulletin board', (184, 255, 0)),  # 144
    ('shower', (0, 133, 255)),  # 145
    ('radiator', (255, 214, 0)),  # 146
    ('glass', (25, 194, 194)),  # 147
    ('clock', (102, 255, 0)),  # 148
    ('flag', (92, 0, 255)),  # 149
)

CLASSES = tuple(name for name, _ in _TABLE)
PALETTE = tuple(colour for _, colour in _TABLE)

NUM_CLASSES = len(CLASSES)


def colorize(class_map, palette=PALETTE, ignore_index=255):
    """Paint a class map with one colour per class.

    Args:
        class_map: integer array ``(H, W)`` of class indices (a prediction, or an
            annotation after ``reduce_zero_label``).
        palette: ``(num_colours, 3)`` RGB colours in 0..255; class ``i`` gets
            ``palette[i]``. Defaults to ADE20K's.
        ignore_index: pixels with this value are painted black (``None``: no
            value is special).

    Returns:
        ``uint8`` array ``(H, W, 3)``.

    Raises:
        ValueError: the map is not a 2-D integer array, the palette is not
            ``(N, 3)`` in 0..255, or a pixel holds a class the palette has no
            colour for (the message names the values and the palette size).
    """
    class_map = np.asarray(class_map)
    if class_map.ndim != 2:
        raise ValueError(
            f"colorize: class_map must be 2-D (H, W), got shape {class_map.shape}"
        )
    if not (np.issubdtype(class_map.dtype, np.integer) or class_map.dtype == bool):
        raise ValueError(
            f"colorize: class_map must hold integer class indices, got dtype {class_map.dtype}"
        )
    colours = np.asarray(palette)
    if colours.ndim != 2 or colours.shape[1] != 3 or colours.shape[0] == 0:
        raise ValueError(f"colorize: palette must have shape (N, 3), got {colours.shape}")
    if np.any(colours < 0) or np.any(colours > 255):
        raise ValueError("colorize: palette colours must lie in 0..255")
    colours = colours.astype(np.uint8)

    class_map = class_map.astype(np.int64)
    ignored = (
        np.zeros(class_map.shape, bool) if ignore_index is None else class_map == ignore_index
    )
    bad = ~ignored & ((class_map < 0) | (class_map >= len(colours)))
    if np.any(bad):
        values = np.unique(class_map[bad])
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise ValueError(
            f"colorize: class_map holds value(s) {shown} outside the palette's "
            f"{len(colours)} colours (0..{len(colours) - 1}; ignore_index={ignore_index})"
        )
    image = np.zeros(class_map.shape + (3,), np.uint8)
    image[~ignored] = colours[class_map[~ignored]]
    return image
