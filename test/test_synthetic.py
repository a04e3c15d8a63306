import hashlib
import json
import pickle
import re

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from meres_core.data import synthetic
from meres_core.data.synthetic import expressions, writer
from meres_core.data.synthetic import (COLOR_WORDS, NOUNS, ORDINAL_WORDS, RELATION_WORDS, generate, main,
                                       render_scene)

H, W = 240, 320
KINDS = {"category", "attribute", "spatial", "ordinal", "size", "absent"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    meta = generate(out, 10, seed=3, height=H, width=W)
    refs = pickle.loads((out / "synth" / "refs(synth).p").read_bytes())
    instances = json.loads((out / "synth" / "instances.json").read_text())
    return out, meta, refs, instances


def decode(segmentation, h=H, w=W):
    if isinstance(segmentation, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))).astype(bool)
    return mask_utils.decode(segmentation).astype(bool)


def test_layout_and_meta(synth):
    out, meta, refs, instances = synth
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"synth_{i:06d}.png" for i in range(1, 11)]
    image = cv2.imread(str(out / "images" / "synth_000001.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    depth = cv2.imread(str(out / "depth" / "synth_000001.png"), cv2.IMREAD_UNCHANGED)
    assert depth.shape == (H, W) and depth.dtype == np.uint16 and depth.min() > 0
    camera = json.loads((out / "camera_info.json").read_text())
    assert {"width", "height", "fx", "fy", "cx", "cy"} <= set(camera) and camera["width"] == W

    assert meta["seed"] == 3 and meta["version"] == synthetic.VERSION
    assert sum(meta["images"].values()) == 10 and set(meta["images"]) == {"train", "val", "test"}
    assert sum(meta["refs"].values()) == len(refs)
    sentences = [s for r in refs for s in r["sentences"]]
    assert sum(meta["sentences"].values()) == len(sentences) == sum(meta["kinds"].values())
    assert set(meta["kinds"]) == KINDS and all(meta["kinds"].values())

    assert len(instances["images"]) == 10 and len(instances["categories"]) == len(synthetic.CATEGORIES)
    kinds = {type(a["segmentation"]).__name__ for a in instances["annotations"]}
    assert kinds == {"list", "dict"}  # polygons and RLE both occur
    for image_id in (1, 2):
        anns = [a for a in instances["annotations"] if a["image_id"] == image_id]
        shapes = render_scene(3, image_id, H, W, depth=False).shapes  # annotations are in draw order
        assert len(anns) == len(shapes)
        for ann, shape in zip(anns, shapes):
            rle = mask_utils.encode(np.asfortranarray(shape.visible.astype(np.uint8)))
            assert ann["area"] == shape.area and ann["bbox"] == mask_utils.toBbox(rle).tolist()
            assert ann["iscrowd"] == 0 and ann["color"] == shape.color
            assert ann["category_id"] == synthetic.CATEGORY_IDS[shape.category]


def test_refs_have_the_refer_format(synth):
    _, _, refs, instances = synth
    ann_ids = {a["id"]: a for a in instances["annotations"]}
    sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
    assert len(set(sent_ids)) == len(sent_ids)
    for ref in refs:
        keys = {"ref_id", "ann_id", "image_id", "category_id", "split", "sentences", "sent_ids", "file_name"}
        assert keys <= set(ref)
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        for s in ref["sentences"]:
            assert s["kind"] in KINDS and s["tokens"] == s["sent"].split() and s["raw"].strip()
        if ref["ann_id"] == -1:
            assert ref["no_target"] is True and [s["kind"] for s in ref["sentences"]] == ["absent"]
        else:
            ann = ann_ids[ref["ann_id"]]
            assert ann["image_id"] == ref["image_id"] and ann["category_id"] == ref["category_id"]
    # Images, not refs, are split: every image belongs to one split.
    split_of = {}
    for ref in refs:
        assert split_of.setdefault(ref["image_id"], ref["split"]) == ref["split"]


# --- an independent reading of the sentences, to check them against the annotations

CATEGORY_OF = {word: c for c, words in NOUNS.items() if c for word in words}
COLOR_OF = {word: c for c, words in COLOR_WORDS.items() for word in words}
RELATION_OF = {phrase: rel for rel, phrases in RELATION_WORDS.items() for phrase in phrases}
EXTREMES = {"left": ("leftmost", "left-most", "far left", "furthest to the left", "left edge", "left side"),
            "right": ("rightmost", "right-most", "far right", "furthest to the right", "right edge", "right side"),
            "top": ("topmost", "highest", "very top", "uppermost", "top edge", "top of the image"),
            "bottom": ("bottommost", "lowest", "very bottom", "lowermost", "bottom edge", "bottom of the image")}
SIZES = {"big": ("biggest", "largest", "bigger", "larger", "big"), "small": ("smallest", "tiniest", "smaller",
                                                                          "little", "small")}
ORDINAL_OF = {word: rank for rank, words in enumerate(ORDINAL_WORDS) for word in words}


def find(text, phrases):
    """The longest phrase of `phrases` occurring as whole words in text, or None."""
    for phrase in sorted(phrases, key=len, reverse=True):
        if re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text):
            return phrase
    return None


def noun_phrase(text):
    category = find(text, CATEGORY_OF)
    color = find(text, COLOR_OF)
    return CATEGORY_OF.get(category), COLOR_OF.get(color)


def objects_of(image_id, instances):
    names = {c["id"]: c["name"] for c in instances["categories"]}
    objects = []
    for ann in instances["annotations"]:
        if ann["image_id"] == image_id:
            ys, xs = np.nonzero(decode(ann["segmentation"]))
            objects.append({"id": ann["id"], "category": names[ann["category_id"]], "color": ann["color"],
                            "x": xs.mean(), "y": ys.mean(), "area": len(xs)})
    return objects


def matching(objects, category, color):
    return [o for o in objects if category in (None, o["category"]) and color in (None, o["color"])]


def key(o, direction):
    return {"left": o["x"], "right": -o["x"], "top": o["y"], "bottom": -o["y"]}[direction]


def check_sentence(sent, kind, ann_id, objects, ranked_ann_ids=None, landmark_ann_id=None, relation_name=None):
    """Assert that `sent` refers to exactly the object `ann_id` (-1: to nothing), that `ranked_ann_ids`
    are the objects its extreme, ordinal or relation qualifier picks among (None for other sentences), and
    that `landmark_ann_id` is the object a relation places its target by and `relation_name` the relation
    (None for other sentences)."""
    # "closest to the left side" names an image side, not a landmark.
    is_extreme = any(find(sent, words) for words in EXTREMES.values())
    relation = None if is_extreme else find(sent, RELATION_OF)
    head = sent.split(f" {relation} ")[0] if relation else sent
    candidates = matching(objects, *noun_phrase(head))
    ids = [o["id"] for o in candidates]
    if kind == "absent":
        assert ann_id == -1 and not candidates and ranked_ann_ids is None and landmark_ann_id is None, sent
        return
    target = next(o for o in objects if o["id"] == ann_id)
    assert ann_id in ids, sent
    others = [o for o in candidates if o["id"] != ann_id]
    extreme = next((d for d, words in EXTREMES.items() if find(head, words)), None)
    ordinal = find(head, ORDINAL_OF)
    size = next((s for s, words in SIZES.items() if find(head, words)), None)
    if kind in ("spatial", "ordinal"):
        assert ranked_ann_ids is not None and sorted(ranked_ann_ids) == sorted(ids), sent
    else:
        assert ranked_ann_ids is None, sent
    if not (kind == "spatial" and relation):
        assert landmark_ann_id is None and relation_name is None, sent
    if kind in ("category", "attribute"):
        assert ids == [ann_id], sent
    elif kind == "spatial" and relation:
        landmarks = matching(objects, *noun_phrase(sent.split(f" {relation} ", 1)[1]))
        assert len(landmarks) == 1 and landmarks[0]["id"] != ann_id, sent
        landmark = landmarks[0]
        assert landmark_ann_id == landmark["id"], sent
        rivals = [o for o in others if o["id"] != landmark["id"]]
        rel = RELATION_OF[relation]
        assert relation_name == rel, sent
        if rel == "nearest":
            dist = {o["id"]: np.hypot(o["x"] - landmark["x"], o["y"] - landmark["y"]) for o in candidates}
            assert all(dist[o["id"]] > dist[ann_id] for o in rivals), sent
        else:
            direction = {"left": "left", "right": "right", "above": "top", "below": "bottom"}[rel]
            assert key(target, direction) < key(landmark, direction), sent
            assert all(key(o, direction) > key(landmark, direction) - 1 for o in rivals), sent
    elif kind == "spatial":
        assert extreme and others, sent
        assert all(key(o, extreme) > key(target, extreme) for o in others), sent
    elif kind == "ordinal":
        direction = re.search(r"from the (left|right|top|bottom)", head)[1]
        ranked = sorted(candidates, key=lambda o: key(o, direction))
        assert ranked[ORDINAL_OF[ordinal]]["id"] == ann_id, sent
    elif kind == "size":
        assert size and others, sent
        sign = 1 if size == "big" else -1
        assert all(sign * target["area"] > sign * o["area"] for o in others), sent
    else:
        pytest.fail(f"unknown kind {kind}")


def test_expressions_are_true_and_unambiguous(synth):
    _, _, refs, instances = synth
    checked = set()
    for ref in refs:
        objects = objects_of(ref["image_id"], instances)
        for s in ref["sentences"]:
            check_sentence(s["sent"], s["kind"], ref["ann_id"], objects, s.get("ranked_ann_ids"), s.get("landmark_ann_id"),
                           s.get("relation"))
            checked.add(s["kind"])
    assert checked == KINDS


def test_targets_are_mostly_visible(synth):
    _, _, refs, instances = synth
    for image_id in range(1, 11):
        scene = render_scene(3, image_id, H, W, depth=False)
        ann_ids = [a["id"] for a in instances["annotations"] if a["image_id"] == image_id]
        assert len(ann_ids) == len(scene.shapes)  # annotations are listed in draw order
        for ref in refs:
            if ref["image_id"] == image_id and ref["ann_id"] != -1:
                shape = scene.shapes[ann_ids.index(ref["ann_id"])]
                assert shape.visible_fraction >= expressions.MIN_TARGET_VISIBLE
                assert ref["category_id"] == synthetic.CATEGORY_IDS[shape.category]


def test_render_scene_reproduces_the_written_image_and_depth(synth):
    out, _, _, _ = synth
    scene = render_scene(3, 2, H, W)
    written = cv2.cvtColor(cv2.imread(str(out / "images" / "synth_000002.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(scene.image, written)
    depth = cv2.imread(str(out / "depth" / "synth_000002.png"), cv2.IMREAD_UNCHANGED).astype(float)
    assert np.array_equal(scene.depth, depth)
    # The background is a plane, so 1/depth is affine in (u, v) there. Objects stand on it:
    # each is nearer than the plane by a height that grows with draw order (the top one is nearest).
    background = ~np.any([s.full for s in scene.shapes], axis=0)
    v, u = np.mgrid[0:H, 0:W]
    design = np.stack([u, v, np.ones_like(u)], -1).astype(float)
    coef, *_ = np.linalg.lstsq(design[background], 1 / depth[background], rcond=None)
    plane = 1 / (design @ coef)
    assert np.abs(plane - depth)[background].max() <= 1.0
    above = [plane[s.visible] - depth[s.visible] for s in scene.shapes]
    assert all(np.ptp(a) <= 2 for a in above)  # flat tops parallel to the table
    heights = [np.median(a) for a in above]
    assert heights[0] > 5 and np.all(np.diff(heights) > 5)


def test_deterministic_per_seed_and_independent_of_workers(tmp_path):
    files = ["synth/refs(synth).p", "synth/instances.json", "images/synth_000003.png", "meta.json"]
    generate(tmp_path / "a", 4, seed=11, height=120, width=160, depth=False)
    generate(tmp_path / "b", 4, seed=11, height=120, width=160, depth=False, workers=2)
    generate(tmp_path / "c", 4, seed=12, height=120, width=160, depth=False)
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / files[0]).read_bytes() != (tmp_path / "c" / files[0]).read_bytes()
    assert not (tmp_path / "a" / "depth").exists()


def test_absent_fraction_and_sentences_per_object(tmp_path):
    meta = generate(tmp_path / "none", 3, seed=0, height=120, width=160, depth=False, absent_fraction=0.0,
                    sentences_per_object=1)
    assert meta["kinds"]["absent"] == 0
    refs = pickle.loads((tmp_path / "none" / "synth" / "refs(synth).p").read_bytes())
    assert all(len(r["sentences"]) == 1 for r in refs)
    meta = generate(tmp_path / "many", 6, seed=0, height=120, width=160, depth=False, absent_fraction=0.4)
    total = sum(meta["kinds"].values())
    assert 0.25 < meta["kinds"]["absent"] / total < 0.55
    with pytest.raises(ValueError):
        generate(tmp_path / "bad", 2, absent_fraction=0.9)


def test_split_sizes():
    assert writer._split_sizes(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert writer._split_sizes(5, (0.8, 0.1, 0.1)) == [3, 1, 1]  # every split gets an image
    assert writer._split_sizes(7, (1, 0, 0)) == [7, 0, 0]
    assert sum(writer._split_sizes(1001, (0.7, 0.2, 0.1))) == 1001


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path), "--images", "2", "--seed", "1", "--size", "96x128", "--no-depth",
          "--workers", "1"])
    line = capsys.readouterr().out.strip()
    assert line.startswith("meres-synth: 2 images") and "\n" not in line
    assert cv2.imread(str(tmp_path / "images" / "synth_000001.png")).shape == (96, 128, 3)
    assert not (tmp_path / "depth").exists()
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--images", "2", "--size", "big"])


def test_muted_scenes_are_those_of_meres_synth_1_2():
    # sha256 of image + depth bytes from the renderer before `appearance` existed (commit e2eef4f):
    # datasets named in training configs by seed are rebuilt unchanged.
    before = {1: "3744ca95a1a8bea3", 2: "2b840c0b38739afd", 3: "a6ef51a3447b65e9"}
    for image_id, digest in before.items():
        scene = render_scene(3, image_id, H, W, depth=True)
        assert scene.background == "muted"
        assert hashlib.sha256(scene.image.tobytes() + scene.depth.tobytes()).hexdigest()[:16] == digest


def test_varied_scenes_are_those_of_meres_synth_1_3():
    # As above for `varied` (commit e392006): stages 11-12 name their varied datasets by seed.
    before = {1: "7eee174be17b3293", 2: "bb7276d3ba46c765", 3: "f902ec370b77fb48"}
    for image_id, digest in before.items():
        scene = render_scene(3, image_id, 96, 128, depth=True, appearance="varied")
        assert hashlib.sha256(scene.image.tobytes() + scene.depth.tobytes()).hexdigest()[:16] == digest


def _paint_colours(scenes) -> list[tuple[str, np.ndarray]]:
    """(colour name, median RGB of the shape's pixels clear of its edges) for each shape big enough."""
    out = []
    for scene in scenes:
        for shape in scene.shapes:
            inner = cv2.erode(shape.visible.astype(np.uint8), np.ones((5, 5))) > 0
            if inner.sum() >= 30:
                out.append((shape.color, np.median(scene.image[inner].astype(float), axis=0)))
    return out


def test_shaded_appearance_paints_other_shades_that_keep_their_name():
    from meres_core.data.synthetic.vocabulary import COLORS
    names, nominal = list(COLORS), np.array(list(COLORS.values()), float)
    spread = {}
    for appearance in ("varied", "shaded"):
        painted = _paint_colours(render_scene(6, i, H, W, depth=False, appearance=appearance) for i in range(1, 41))
        nearest = [names[int(np.linalg.norm(nominal - rgb, axis=1).argmin())] for _, rgb in painted]
        # Still nearest its own name's colour (a shade of orange may come near yellow, not cross over much).
        assert np.mean([n == c for n, (c, _) in zip(nearest, painted)]) >= 0.95, appearance
        spread[appearance] = np.percentile([np.linalg.norm(rgb - COLORS[c]) for c, rgb in painted], 90)
    # varied: brightness +-15 and shading only; shaded: darker, lighter and duller shades as well.
    assert spread["varied"] < 30 < 45 < spread["shaded"], spread


def _background_pixels(scene) -> np.ndarray:
    """float (N, 3): the pixels no shape covers, a few pixels clear of them (blur spreads edges)."""
    near_shapes = cv2.dilate(np.any([s.full for s in scene.shapes], axis=0).astype(np.uint8), np.ones((7, 7)))
    return scene.image[near_shapes == 0].astype(float)


def _chroma(scene) -> float:
    """Mean max-minus-min channel of the background pixels."""
    pixels = _background_pixels(scene)
    return float(np.mean(pixels.max(1) - pixels.min(1)))


def test_varied_appearance_widens_backgrounds_and_sizes_and_keeps_colours_clear():
    from meres_core.data.synthetic.scene import BACKGROUND_CONTRAST
    from meres_core.data.synthetic.vocabulary import COLORS
    muted = [render_scene(5, i, H, W, depth=False) for i in range(1, 31)]
    varied = [render_scene(5, i, H, W, depth=False, appearance="varied") for i in range(1, 31)]
    assert {s.background for s in varied} == {"muted", "plain", "stripes", "texture"}
    # Muted backgrounds are grey-ish (channels within 60 of each other); varied ones take any hue.
    assert max(_chroma(s) for s in muted) < 65
    assert max(_chroma(s) for s in varied) > 90
    # Shapes down to 4% of the shorter side (muted: 6%, whose smallest outline covers ~270 px here).
    assert min(shape.full_area for s in muted for shape in s.shapes) > 250
    assert min(shape.full_area for s in varied for shape in s.shapes) < 200
    for scene in varied:
        if scene.background == "muted":
            continue
        background = _background_pixels(scene)
        for shape in scene.shapes:
            # 10th percentile: sensor noise, blur and the shape's brightness jitter (+-15) take a share.
            distance = np.percentile(np.linalg.norm(background - COLORS[shape.color], axis=1), 10)
            assert distance >= BACKGROUND_CONTRAST - 30, (scene.background, shape.color, distance)


def test_generate_writes_the_varied_appearance(tmp_path):
    meta = generate(tmp_path, 2, seed=4, height=120, width=160, depth=False, appearance="varied")
    assert meta["appearance"] == "varied" and meta["version"] == synthetic.VERSION
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "images" / "synth_000002.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(render_scene(4, 2, 120, 160, depth=False, appearance="varied").image, written)
    assert not np.array_equal(render_scene(4, 2, 120, 160, depth=False).image, written)
    with pytest.raises(ValueError, match="appearance"):
        generate(tmp_path / "bad", 1, appearance="neon")


def _share_touching_own_colour(scenes) -> float:
    """Share of shapes whose visible mask touches (within 2 px) a visible shape of the same colour name."""
    touching = total = 0
    for scene in scenes:
        grown = [cv2.dilate(s.visible.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for s in scene.shapes]
        for i, shape in enumerate(scene.shapes):
            total += 1
            touching += any(j != i and other.color == shape.color and (grown[i] & other.visible).any()
                            for j, other in enumerate(scene.shapes))
    return touching / total


def test_same_colour_neighbours_put_shapes_on_shapes_of_their_colour(tmp_path):
    plain = [render_scene(5, i, H, W, depth=False, appearance="shaded") for i in range(1, 41)]
    neighbours = [render_scene(5, i, H, W, depth=False, appearance="shaded", same_colour_neighbours=1.0)
                  for i in range(1, 41)]
    assert _share_touching_own_colour(neighbours) > _share_touching_own_colour(plain) + 0.1
    with pytest.raises(ValueError):
        render_scene(5, 1, H, W, same_colour_neighbours=1.5)

    meta = generate(tmp_path, 3, seed=5, height=H, width=W, depth=False, appearance="shaded",
                    same_colour_neighbours=1.0)
    assert meta["same_colour_neighbours"] == 1.0
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "images" / "synth_000002.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, neighbours[1].image)
