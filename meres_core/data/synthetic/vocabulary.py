"""Words of the synthetic scenes: categories, colours and the sentence templates of each kind."""
from __future__ import annotations

KINDS = ("category", "attribute", "spatial", "ordinal", "size", "absent")

CATEGORIES = ("circle", "square", "triangle", "star", "hexagon", "heart", "cross")
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(CATEGORIES)}
NOUNS = {
    "circle": ("circle", "disk", "disc", "round shape"),
    "square": ("square", "box", "block", "square shape"),
    "triangle": ("triangle", "triangular shape", "wedge"),
    "star": ("star", "star shape", "five-pointed star"),
    "hexagon": ("hexagon", "hex", "six-sided shape"),
    "heart": ("heart", "heart shape", "love heart"),
    "cross": ("cross", "plus sign", "plus shape"),
    None: ("shape", "object", "item", "one"),
}
COLORS = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 75, 215),
    "yellow": (240, 215, 45),
    "purple": (135, 50, 175),
    "orange": (245, 135, 25),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLOR_WORDS = {name: (name,) for name in COLORS} | {"purple": ("purple", "violet")}

# Image-space direction -> (axis, sign): the extreme in that direction has the
# smallest sign * coordinate.
DIRECTIONS = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}
RELATIONS = {"left": "left", "right": "right", "above": "top", "below": "bottom"}

PLAIN = ("the {np}", "{np}", "the {np} in the image", "the {np} in the scene", "the only {np}")  # "the only" (1.5)
POSTPOSED = ("the {noun} that is {color}", "the {color} colored {noun}", "the {noun} colored {color}",
             "the {noun} in {color}")
# "nearest the ... edge" (1.5): "closest to" is otherwise only the relation to a landmark.
EXTREME = {
    "left": ("the leftmost {np}", "the {np} on the far left", "the {np} furthest to the left", "the left-most {np}",
             "the {np} nearest the left edge", "the {np} closest to the left side"),
    "right": ("the rightmost {np}", "the {np} on the far right", "the {np} furthest to the right",
              "the right-most {np}", "the {np} nearest the right edge", "the {np} closest to the right side"),
    "top": ("the topmost {np}", "the highest {np}", "the {np} at the very top", "the uppermost {np}",
            "the {np} nearest the top edge", "the {np} closest to the top of the image"),
    "bottom": ("the bottommost {np}", "the lowest {np}", "the {np} at the very bottom", "the lowermost {np}",
               "the {np} nearest the bottom edge", "the {np} closest to the bottom of the image"),
}
RELATION_WORDS = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over", "higher than"),
    "below": ("below", "under", "beneath", "lower than"),
    "nearest": ("closest to", "nearest to", "nearest"),
}
RELATION_TEMPLATES = ("the {np} {rel} the {lm}", "the {np} that is {rel} the {lm}", "the {np} located {rel} the {lm}")
ORDINAL_WORDS = (("first", "1st"), ("second", "2nd"), ("third", "3rd"), ("fourth", "4th"))
ORDINAL_TEMPLATES = ("the {ord} {np} from the {dir}", "the {ord} {np} counting from the {dir}",
                     "counting from the {dir}, the {ord} {np}", "the {np} that is {ord} from the {dir}")
SIZE_TEMPLATES = {
    ("big", True): ("the bigger {np}", "the larger {np}", "the big {np}", "the {np} that is bigger"),
    ("small", True): ("the smaller {np}", "the little {np}", "the small {np}", "the {np} that is smaller"),
    ("big", False): ("the biggest {np}", "the largest {np}", "the {np} that is the biggest"),
    ("small", False): ("the smallest {np}", "the tiniest {np}", "the {np} that is the smallest"),
}
VERBS = ("pick up", "grab", "take", "point to", "find", "segment", "show me", "hand me")
