import json
import pickle
import shutil
from collections import Counter

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from meres_core.data.refer import (ReferDataset, ReferFilesNotFoundError, UnsafePickleError, collate_samples,
                                   load_refs)
from meres_core.data.synthetic import CATEGORY_IDS, generate, render_scene
from meres_core.data.transforms import preprocess_image, resize_mask

H, W, SEED, SIZE = 240, 320, 7, 64


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("refer")
    generate(out, 6, seed=SEED, height=H, width=W, depth=False, split_fractions=(0.5, 0.25, 0.25))
    return out


def synth(root, split="train", **kwargs):
    return ReferDataset(root, dataset="synth", split_by="synth", split=split, img_size=SIZE, **kwargs)


def read_refs(root):
    return pickle.loads((root / "synth" / "refs(synth).p").read_bytes())


def boundary_band(mask):
    kernel = np.ones((3, 3), np.uint8)
    m = mask.astype(np.uint8)
    return (cv2.dilate(m, kernel) - cv2.erode(m, kernel)).astype(bool)


def test_samples_match_what_the_generator_drew(root):
    instances = json.loads((root / "synth" / "instances.json").read_text())
    encodings, ranked_kinds, landmarks = set(), set(), 0
    for split in ("train", "val", "test"):
        ds = synth(root, split, keep_original=True)
        assert len(ds) == sum(len(r["sentences"]) for r in read_refs(root) if r["split"] == split)
        for i in range(len(ds)):
            sample = ds[i]
            assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.float32
            assert sample["mask"].shape == (SIZE, SIZE) and set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
            assert torch.equal(sample["mask"], resize_mask(sample["orig_mask"], SIZE))
            assert sample["orig_image"].shape == (H, W, 3) and sample["orig_image"].dtype == np.uint8
            assert sample["sentence"] and isinstance(sample["kind"], str)
            ref = next(r for r in ds.refs if r["ref_id"] == sample["ref_id"])
            sentence = next(t for t in ref["sentences"] if t["sent_id"] == sample["sent_id"])
            ranked = sentence.get("ranked_ann_ids")
            ranked_kinds.add(sample["kind"] if ranked else None)
            expected = ds.ref_mask({"ann_id": ranked}, H, W) if ranked else sample["orig_mask"]
            assert torch.equal(sample["ranked_mask"], resize_mask(expected, SIZE))
            if ranked:
                assert ref["ann_id"] in ranked and expected.sum() > sample["orig_mask"].sum()
            # ranked_centres: the drawn (visible) centroids of the ranked objects, else of the target, in [-1, 1].
            anns = [a for a in instances["annotations"] if a["image_id"] == sample["image_id"]]
            ann_ids = [a["id"] for a in anns]
            shapes = render_scene(SEED, sample["image_id"], H, W, depth=False).shapes
            named = ranked or ([] if sample["no_target"] else [ref["ann_id"]])
            drawn_centres = torch.tensor([shapes[ann_ids.index(i)].centroid for i in named]).view(-1, 2)
            drawn_centres = (drawn_centres + 0.5) / torch.tensor([W, H]) * 2 - 1
            centres = sample["ranked_centres"]
            assert centres[len(named):].isnan().all() and torch.allclose(centres[:len(named)], drawn_centres, atol=4 / W)
            # The landmark of a relation sentence (meres-synth 1.6), as drawn; nothing for other sentences.
            landmark = sentence.get("landmark_ann_id")
            landmarks += landmark is not None
            if landmark is None:
                assert not sample["landmark_mask"].any() and sample["landmark_centre"].isnan().all()
                assert sample["relation"] == ""
            else:
                drawn_landmark = shapes[ann_ids.index(landmark)]
                assert sample["kind"] == "spatial" and landmark != ref["ann_id"]
                assert sample["relation"] == sentence["relation"] in ("left", "right", "above", "below", "nearest")
                assert torch.equal(sample["landmark_mask"], resize_mask(ds.ref_mask({"ann_id": landmark}, H, W), SIZE))
                expected_centre = (torch.tensor(drawn_landmark.centroid) + 0.5) / torch.tensor([W, H]) * 2 - 1
                assert torch.allclose(sample["landmark_centre"], expected_centre.float(), atol=4 / W)
            if sample["no_target"]:
                assert ref["ann_id"] == -1 and sample["kind"] == "absent" and not sample["orig_mask"].any()
                continue
            index = ann_ids.index(ref["ann_id"])
            drawn = shapes[index].visible
            segmentation = anns[index]["segmentation"]
            encodings.add(type(segmentation).__name__)
            if isinstance(segmentation, dict):
                assert np.array_equal(sample["orig_mask"], drawn)
            else:  # polygon round trip: differences only on the one-pixel boundary
                diff = sample["orig_mask"] ^ drawn
                assert not (diff & ~boundary_band(drawn)).any()
                assert (sample["orig_mask"] & drawn).sum() > 0.8 * (sample["orig_mask"] | drawn).sum()
        assert not ds.skipped
    assert encodings == {"list", "dict"}
    assert ranked_kinds == {None, "spatial", "ordinal"}  # ranked_mask: the ranked objects, else the target
    assert landmarks > 0


def test_image_tensor_and_kinds(root):
    ds = synth(root, keep_original=True)
    sample = ds[0]
    assert torch.equal(sample["image"], preprocess_image(sample["orig_image"], SIZE))
    kinds = ds.sentences_by_kind()
    assert sum(kinds.values()) == len(ds) and set(kinds) <= {"category", "attribute", "spatial", "ordinal",
                                                               "size", "absent"}


def test_unknown_split_lists_available(root):
    with pytest.raises(ValueError, match="available: test, train, val"):
        synth(root, "testA")


def test_missing_files_are_listed_in_one_error(tmp_path):
    with pytest.raises(ReferFilesNotFoundError) as info:
        ReferDataset(tmp_path, "refcocog", "umd")
    message = str(info.value)
    expected = [tmp_path / "refcocog" / "refs(umd).p", tmp_path / "refcocog" / "instances.json",
                tmp_path / "images" / "mscoco" / "images" / "train2014"]
    assert info.value.missing == expected and all(str(p) in message for p in expected)
    assert isinstance(info.value, FileNotFoundError)


class Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (shutil.copy, (__file__, self.path))


def test_malicious_pickle_is_rejected(root, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "refs(evil).p"
    evil.write_bytes(pickle.dumps([{"ref_id": 1, "payload": Exploit(str(marker))}], protocol=2))
    with pytest.raises(UnsafePickleError, match="shutil.copy"):
        load_refs(evil)
    assert not marker.exists()

    bad_root = tmp_path / "data"
    shutil.copytree(root / "synth", bad_root / "synth")
    (bad_root / "images").mkdir()
    (bad_root / "synth" / "refs(synth).p").write_bytes(evil.read_bytes())
    with pytest.raises(pickle.UnpicklingError):
        synth(bad_root)
    assert not marker.exists()


def test_objects_only_a_qualifier_ranks_are_loaded(root, tmp_path):
    """ranked_mask covers the ranked objects even when no ref of the split targets them."""
    copy = tmp_path / "ranked_only"
    shutil.copytree(root, copy)
    refs = read_refs(copy)
    ref, sentence = next((r, s) for r in refs for s in r["sentences"] if s.get("ranked_ann_ids") and r["split"] == "train")
    others = [i for i in sentence["ranked_ann_ids"] if i != ref["ann_id"]]
    kept = [r for r in refs if r is ref or r["ann_id"] not in others]  # no ref targets the other ranked objects
    (copy / "synth" / "refs(synth).p").write_bytes(pickle.dumps(kept, protocol=2))
    ds = synth(copy, keep_original=True)
    index = next(i for i, (r, s) in enumerate(ds.samples) if s["sent_id"] == sentence["sent_id"])
    sample = ds[index]
    assert sample is not None and not ds.skipped
    expected = ds.ref_mask({"ann_id": sentence["ranked_ann_ids"]}, H, W)
    assert torch.equal(sample["ranked_mask"], resize_mask(expected, SIZE)) and expected.sum() > sample["orig_mask"].sum()


def test_broken_samples_are_skipped_and_counted(root, tmp_path, caplog):
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    refs = read_refs(broken)
    instances = json.loads((broken / "synth" / "instances.json").read_text())
    train = [r for r in refs if r["split"] == "train" and r["ann_id"] != -1]
    image_id = train[0]["image_id"]
    # On one image: an annotation whose polygon has no area with a ref to it, and a whitespace sentence.
    empty_ann = {"id": 10_000, "image_id": image_id, "category_id": 1, "segmentation": [[5.0, 5.0, 5.0, 5.0]],
                 "area": 0.0, "bbox": [5, 5, 0, 0], "iscrowd": 0}
    instances["annotations"].append(empty_ann)
    blank = {"tokens": [], "raw": "   ", "sent": "   ", "sent_id": 90_001}
    extra = [{**train[0], "ref_id": 90_000, "ann_id": 10_000, "sent_ids": [90_000],
              "sentences": [{"tokens": ["the", "shape"], "raw": "the shape", "sent": "the shape", "sent_id": 90_000}]},
             {**train[0], "ref_id": 90_001, "sentences": [blank], "sent_ids": [90_001]}]
    (broken / "synth" / "refs(synth).p").write_bytes(pickle.dumps(refs + extra, protocol=2))
    (broken / "synth" / "instances.json").write_text(json.dumps(instances))
    # An unreadable image elsewhere: every sentence on it is skipped.
    bad_image = next(r["image_id"] for r in train if r["image_id"] != image_id)
    (broken / "images" / f"synth_{bad_image:06d}.png").write_bytes(b"not an image")

    ds = synth(broken)
    samples = [ds[i] for i in range(len(ds))]
    on_bad_image = sum(len(r["sentences"]) for r in refs if r["split"] == "train" and r["image_id"] == bad_image)
    assert ds.skipped == Counter({"unreadable_image": on_bad_image, "empty_sentence": 1, "empty_mask": 1})
    assert samples.count(None) == on_bad_image + 2
    logged = [r.getMessage() for r in caplog.records if "skipping a broken sample" in r.getMessage()]
    assert len(logged) == on_bad_image + 2
    assert any("(empty_mask)" in m for m in logged) and any("(empty_sentence)" in m for m in logged)

    batch = collate_samples(samples)
    assert batch["image"].shape[0] == len(samples) - samples.count(None)
    assert collate_samples([None, None]) is None


def test_category_filter(root):
    every = synth(root)
    present = Counter(r["category_id"] for r in every.refs)
    name = next(n for n, i in CATEGORY_IDS.items() if i == present.most_common(1)[0][0])
    only = synth(root, categories=[name])
    assert len(only) and all(r["category_id"] == CATEGORY_IDS[name] for r in only.refs)
    assert len(only) == sum(len(r["sentences"]) for r in every.refs if r["category_id"] == CATEGORY_IDS[name])
    both = synth(root, categories=[CATEGORY_IDS[name], "heart"])
    assert {r["category_id"] for r in both.refs} <= {CATEGORY_IDS[name], CATEGORY_IDS["heart"]}
    with pytest.raises(ValueError, match="unknown categories.*available: circle"):
        synth(root, categories=["dog"])


def test_coco_layout_uncompressed_rle_and_multiple_targets(tmp_path):
    """RefCOCO naming and image folder, sentences without `kind`, and a gRefCOCO-style list of ann_ids."""
    scene = render_scene(1, 1, 48, 64, depth=False)
    image_dir = tmp_path / "images" / "mscoco" / "images" / "train2014"
    image_dir.mkdir(parents=True)
    name = "COCO_train2014_000000000042.jpg"
    cv2.imwrite(str(image_dir / name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    first, second = scene.shapes[0].visible, scene.shapes[1].visible
    counts = mask_utils.encode(np.asfortranarray(first.astype(np.uint8)))
    uncompressed = {"size": [48, 64], "counts": _uncompressed_counts(first)}
    assert np.array_equal(mask_utils.decode(counts), mask_utils.decode(mask_utils.frPyObjects(uncompressed, 48, 64)))
    instances = {
        "images": [{"id": 42, "file_name": name, "height": 48, "width": 64}],
        "annotations": [{"id": 1, "image_id": 42, "category_id": 1, "segmentation": uncompressed},
                        {"id": 2, "image_id": 42, "category_id": 1, "segmentation": {
                            "size": [48, 64], "counts": mask_utils.encode(
                                np.asfortranarray(second.astype(np.uint8)))["counts"].decode()}}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }
    sentence = {"tokens": ["man", "left"], "raw": "Man left", "sent": "man left", "sent_id": 7}
    refs = [{"ref_id": 3, "ann_id": 1, "image_id": 42, "category_id": 1, "split": "testA", "sentences": [sentence],
             "sent_ids": [7], "file_name": "COCO_train2014_000000000042_1.jpg"},
            {"ref_id": 4, "ann_id": [1, 2], "image_id": 42, "category_id": 1, "split": "testA",
             "sentences": [{**sentence, "sent_id": 8}], "sent_ids": [8], "file_name": name}]
    (tmp_path / "refcoco").mkdir()
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))

    ds = ReferDataset(tmp_path, "refcoco", "unc", "testA", img_size=32, keep_original=True)
    single, union = ds[0], ds[1]
    assert single["kind"] == "refcoco" and single["sentence"] == "man left" and not single["no_target"]
    assert np.array_equal(single["orig_mask"], first)
    assert np.array_equal(union["orig_mask"], first | second)
    assert single["orig_image"].shape == (48, 64, 3)


def _uncompressed_counts(mask):
    """Run lengths in column-major order, starting with a run of zeros (COCO's uncompressed RLE)."""
    flat = mask.flatten(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    return ([0] if flat[0] else []) + np.diff(bounds).tolist()


def test_collate_and_dataloader(root):
    ds = synth(root)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_samples)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["mask"].shape == (4, SIZE, SIZE)
    assert batch["no_target"].dtype == torch.bool and batch["ref_id"].dtype == torch.int64
    assert isinstance(batch["sentence"], list) and len(batch["sentence"]) == 4
    assert "orig_image" not in batch


# ------------------------------------------------------------------------------ every form refer.py decodes


def refer_py_mask(segmentation, height, width):
    """What refer.py's getMask computes (polygons via frPyObjects, else the RLEs as given; decode; sum)."""
    if isinstance(segmentation, list) and isinstance(segmentation[0], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    decoded = mask_utils.decode(rle)
    return (decoded.sum(axis=2) if decoded.ndim == 3 else decoded) > 0


@pytest.fixture(scope="module")
def parts():
    """Two visible shapes of one generated scene, as the two parts of one object."""
    scene = render_scene(3, 2, 48, 64, depth=False)
    return scene.shapes[0].visible, scene.shapes[1].visible


def compressed(mask, counts_type=str):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode() if counts_type is str else rle["counts"]}


def polygons(mask):
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


SEGMENTATION_FORMS = {
    "polygons": lambda a, b: polygons(a) + polygons(b),
    "compressed RLE (str counts)": lambda a, b: compressed(a | b),
    "compressed RLE (bytes counts)": lambda a, b: compressed(a | b, bytes),
    "uncompressed RLE": lambda a, b: {"size": [48, 64], "counts": _uncompressed_counts(a | b)},
    "list of compressed RLEs": lambda a, b: [compressed(a), compressed(b)],
    "list of uncompressed RLEs": lambda a, b: [{"size": [48, 64], "counts": _uncompressed_counts(m)} for m in (a, b)],
}


@pytest.mark.parametrize("form", SEGMENTATION_FORMS)
def test_every_segmentation_form_decodes_to_the_union_of_its_parts(parts, form):
    from meres_core.data.refer import decode_segmentation

    segmentation = SEGMENTATION_FORMS[form](*parts)
    decoded = decode_segmentation(segmentation, 48, 64)
    union = parts[0] | parts[1]
    if form == "polygons":  # rasterised outlines: equal up to the one-pixel boundary
        assert np.array_equal(decoded, refer_py_mask(segmentation, 48, 64))
        assert not ((decoded ^ union) & ~boundary_band(union)).any()
    else:
        assert np.array_equal(decoded, union)
    if form in ("polygons", "list of compressed RLEs"):  # the forms refer.py's getMask reads
        assert np.array_equal(decoded, refer_py_mask(segmentation, 48, 64))


def write_refcoco(root, segmentation_by_ann: dict, split="val"):
    """A one-image RefCOCO-layout dataset: one ref (one sentence) per annotation."""
    scene = render_scene(3, 2, 48, 64, depth=False)
    image_dir = root / "images" / "mscoco" / "images" / "train2014"
    image_dir.mkdir(parents=True)
    name = "COCO_train2014_000000000042.jpg"
    cv2.imwrite(str(image_dir / name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    instances = {"images": [{"id": 42, "file_name": name, "height": 48, "width": 64}],
                 "annotations": [{"id": i, "image_id": 42, "category_id": 1, "segmentation": s}
                                 for i, s in segmentation_by_ann.items()],
                 "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}
    refs = [{"ref_id": i, "ann_id": i, "image_id": 42, "category_id": 1, "split": split, "sent_ids": [i],
             "sentences": [{"tokens": ["the", "man"], "raw": "the man", "sent": "the man", "sent_id": i}]}
            for i in segmentation_by_ann]
    (root / "refcoco").mkdir()
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))


def test_a_list_of_compressed_rles_is_a_sample_not_a_skip(tmp_path, parts):
    write_refcoco(tmp_path, {1: [compressed(parts[0]), compressed(parts[1])]})
    ds = ReferDataset(tmp_path, "refcoco", "unc", "val", img_size=32, keep_original=True)
    sample = ds[0]
    assert sample is not None and not ds.skipped
    assert np.array_equal(sample["orig_mask"], parts[0] | parts[1])


def test_broken_samples_raise_instead_of_being_skipped_when_asked(tmp_path, parts):
    from meres_core.data.refer import BrokenSampleError

    write_refcoco(tmp_path, {1: compressed(parts[0]), 2: [[5.0, 5.0, 5.0, 5.0]]})
    lenient = ReferDataset(tmp_path, "refcoco", "unc", "val", img_size=32)
    assert lenient[1] is None and lenient.skipped == Counter({"empty_mask": 1})
    strict = ReferDataset(tmp_path, "refcoco", "unc", "val", img_size=32, skip_broken=False)
    assert strict[0] is not None
    with pytest.raises(BrokenSampleError, match=r"refcoco val.*ref 2.*sent 2.*empty_mask"):
        strict[1]
