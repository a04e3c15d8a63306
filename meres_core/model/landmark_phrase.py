"""The landmark phrase of a relational sentence, segmented as a sentence of its own (relation_pick.py).

"The circle left of the red square" places its target by "the red square". Stage 18 segmented the
landmark with a head on the decoder's last map, guided by the whole sentence toward the target's
group; that head never marked the landmark (its probability stayed under 0.3; with Dice it committed
to the wrong cells). The model already segments "the red square" when asked: the phrase after the
relation words becomes one more row of the same batch, on the same image, and its decoder logits
before the priors are the landmark's map (measured with stage 19's weights: "nearest" sentences on
target 53.6% -> 86.1%, "side of" 86.8% -> 91.5% on meres-synth). Like MAttNet's phrase parsing
(Yu et al., CVPR 2018), the split is by the sentence's words, here the relation words of
meres-synth and of common English ("next to", "to the left of"); a sentence without them gets no row.

Rows are arranged for a whole batch: each sentence's phrase gets one row per image, shared by the
sentences that name the same phrase on the same image (and by a sentence that is itself the phrase).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Hashable, Optional, Sequence

import torch

# A landmark is a colour / shape phrase after a relation word and "the", never a side: "closest to
# the left side" places by an edge, not by an object.
_SIDE = r"(?!(left|right|top|bottom)\b)"
NEAREST = re.compile(rf"\b(closest to|nearest to|nearest|next to|beside) the {_SIDE}", re.IGNORECASE)
SIDE_OF = re.compile(rf"\b(left of|right of|above|over|higher than|below|under|beneath|lower than) the {_SIDE}",
                     re.IGNORECASE)


def landmark_phrase(sentence: str) -> Optional[str]:
    """'the red square' for 'the circle left of the red square'; None when the sentence names no landmark."""
    match = NEAREST.search(sentence) or SIDE_OF.search(sentence)
    if match is None:
        return None
    tail = sentence[match.end():].strip(" .,;!?")
    return f"the {tail}" if tail else None


@dataclass
class LandmarkRows:
    """A batch's sentences followed by the landmark phrases they name."""

    sentences: list[str]  # the B sentences, then P phrases
    landmark_index: torch.Tensor  # (B + P,) long: the row of each row's landmark phrase, -1 for none
    source: torch.Tensor  # (B + P,) long: the sentence each row belongs to (its image); itself for the B
    batch: int  # B


def landmark_rows(sentences: Sequence[str], images: Optional[Sequence[Hashable]] = None,
                  known: Optional[Sequence[bool]] = None) -> LandmarkRows:
    """sentences (B); images: a key of each sentence's image (None: all on one image); known: the sentences
    whose phrase may get a row (training: those whose landmark the data names, so the row has a mask to
    learn; None: all) -> the rows."""
    images = list(images) if images is not None else [0] * len(sentences)
    known = list(known) if known is not None else [True] * len(sentences)
    rows = list(sentences)
    row_of = {}  # (image, sentence) -> its first row
    for i, key in enumerate(zip(images, sentences)):
        row_of.setdefault(key, i)
    landmark_index, source = [], list(range(len(sentences)))
    for i, sentence in enumerate(sentences):
        phrase = landmark_phrase(sentence) if known[i] else None
        if phrase is None:
            landmark_index.append(-1)
            continue
        key = (images[i], phrase)
        if key not in row_of:
            row_of[key] = len(rows)
            rows.append(phrase)
            source.append(i)
        landmark_index.append(row_of[key])
    landmark_index += [-1] * (len(rows) - len(sentences))
    return LandmarkRows(rows, torch.tensor(landmark_index, dtype=torch.long), torch.tensor(source, dtype=torch.long),
                        len(sentences))
