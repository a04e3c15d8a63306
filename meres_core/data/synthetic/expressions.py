"""Expressions: structured queries resolved against a scene's visible shapes, then worded.

A query is kept only when it selects exactly its target, so every sentence is true and
unambiguous by construction.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .scene import Scene, Shape
from .vocabulary import (CATEGORIES, COLOR_WORDS, COLORS, DIRECTIONS, EXTREME, NOUNS, ORDINAL_TEMPLATES, ORDINAL_WORDS,
                         PLAIN, POSTPOSED, RELATION_TEMPLATES, RELATION_WORDS, RELATIONS, SIZE_TEMPLATES, VERBS)

MIN_TARGET_VISIBLE = 0.6  # a target may be at most 40% occluded
MARGIN = 0.05  # of the image side: centroids closer than this are "ambiguous"
SIZE_RATIO = 1.35  # "the biggest" must beat the runner-up by this ratio of unoccluded areas
VISIBLE_SIZE_RATIO = 1.15  # ... and by this one of visible areas, so occlusion cannot flip it
NEAREST_RATIO = 1.3  # "closest to" must beat the runner-up by this distance ratio


@dataclass(frozen=True)
class Query:
    """A description resolved against a scene: base set plus an optional qualifier."""

    kind: str
    category: Optional[str]
    color: Optional[str]
    # ("extreme", dir) | ("relation", rel, landmark index) | ("ordinal", dir, rank) | ("size", "big"/"small")
    qualifier: tuple = ()



def _members(shapes: list[Shape], category: Optional[str], color: Optional[str]) -> list[int]:
    return [i for i, s in enumerate(shapes)
            if (category is None or s.category == category) and (color is None or s.color == color)]


def _short_description(shapes: list[Shape], i: int) -> Optional[tuple[Optional[str], Optional[str]]]:
    """Shortest (category, color) that picks out shape i alone, for use as a landmark."""
    s = shapes[i]
    for category, color in ((s.category, None), (s.category, s.color)):
        if _members(shapes, category, color) == [i]:
            return category, color
    return None


def _queries(shapes: list[Shape], t: int, height: int, width: int) -> list[Query]:
    """Every query that selects exactly shape t."""
    target = shapes[t]
    centroids = np.array([s.centroid for s in shapes])
    margin = MARGIN * np.array([width, height])
    out = []
    if _members(shapes, target.category, None) == [t]:
        out.append(Query("category", target.category, None))
    for category, color in ((target.category, target.color), (None, target.color)):
        if _members(shapes, category, color) == [t]:
            out.append(Query("attribute", category, color))

    bases = {(target.category, None), (target.category, target.color), (None, None), (None, target.color)}
    for category, color in sorted(bases, key=str):
        members = _members(shapes, category, color)
        if len(members) < 2:
            continue
        others = [i for i in members if i != t]
        for direction, (axis, sign) in DIRECTIONS.items():
            key = sign * centroids[:, axis]
            gaps = key[others] - key[t]
            if np.all(gaps >= margin[axis]):
                out.append(Query("spatial", category, color, ("extreme", direction)))
            rank = int((gaps < 0).sum())
            if len(members) >= 3 and rank < len(ORDINAL_WORDS) and np.all(np.abs(gaps) >= margin[axis]):
                out.append(Query("ordinal", category, color, ("ordinal", direction, rank)))
        full = np.array([shapes[i].full_area for i in others])
        visible = np.array([shapes[i].area for i in others])
        if target.full_area >= SIZE_RATIO * full.max() and target.area >= VISIBLE_SIZE_RATIO * visible.max():
            out.append(Query("size", category, color, ("size", "big")))
        if target.full_area * SIZE_RATIO <= full.min() and target.area * VISIBLE_SIZE_RATIO <= visible.min():
            out.append(Query("size", category, color, ("size", "small")))
        out.extend(_relations(shapes, t, members, centroids, margin, category, color))
    return out


def _relations(shapes, t, members, centroids, margin, category, color) -> list[Query]:
    """'the <base> left of / closest to the <landmark>' where the relation singles out t."""
    out = []
    for landmark in range(len(shapes)):
        if landmark == t or _short_description(shapes, landmark) is None:
            continue
        rivals = [i for i in members if i not in (t, landmark)]
        for relation, direction in RELATIONS.items():
            axis, sign = DIRECTIONS[direction]
            offset = sign * (centroids[:, axis] - centroids[landmark, axis])
            # t clearly on that side, every rival clearly not (no centroid in the ambiguous band).
            if offset[t] <= -margin[axis] and all(offset[i] >= 0 for i in rivals):
                out.append(Query("spatial", category, color, ("relation", relation, landmark)))
        dist = np.linalg.norm(centroids - centroids[landmark], axis=1)
        if rivals and all(dist[i] >= NEAREST_RATIO * dist[t] for i in rivals):
            out.append(Query("spatial", category, color, ("relation", "nearest", landmark)))
    return out


def _absent_query(rng: np.random.Generator, shapes: list[Shape]) -> Query:
    """A (category, colour) with no match: a missing category, or a present one in a missing colour.

    Hard negatives: a missing category is named in a colour that is in the scene half the
    time, so neither the colour word nor the shape word alone decides "not here".
    """
    present = {s.category for s in shapes}
    missing_category = [c for c in CATEGORIES if c not in present]
    missing_color = [(c, k) for c in sorted(present) for k in COLORS if not _members(shapes, c, k)]
    if missing_category and (not missing_color or rng.random() < 0.5):
        category = str(rng.choice(missing_category))
        present_colors = sorted({s.color for s in shapes})
        return Query("absent", category, str(rng.choice(present_colors)) if rng.random() < 0.5 else None)
    category, color = missing_color[int(rng.integers(len(missing_color)))]
    return Query("absent", category, color)


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _noun_phrase(rng: np.random.Generator, category: Optional[str], color: Optional[str]) -> str:
    noun = _pick(rng, NOUNS[category])
    return f"{_pick(rng, COLOR_WORDS[color])} {noun}" if color else noun


def _text(rng: np.random.Generator, query: Query, shapes: list[Shape]) -> str:
    """One wording of `query`, drawn from several templates and synonyms."""
    category, color = query.category, query.color
    np_ = _noun_phrase(rng, category, color)
    qualifier = query.qualifier[0] if query.qualifier else None
    if qualifier is None:
        if color and rng.random() < 0.4:
            text = _pick(rng, POSTPOSED).format(noun=_pick(rng, NOUNS[category]),
                                                  color=_pick(rng, COLOR_WORDS[color]))
        else:
            text = _pick(rng, PLAIN).format(np=np_)
    elif qualifier == "extreme":
        text = _pick(rng, EXTREME[query.qualifier[1]]).format(np=np_)
    elif qualifier == "relation":
        _, relation, landmark = query.qualifier
        lm = _noun_phrase(rng, *_short_description(shapes, landmark))
        text = _pick(rng, RELATION_TEMPLATES).format(np=np_, rel=_pick(rng, RELATION_WORDS[relation]), lm=lm)
    elif qualifier == "ordinal":
        _, direction, rank = query.qualifier
        ordinal = ORDINAL_WORDS[rank][int(rng.random() < 0.2)]
        text = _pick(rng, ORDINAL_TEMPLATES).format(ord=ordinal, np=np_, dir=direction)
    else:
        comparative = len(_members(shapes, category, color)) == 2
        text = _pick(rng, SIZE_TEMPLATES[(query.qualifier[1], comparative)]).format(np=np_)
    if text.startswith("the ") and rng.random() < 0.3:
        text = f"{_pick(rng, VERBS)} {text}"
    return text


def _raw(rng: np.random.Generator, text: str) -> str:
    """Annotator-style casing and punctuation; `sent` normalizes it away as in REFER."""
    if rng.random() < 0.3:
        return text[0].upper() + text[1:] + ("." if rng.random() < 0.5 else "")
    return text


def _sentence(raw: str, sent_id: int, kind: str, ranked_ann_ids: Optional[list[int]] = None,
              landmark_ann_id: Optional[int] = None, relation: Optional[str] = None) -> dict:
    tokens = re.sub(r"[^a-z0-9\- ]", "", raw.lower()).split()
    # Interned so that the pickle is byte-identical whether workers were used or not.
    sentence = {"tokens": tokens, "raw": raw, "sent": " ".join(tokens), "sent_id": sent_id, "kind": sys.intern(kind)}
    if ranked_ann_ids is not None:
        sentence["ranked_ann_ids"] = ranked_ann_ids
    if landmark_ann_id is not None:
        sentence["landmark_ann_id"], sentence["relation"] = landmark_ann_id, relation
    return sentence


def _ranked_members(query: Query, shapes: list[Shape]) -> Optional[tuple[int, ...]]:
    """The shapes a positional qualifier ranks ("the second circle from the left": every circle), for
    the extreme, ordinal and relation qualifiers (1.6: "the circle left of the star" picks among every
    circle too); None for the others."""
    if query.qualifier and query.qualifier[0] in ("extreme", "ordinal", "relation"):
        return tuple(_members(shapes, query.category, query.color))
    return None


def _landmark(query: Query) -> Optional[tuple[int, str]]:
    """(the shape a relation places its target by, the relation): ("the circle left of the star": the star,
    "left"), else None."""
    return (query.qualifier[2], query.qualifier[1]) if query.qualifier and query.qualifier[0] == "relation" else None


def _describe(rng: np.random.Generator, scene: Scene, height: int, width: int, absent_rate: float,
              sentences_per_object: int
              ) -> list[tuple[int, str, list[tuple[str, str, Optional[tuple[int, ...]], Optional[tuple[int, str]]]]]]:
    """Refs of one scene as (target index or -1, category,
    [(raw sentence, kind, ranked shape indices, (landmark shape index, relation) or None)])."""
    refs = []
    for t, shape in enumerate(scene.shapes):
        if shape.visible_fraction < MIN_TARGET_VISIBLE:
            continue
        by_kind: dict[str, list[Query]] = {}
        for query in _queries(scene.shapes, t, height, width):
            by_kind.setdefault(query.kind, []).append(query)
        kinds = sorted(by_kind)
        # Distinct kinds per object, so that no kind dominates a ref.
        chosen = [kinds[i] for i in rng.permutation(len(kinds))[:sentences_per_object]]
        queries = [by_kind[k][int(rng.integers(len(by_kind[k])))] for k in chosen]
        if queries:
            refs.append((t, shape.category, [(_raw(rng, _text(rng, q, scene.shapes)), q.kind,
                                              _ranked_members(q, scene.shapes), _landmark(q)) for q in queries]))
    n_sentences = sum(len(sentences) for *_, sentences in refs)
    for _ in range(int(rng.binomial(n_sentences, min(absent_rate, 1.0)))):
        query = _absent_query(rng, scene.shapes)
        refs.append((-1, query.category, [(_raw(rng, _text(rng, query, scene.shapes)), "absent", None, None)]))
    return refs
