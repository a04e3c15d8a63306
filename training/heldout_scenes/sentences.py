"""Sentences: what can be said of a scene's objects (present and absent), chosen per kind and worded."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .drawing import DrawnObject
from .vocabulary import (ATTRIBUTE_TEMPLATES, CATEGORIES, CATEGORY_TEMPLATES, COLORS, KINDS, ORDINAL_TEMPLATES,
                         ORDINALS, RELATION_TEMPLATES, RELATIONS, SIDES, SIZE_TEMPLATES, SPATIAL_TEMPLATES)

POSITION_MARGIN = 0.05  # of the width: target vs nearest rival centroid, for side and order words
SIZE_RATIO = 1.4  # target area vs runner-up area for size words
NEAREST_RATIO = 1.5  # "next to the <landmark>": every rival at least this much farther from it than the target
# A side of a landmark: along that axis the target's centroid lies POSITION_MARGIN beyond the landmark's, and
# every rival's POSITION_MARGIN on the other side of it.
RELATION_AXES = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
SENTENCES_PER_KIND = 1  # per image; a kind a scene cannot offer is made up in the next scenes
MAX_PER_KIND = 3  # per image, so that making up does not crowd one scene with one kind


@dataclass(frozen=True)
class Description:
    """What a sentence says: a base set (category and / or colour; None = any) and a qualifier."""

    kind: str
    category: Optional[str] = None
    color: Optional[str] = None
    side: Optional[str] = None  # spatial: the extreme on this side; ordinal: counted from it
    relation: Optional[str] = None  # spatial, instead of a side: RELATIONS, to the landmark
    landmark: Optional[tuple[Optional[str], Optional[str]]] = None  # its unique (category, colour) name
    rank: Optional[int] = None  # ordinal: 0 = first
    size: Optional[str] = None  # "big" | "small"
    members: int = 0  # how many objects the base set holds (wording of size: "the bigger" needs two)
    absent_type: Optional[str] = None


def _members(objects: list[DrawnObject], category: Optional[str], color: Optional[str]) -> list[int]:
    return [i for i, o in enumerate(objects)
            if category in (None, o.category) and color in (None, o.color)]


def _from_side(objects: list[DrawnObject], members: list[int], side: str) -> tuple[list[int], np.ndarray]:
    """Members ordered as counted from `side`, and their distances from that side: (M,), ascending."""
    axis = 0 if side in ("left", "right") else 1
    flip = side in ("right", "bottom")  # counted from the far end of the axis
    coordinate = np.array([objects[i].centroid[axis] for i in members])
    distance = -coordinate if flip else coordinate
    order = np.argsort(distance, kind="stable")
    return [members[i] for i in order], distance[order]


def present_candidates(objects: list[DrawnObject], width: int) -> dict[str, list[tuple[int, Description]]]:
    """Every (target, description) that picks exactly one object with a clear margin, by kind."""
    margin = POSITION_MARGIN * width
    found: dict[str, list[tuple[int, Description]]] = {kind: [] for kind in KINDS if kind != "absent"}
    bases = {(category, color) for o in objects
             for category in (None, o.category) for color in (None, o.color)}
    for category, color in sorted(bases, key=str):
        members = _members(objects, category, color)
        if len(members) == 1:  # the name alone picks it; a qualifier would add nothing
            kind = "category" if color is None else "attribute"
            found[kind].append((members[0], Description(kind, category, color, members=1)))
            continue
        for side in SIDES:
            ordered, distance = _from_side(objects, members, side)
            gaps = np.diff(distance)  # (M-1,) >= 0: to the next member counted from `side`
            for rank, target in enumerate(ordered[:len(ORDINALS)]):
                clear_before = rank == 0 or gaps[rank - 1] >= margin
                clear_after = rank == len(ordered) - 1 or gaps[rank] >= margin
                if not (clear_before and clear_after):
                    continue
                if rank == 0:
                    found["spatial"].append((target, Description("spatial", category, color, side=side,
                                                                 members=len(members))))
                found["ordinal"].append((target, Description("ordinal", category, color, side=side, rank=rank,
                                                             members=len(members))))
        found["spatial"].extend(_relations(objects, members, category, color, margin))
        by_area = sorted(members, key=lambda i: objects[i].area, reverse=True)
        areas = [objects[i].area for i in by_area]
        if areas[0] >= SIZE_RATIO * areas[1]:
            found["size"].append((by_area[0], Description("size", category, color, size="big",
                                                          members=len(members))))
        if areas[-2] >= SIZE_RATIO * areas[-1]:
            found["size"].append((by_area[-1], Description("size", category, color, size="small",
                                                           members=len(members))))
    return found


def _unique_name(objects: list[DrawnObject], index: int) -> Optional[tuple[Optional[str], Optional[str]]]:
    """The shortest name (category, colour; None = unsaid) that picks out only objects[index]."""
    obj = objects[index]
    for name in ((obj.category, None), (None, obj.color), (obj.category, obj.color)):
        if _members(objects, *name) == [index]:
            return name
    return None


def _relations(objects: list[DrawnObject], members: list[int], category: Optional[str], color: Optional[str],
               margin: float) -> list[tuple[int, Description]]:
    """(target, description) for each landmark and relation that singles out one member: the others lie
    clearly on the other side of the landmark, or clearly farther from it."""
    found = []
    centroids = np.array([o.centroid for o in objects], float)  # (N, 2) x, y
    for landmark in range(len(objects)):
        name = _unique_name(objects, landmark)
        candidates = [i for i in members if i != landmark]
        if name is None or len(candidates) < 2:  # with one candidate the base name alone would do
            continue
        for relation in RELATIONS:
            if relation == "nearest":
                distance = np.linalg.norm(centroids[candidates] - centroids[landmark], axis=1)
                order = np.argsort(distance, kind="stable")
                if distance[order[1]] < NEAREST_RATIO * distance[order[0]]:
                    continue
                target = candidates[order[0]]
            else:
                axis, sign = RELATION_AXES[relation]
                offset = sign * (centroids[candidates, axis] - centroids[landmark, axis])  # > 0: on that side
                beyond = [c for c, o in zip(candidates, offset) if o >= margin]
                if len(beyond) != 1 or sum(o <= -margin for o in offset) != len(candidates) - 1:
                    continue
                target = beyond[0]
            found.append((target, Description("spatial", category, color, relation=relation, landmark=name,
                                              members=len(members))))
    return found


def absent_candidates(objects: list[DrawnObject]) -> list[Description]:
    """Names that match no object, typed by how close they come to a present one (hard negatives)."""
    categories, colors = {o.category for o in objects}, {o.color for o in objects}
    pairs = {(o.category, o.color) for o in objects}
    found = []
    for category in CATEGORIES:
        if category not in categories:
            found.append(Description("absent", category, absent_type="shape_missing"))
        for color in COLORS:
            if (category, color) in pairs:
                continue
            if category not in categories:
                # Only present colours here: "the red heart" next to red circles is the hard case.
                absent_type = "color_present_shape_missing" if color in colors else None
            elif color not in colors:
                absent_type = "shape_present_color_missing"
            else:
                absent_type = "combination_missing"
            if absent_type:
                found.append(Description("absent", category, color, absent_type=absent_type))
    return found


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _noun_phrase(rng: np.random.Generator, category: Optional[str], color: Optional[str]) -> str:
    noun = category or (_pick(rng, ("one", "shape", "object")) if color else _pick(rng, ("shape", "object")))
    return f"{color} {noun}" if color else noun


def wording(rng: np.random.Generator, description: Description) -> str:
    kind = description.kind
    if kind == "spatial" and description.relation:
        template = _pick(rng, RELATION_TEMPLATES[description.relation])
    elif kind == "spatial":
        template = _pick(rng, SPATIAL_TEMPLATES[description.side])
    elif kind == "ordinal":
        template = _pick(rng, ORDINAL_TEMPLATES)
    elif kind == "size":
        options = SIZE_TEMPLATES[(description.size, "any")]
        if description.members == 2:
            options += SIZE_TEMPLATES[(description.size, "two")]
        template = _pick(rng, options)
    elif description.color is None:  # category, or an absent category: worded alike, so form tells nothing
        template = _pick(rng, CATEGORY_TEMPLATES)
    else:  # attribute, or an absent colour + shape
        template = _pick(rng, ATTRIBUTE_TEMPLATES)
    landmark = _noun_phrase(rng, *description.landmark) if description.landmark else None
    text = template.format(np=_noun_phrase(rng, description.category, description.color), side=description.side,
                           ordinal=None if description.rank is None else ORDINALS[description.rank], lm=landmark)
    return "an" + text[1:] if text.startswith("a ") and text[2] in "aeiou" else text  # "an orange star"


def _stratum(description: Description):
    """The facet of a kind that should come out evenly: side, rank, big / small, negative type, ..."""
    return {"spatial": description.relation or description.side, "ordinal": description.rank, "size": description.size,
            "absent": description.absent_type, "attribute": description.category is None}.get(description.kind)


def _choose(rng: np.random.Generator, objects: list[DrawnObject], width: int,
            owed: Counter) -> list[tuple[int, Description]]:
    """SENTENCES_PER_KIND per kind, plus what earlier scenes owed; target -1 = absent.

    `owed` carries over between scenes, so that kinds that few scenes offer (a category seen
    once, a clear size winner) still end up about as frequent as the others. Within a kind a
    stratum is drawn first, then a candidate of it: otherwise "first from the left", always
    available when any rank is, would crowd out "the second ...".
    """
    candidates = present_candidates(objects, width)
    candidates["absent"] = [(-1, description) for description in absent_candidates(objects)]
    chosen = []
    for kind in KINDS:
        strata: dict[object, list[tuple[int, Description]]] = {}
        for candidate in candidates[kind]:
            strata.setdefault(_stratum(candidate[1]), []).append(candidate)
        wanted, taken = SENTENCES_PER_KIND + owed[kind], 0
        while taken < min(wanted, MAX_PER_KIND) and strata:
            key = list(strata)[int(rng.integers(len(strata)))]
            chosen.append(strata[key].pop(int(rng.integers(len(strata[key])))))
            if not strata[key]:
                del strata[key]
            taken += 1
        owed[kind] = wanted - taken
    return chosen


def _sentence(raw: str, sent_id: int, kind: str) -> dict:
    tokens = re.findall(r"[a-z0-9\-]+", raw.lower())
    return {"tokens": tokens, "raw": raw, "sent": " ".join(tokens), "sent_id": sent_id, "kind": kind}
