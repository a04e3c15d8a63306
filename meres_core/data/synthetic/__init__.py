"""Synthetic referring scenes in the real REFER format (`meres-synth`).

    vocabulary.py   categories, colours, the sentence templates of each kind
    scene.py        rendering: shapes, background, occlusion, depth
    expressions.py  queries resolved against a scene, and their wordings
    writer.py       images, COCO instances, refs pickle, meta; the `meres-synth` command
"""
from .scene import Scene, Shape, camera_info, render_scene
from .vocabulary import CATEGORIES, CATEGORY_IDS, COLOR_WORDS, COLORS, KINDS, NOUNS, ORDINAL_WORDS, RELATION_WORDS
from .writer import DATASET, SPLITS, VERSION, generate, image_file_name, main

__all__ = ["CATEGORIES", "CATEGORY_IDS", "COLORS", "COLOR_WORDS", "DATASET", "KINDS", "NOUNS", "ORDINAL_WORDS",
           "RELATION_WORDS", "SPLITS", "VERSION", "Scene", "Shape", "camera_info", "generate", "image_file_name",
           "main", "render_scene"]
