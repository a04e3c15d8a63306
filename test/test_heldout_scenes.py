"""The held-out renderer draws what it says, and its sentences say what the scene shows.

Expected values come from the test's own geometry (areas, perimeters, centroids of the
documented outlines) and its own reading of the sentences, recomputed from the written
annotations, not from the generator's helpers.
"""
import json
import math
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from meres_core.data import synthetic
from meres_core.data.refer import ReferDataset
from training import heldout_scenes as hs

H, W = 240, 320
SEED = 5
NUM_IMAGES = 40

SIDE_WORDS = {"left": "left", "leftmost": "left", "right": "right", "rightmost": "right",
              "top": "top", "highest": "top", "bottom": "bottom", "lowest": "bottom"}
BIG_WORDS = {"biggest", "largest", "large", "bigger", "big"}
SMALL_WORDS = {"smallest", "tiniest", "small", "smaller", "little"}
TWO_ONLY_WORDS = {"large", "bigger", "big", "small", "smaller", "little"}  # wrong with three or more


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("heldout")
    meta = hs.generate(out, NUM_IMAGES, seed=SEED, height=H, width=W)
    refs = pickle.loads((out / "synth" / "refs(synth).p").read_bytes())
    instances = json.loads((out / "synth" / "instances.json").read_text())
    return out, meta, refs, instances


def decode(segmentation) -> np.ndarray:
    return mask_utils.decode(segmentation).astype(bool)


def outline_area_and_perimeter(category: str, scale: int) -> tuple[float, float]:
    """Of the continuous outline the module documents, from first principles."""
    if category == "circle":
        return math.pi * scale ** 2, 2 * math.pi * scale
    # Axis-parallel edges are snapped to pixel borders: an odd number of whole pixels across.
    if category == "square":
        side = 2 * round(hs.SQUARE_HALF_SIDE * scale) + 1
        return side ** 2, 4 * side
    if category == "cross":
        length, width = 2 * scale + 1, 2 * round(hs.CROSS_HALF_WIDTH * scale) + 1
        return 2 * length * width - width ** 2, 4 * length
    if category == "triangle":
        radius = hs.TRIANGLE_RADIUS * scale
        return 3 * math.sqrt(3) / 4 * radius ** 2, 3 * math.sqrt(3) * radius
    if category == "hexagon":
        radius = hs.HEXAGON_RADIUS * scale
        return 3 * math.sqrt(3) / 2 * radius ** 2, 6 * radius
    if category == "star":
        outer = hs.STAR_RADIUS * scale
        inner = hs.STAR_INNER * outer
        edge = math.sqrt(outer ** 2 + inner ** 2 - 2 * outer * inner * math.cos(math.pi / 5))
        return 10 * 0.5 * outer * inner * math.sin(math.pi / 5), 10 * edge
    if category == "heart":  # square plus two half-discs; outline: two lower edges and two half-circles
        side = hs.HEART_SIDE * scale
        return side ** 2 * (1 + math.pi / 4), 2 * side + math.pi * side
    raise AssertionError(category)


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("category", hs.CATEGORIES)
@pytest.mark.parametrize("scale", [12, 24, 60])
def test_outlines_have_the_intended_area_and_centroid(category, scale):
    parts = hs.outline_parts(category, 200, 190, scale)
    mask = hs.draw_mask(parts, 400, 410)
    area, perimeter = outline_area_and_perimeter(category, scale)
    # A pixel is in the mask when at least half covered: the count can be off by at most a
    # fraction of the pixels along the outline, a few percent from the smallest scene scale on.
    assert abs(mask.sum() - area) <= 0.4 * perimeter
    assert mask.sum() == pytest.approx(area, rel={12: 0.1, 24: 0.04, 60: 0.02}[scale])
    assert np.abs(centroid(mask) - (200, 190)).max() <= 0.5
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = hs.parts_box(parts)
    assert x0 <= xs.min() <= x0 + 1 and x1 - 1 <= xs.max() <= x1
    assert y0 <= ys.min() <= y0 + 1 and y1 - 1 <= ys.max() <= y1


def test_axis_parallel_shapes_are_exact():
    for category, scale in (("square", 17), ("cross", 23), ("square", 40)):
        assert hs.draw_mask(hs.outline_parts(category, 100, 90, scale), 200, 210).sum() == \
            outline_area_and_perimeter(category, scale)[0]


def test_vocabulary_is_the_trained_one_but_not_its_shades():
    assert hs.CATEGORIES == synthetic.CATEGORIES
    assert hs.CATEGORY_IDS == synthetic.CATEGORY_IDS
    assert set(hs.SHADES) == set(synthetic.COLORS)
    for name, shades in hs.SHADES.items():
        assert 2 <= len(shades) and synthetic.COLORS[name] not in shades


def image_annotations(instances, image_id):
    return [a for a in instances["annotations"] if a["image_id"] == image_id]


@pytest.mark.parametrize("image_id", [1, 2, 3, 7, 19])
def test_written_image_and_masks_are_the_drawn_scene(written, image_id):
    out, _, _, instances = written
    scene = hs.render_scene(SEED, image_id, H, W)
    annotations = image_annotations(instances, image_id)
    assert hs.SCENE_OBJECTS[0] <= len(scene.objects) == len(annotations) <= hs.SCENE_OBJECTS[1]
    image = np.asarray(Image.open(out / "images" / hs.image_file_name(image_id)).convert("RGB"))
    assert np.array_equal(image, scene.image)

    union = np.zeros((H, W), bool)
    for obj, ann in zip(scene.objects, annotations):
        mask = decode(ann["segmentation"])
        assert np.array_equal(mask, hs.draw_mask(obj.parts, H, W))
        assert hs.CATEGORIES[ann["category_id"] - 1] == obj.category and ann["color"] == obj.color
        assert obj.rgb in hs.SHADES[obj.color]
        assert ann["area"] == mask.sum() and ann["iscrowd"] == 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        # Where it was placed, at the size it was given.
        assert np.abs(centroid(mask) - obj.center).max() <= 0.5
        area, perimeter = outline_area_and_perimeter(obj.category, obj.scale)
        assert abs(mask.sum() - area) <= 0.4 * perimeter
        assert hs.SCALE_RANGE[0] * min(H, W) - 0.5 <= obj.scale <= hs.SCALE_RANGE[1] * min(H, W) + 0.5
        assert (image[mask] == obj.rgb).all()  # flat fill exactly on the mask
        assert not (union & mask).any()
        union |= mask
    assert np.array_equal(image[~union], scene.background[~union])


def test_objects_stand_out_from_the_background_under_them():
    styles = set()
    for image_id in range(1, NUM_IMAGES + 1):
        scene = hs.render_scene(SEED, image_id, H, W)
        styles.add(scene.background_style)
        for obj in scene.objects:
            distance = np.linalg.norm(scene.background[obj.mask].astype(float) - obj.rgb, axis=1)  # (N,)
            assert np.percentile(distance, 10) >= hs.MIN_CONTRAST
    assert styles == {"plain", "gradient", "striped"}


def test_objects_keep_apart_and_inside(written):
    _, _, _, instances = written
    gap = math.ceil(hs.GAP * W)
    for image in instances["images"]:
        boxes = [a["bbox"] for a in image_annotations(instances, image["id"])]
        for i, (x, y, w, h) in enumerate(boxes):
            assert x >= gap and y >= gap and x + w <= W - gap and y + h <= H - gap
            for ox, oy, ow, oh in boxes[i + 1:]:
                # Separated along x or along y by at least the gap (boxes hold their masks).
                assert ox - (x + w) >= gap or x - (ox + ow) >= gap or oy - (y + h) >= gap or y - (oy + oh) >= gap


def read_sentence(tokens: list[str]) -> dict:
    """The test's own reading: which category, colour, side, rank and size a sentence names."""
    categories = [t for t in tokens if t in hs.CATEGORIES]
    colors = [t for t in tokens if t in hs.SHADES]
    sides = [SIDE_WORDS[t] for t in tokens if t in SIDE_WORDS]
    ranks = [hs.ORDINALS.index(t) for t in tokens if t in hs.ORDINALS]
    sizes = ["big" for t in tokens if t in BIG_WORDS] + ["small" for t in tokens if t in SMALL_WORDS]
    assert len(categories) <= 1 and len(colors) <= 1 and len(sides) <= 1 and len(ranks) <= 1 and len(sizes) <= 1
    first = lambda found: found[0] if found else None  # noqa: E731
    return {"category": first(categories), "color": first(colors), "side": first(sides),
            "rank": first(ranks), "size": first(sizes), "two_only": bool(TWO_ONLY_WORDS & set(tokens))}


# Relation phrases (the test's own list) -> (axis, sign of the target's offset from the landmark), None: nearness.
RELATION_PHRASES = {("left", "of"): (0, -1), ("right", "of"): (0, 1), ("above",): (1, -1), ("over",): (1, -1),
                    ("below",): (1, 1), ("under",): (1, 1), ("next", "to"): None, ("closest", "to"): None,
                    ("nearest", "to"): None}


def split_relation(tokens: list[str]):
    """(subject tokens, relation, landmark tokens) when the sentence relates its target to a named object,
    else None ("closest to the left edge" names an edge, no object)."""
    for start in range(len(tokens)):
        for phrase, relation in RELATION_PHRASES.items():
            tail = tokens[start + len(phrase):]
            if tuple(tokens[start:start + len(phrase)]) == phrase and set(tail) & (set(hs.CATEGORIES) | set(hs.SHADES)):
                return tokens[:start], relation, tail
    return None


def test_every_sentence_picks_out_its_target(written):
    _, meta, refs, instances = written
    names = {c["id"]: c["name"] for c in instances["categories"]}
    objects = {}  # ann_id -> (image_id, category, colour, area, centroid)
    for ann in instances["annotations"]:
        objects[ann["id"]] = (ann["image_id"], names[ann["category_id"]], ann["color"], ann["area"],
                              centroid(decode(ann["segmentation"])))
    margin = hs.POSITION_MARGIN * W
    checked = relations_checked = 0
    for ref in refs:
        for sentence in ref["sentences"]:
            related = split_relation(sentence["tokens"])
            said, kind = read_sentence(related[0] if related else sentence["tokens"]), sentence["kind"]
            members = [i for i, (image_id, category, color, _, _) in objects.items()
                       if image_id == ref["image_id"] and said["category"] in (None, category)
                       and said["color"] in (None, color)]
            if kind == "absent":
                assert ref["ann_id"] == -1 and ref["no_target"] and said["category"] and members == []
                assert ref["category_id"] == hs.CATEGORY_IDS[said["category"]]
                continue
            target = ref["ann_id"]
            assert target in members and "no_target" not in ref and ref["category_id"] == hs.CATEGORY_IDS[
                objects[target][1]]
            if kind == "category":
                assert said["category"] and not said["color"] and members == [target]
            elif kind == "attribute":
                assert said["color"] and members == [target]
            elif related:
                _, relation, landmark_tokens = related
                named = read_sentence(landmark_tokens)
                landmarks = [i for i, (image_id, category, color, _, _) in objects.items()
                             if image_id == ref["image_id"] and named["category"] in (None, category)
                             and named["color"] in (None, color)]
                assert kind == "spatial" and len(landmarks) == 1 and target != landmarks[0], sentence["raw"]
                landmark = np.array(objects[landmarks[0]][4])
                rivals = [i for i in members if i not in (target, landmarks[0])]
                assert rivals, sentence["raw"]  # without one the name alone would do
                if relation is None:
                    near = np.linalg.norm(np.array(objects[target][4]) - landmark)
                    assert all(np.linalg.norm(np.array(objects[i][4]) - landmark) >= hs.NEAREST_RATIO * near
                               for i in rivals), sentence["raw"]
                else:
                    axis, sign = relation
                    offset = {i: sign * (objects[i][4][axis] - landmark[axis]) for i in members}
                    assert offset[target] >= margin and all(offset[i] <= -margin for i in rivals), sentence["raw"]
                relations_checked += 1
            elif kind in ("spatial", "ordinal"):
                axis = 0 if said["side"] in ("left", "right") else 1
                sign = -1 if said["side"] in ("right", "bottom") else 1  # distance from that side grows
                distance = {i: sign * objects[i][4][axis] for i in members}
                others = [distance[i] - distance[target] for i in members if i != target]
                assert others, sentence["raw"]
                if kind == "spatial":
                    assert said["rank"] is None and min(others) >= margin, sentence["raw"]
                else:
                    assert sum(d < 0 for d in others) == said["rank"], sentence["raw"]
                    assert min(abs(d) for d in others) >= margin, sentence["raw"]
            elif kind == "size":
                others = [objects[i][3] for i in members if i != target]
                assert others and said["size"], sentence["raw"]
                if said["size"] == "big":
                    assert objects[target][3] >= hs.SIZE_RATIO * max(others), sentence["raw"]
                else:
                    assert objects[target][3] * hs.SIZE_RATIO <= min(others), sentence["raw"]
                assert len(members) == 2 or not said["two_only"], sentence["raw"]
            else:
                raise AssertionError(kind)
            checked += 1
    assert checked == meta["sentences"] - meta["kinds"]["absent"] > 0
    assert relations_checked >= 0.3 * meta["kinds"]["spatial"]  # both spatial forms are asked


def test_refs_layout_meta_and_balance(written):
    _, meta, refs, instances = written
    sentences = [s for r in refs for s in r["sentences"]]
    assert meta["generator"] == hs.GENERATOR and meta["seed"] == SEED and meta["num_images"] == NUM_IMAGES
    assert meta["refs"] == len(refs) and meta["sentences"] == len(sentences)
    assert meta["annotations"] == len(instances["annotations"]) and len(instances["images"]) == NUM_IMAGES
    assert meta["kinds"] == {k: sum(s["kind"] == k for s in sentences) for k in hs.KINDS}
    assert sum(meta["absent_types"].values()) == meta["kinds"]["absent"]
    assert sum(meta["backgrounds"].values()) == NUM_IMAGES
    # One per kind per image, kinds a scene lacks made up later: roughly balanced.
    assert min(meta["kinds"].values()) >= 0.8 * NUM_IMAGES and max(meta["kinds"].values()) <= NUM_IMAGES
    assert all(meta["absent_types"].values())
    assert [s["sent_id"] for s in sentences] == list(range(1, len(sentences) + 1))
    for ref in refs:
        assert ref["split"] == "test" and ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        for s in ref["sentences"]:
            assert s["sent"] == " ".join(s["tokens"]) and s["tokens"] and s["raw"].lower().startswith(s["tokens"][0])
    assert not any(" a orange" in f" {s['raw']}" for s in sentences)


def test_refer_dataset_reads_it(written):
    out, meta, _, instances = written
    dataset = ReferDataset(out, dataset="synth", split_by="synth", split="test", img_size=64, keep_original=True)
    assert len(dataset) == meta["sentences"]
    assert dict(dataset.sentences_by_kind()) == {k: n for k, n in meta["kinds"].items() if n}
    ann_index = {a["id"]: i for image in instances["images"]
                 for i, a in enumerate(image_annotations(instances, image["id"]))}
    seen = set()
    for index in range(len(dataset)):
        ref, sentence = dataset.samples[index]
        if ref["image_id"] > 6 and sentence["kind"] in seen:
            continue  # every kind once, plus all of the first images, keeps this fast
        seen.add(sentence["kind"])
        sample = dataset[index]
        scene = hs.render_scene(SEED, ref["image_id"], H, W)
        assert np.array_equal(sample["orig_image"], scene.image)
        assert sample["kind"] == sentence["kind"] and sample["no_target"] == (sentence["kind"] == "absent")
        if sample["no_target"]:
            assert not sample["orig_mask"].any()
        else:
            assert np.array_equal(sample["orig_mask"], scene.objects[ann_index[ref["ann_id"]]].mask)
    assert seen == set(hs.KINDS) and not dataset.skipped


def test_same_seed_same_files_other_seed_other_scenes(tmp_path):
    files = ["meta.json", "synth/instances.json", "synth/refs(synth).p", "images/heldout_000003.png"]
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        hs.generate(tmp_path / name, 3, seed=seed, height=160, width=200)
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    for f in files[2:]:
        assert (tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes()


def test_command_line(tmp_path, capsys):
    hs.main(["--out", str(tmp_path), "--images", "2", "--seed", "3", "--size", "200x260"])
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert (meta["seed"], meta["num_images"], meta["height"], meta["width"]) == (3, 2, 200, 260)
    assert Image.open(tmp_path / "images" / "heldout_000002.png").size == (260, 200)
    assert "2 images" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        hs.main(["--out", str(tmp_path), "--images", "2", "--size", "200by260"])
