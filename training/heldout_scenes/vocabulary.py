"""Words of the held-out scenes: kinds, categories, the shades of each colour name, sentence templates."""
from __future__ import annotations

KINDS = ("category", "attribute", "spatial", "ordinal", "size", "absent")

# The words the model was trained on; ids in meres-synth's order so per-category filters agree.
CATEGORIES = ("circle", "square", "triangle", "star", "hexagon", "heart", "cross")
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(CATEGORIES)}
# Shades of each colour name, none equal to meres-synth's single value per name.
SHADES = {
    "red": ((200, 20, 40), (230, 60, 50), (170, 15, 25)),
    "green": ((30, 135, 45), (90, 195, 75), (25, 155, 75)),
    "blue": ((25, 55, 185), (65, 110, 240), (15, 35, 140)),
    "yellow": ((250, 230, 70), (225, 195, 15), (255, 240, 120)),
    "purple": ((115, 35, 155), (160, 75, 200), (95, 25, 120)),
    "orange": ((250, 115, 15), (235, 155, 45), (215, 100, 10)),
    "white": ((255, 255, 255), (232, 234, 228), (240, 240, 252)),
    "black": ((8, 8, 8), (45, 42, 40), (30, 32, 45)),
}
COLORS = tuple(SHADES)

SIDES = ("left", "right", "top", "bottom")
ORDINALS = ("first", "second", "third", "fourth")

CATEGORY_TEMPLATES = ("the {np}", "a {np}", "the only {np}", "the {np} in the picture")
ATTRIBUTE_TEMPLATES = ("the {np}", "a {np}", "the {np} in the picture")
SPATIAL_TEMPLATES = {
    "left": ("the {np} on the far left", "the leftmost {np}", "the {np} furthest left",
             "the {np} closest to the left edge"),
    "right": ("the {np} on the far right", "the rightmost {np}", "the {np} furthest right",
              "the {np} closest to the right edge"),
    "top": ("the top {np}", "the highest {np}", "the {np} nearest the top", "the {np} closest to the top edge"),
    "bottom": ("the lowest {np}", "the bottom {np}", "the {np} nearest the bottom",
               "the {np} closest to the bottom edge"),
}
# "The cup left of the laptop": a side of, or nearness to, a landmark named by its own unique name. Own
# wordings; "next to" is one meres-synth never uses.
RELATIONS = ("left of", "right of", "above", "below", "nearest")
RELATION_TEMPLATES = {
    "left of": ("the {np} to the left of the {lm}", "the {np} left of the {lm}"),
    "right of": ("the {np} to the right of the {lm}", "the {np} right of the {lm}"),
    "above": ("the {np} above the {lm}", "the {np} over the {lm}"),
    "below": ("the {np} below the {lm}", "the {np} under the {lm}"),
    "nearest": ("the {np} next to the {lm}", "the {np} closest to the {lm}", "the {np} nearest to the {lm}"),
}
ORDINAL_TEMPLATES = ("the {ordinal} {np} from the {side}", "the {np} {ordinal} from the {side}",
                     "the {ordinal} {np} when counting from the {side}")
SIZE_TEMPLATES = {  # superlatives always; the positive and comparative only when there are two
    ("big", "any"): ("the biggest {np}", "the largest {np}"),
    ("big", "two"): ("the large {np}", "the bigger {np}", "the big {np}"),
    ("small", "any"): ("the smallest {np}", "the tiniest {np}"),
    ("small", "two"): ("the small {np}", "the smaller {np}", "the little {np}"),
}
ABSENT_TYPES = ("shape_missing", "color_present_shape_missing", "shape_present_color_missing",
                "combination_missing")
