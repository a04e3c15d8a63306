"""Held-out referring scenes for evaluation only, drawn by code that shares nothing with meres-synth.

`meres-synth` (meres_core/data/synthetic/) draws the training scenes. A model that only learned
its textures, shades and sentence templates scores well on its own test split and fails elsewhere;
this renderer is the "elsewhere". It imports nothing from meres-synth and differs on purpose:
Pillow's ImageDraw instead of OpenCV, its own upright outlines (no rotation jitter), plain / linear
gradient / striped backgrounds over wide hue and brightness ranges, other RGB shades of the same
colour names, flat fills without noise or blur, objects that never touch, and plainer wording
(relations to a landmark included: "the circle next to the red square").
Each object is drawn once, as a mask (4x supersampled, each pixel by majority); the image takes
its flat colour on exactly those pixels, so image and annotation cannot disagree.
Only the vocabulary is shared, because the model must know the words: the seven category names
and eight colour names.

    python -m training.heldout_scenes --out DIR --images 400 [--seed 1] [--size 480x640]

writes the REFER layout meres-synth writes, every ref in split "test":

    DIR/images/heldout_000001.png   RGB
    DIR/synth/instances.json        COCO; compressed RLE masks; a `color` name per annotation
    DIR/synth/refs(synth).p         REFER refs (pickle protocol 2); each sentence has a `kind`
    DIR/meta.json                   generator, seed, counts per kind

so that `python -m training.evaluate --checkpoint demo --split test --data-root DIR
--dataset synth --split-by synth` scores a checkpoint on it. Every sentence is checked against
the drawn masks: a present one selects exactly its target with a clear margin, an absent one
("the black circle" when there is no black circle) matches no object. Output depends only on
(seed, images, size).
"""
from .drawing import (CROSS_HALF_WIDTH, GAP, HEART_SIDE, HEXAGON_RADIUS, MIN_CONTRAST, SCALE_RANGE, SCENE_OBJECTS,
                      SQUARE_HALF_SIDE, STAR_INNER, STAR_RADIUS, TRIANGLE_RADIUS, draw_mask, outline_parts, parts_box,
                      render_scene)
from .sentences import NEAREST_RATIO, POSITION_MARGIN, SIZE_RATIO
from .vocabulary import CATEGORIES, CATEGORY_IDS, KINDS, ORDINALS, SHADES
from .writer import GENERATOR, VERSION, generate, image_file_name, main

__all__ = ["CATEGORIES", "CATEGORY_IDS", "CROSS_HALF_WIDTH", "GAP", "GENERATOR", "HEART_SIDE", "HEXAGON_RADIUS",
           "KINDS", "MIN_CONTRAST", "NEAREST_RATIO", "ORDINALS", "POSITION_MARGIN", "SCALE_RANGE", "SCENE_OBJECTS", "SHADES",
           "SIZE_RATIO", "SQUARE_HALF_SIDE", "STAR_INNER", "STAR_RADIUS", "TRIANGLE_RADIUS", "VERSION", "draw_mask", "generate",
           "image_file_name", "main", "outline_parts", "parts_box", "render_scene"]
