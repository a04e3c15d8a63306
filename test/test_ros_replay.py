"""meres-replay on an image folder, a video and ROS 2 bags (sqlite3 and mcap) written here."""
import json

import cv2
import numpy as np
import pytest

from meres_core.inference import Decision, Segmenter
from meres_ros.replay import main

HEIGHT, WIDTH = 48, 64
K = [50.0, 0.0, 31.5, 0.0, 50.0, 23.5, 0.0, 0.0, 1.0]
TINY = ["--preset", "tiny", "--device", "cpu", "--precision", "fp32", "--presence-threshold", "0"]


def frame(index: int) -> np.ndarray:
    rgb = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    cv2.circle(rgb, (16 + 8 * index, 24), 10, (230, 40, 40), -1)
    return rgb


def test_folder_matches_segmenter(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"img_{i}.png"), cv2.cvtColor(frame(i), cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main([str(folder), "-e", "the red disc", "-e", "the background", "--out", str(out), *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [f["frame"] for f in results["frames"]] == ["img_0", "img_1", "img_2"]
    assert [t["expression"] for t in results["frames"][0]["targets"]] == ["the red disc", "the background"]
    reference = Segmenter.from_preset("tiny", seed=0, device="cpu", precision="fp32")
    decision = Decision(reference.decision.mask_threshold, presence_threshold=0.0)
    expected = reference.segment(frame(1), ["the red disc", "the background"], decision)
    written = cv2.imread(str(out / "masks" / "img_1_1.png"), cv2.IMREAD_GRAYSCALE) > 0
    np.testing.assert_array_equal(written, expected[1].mask)
    assert (out / "overlays" / "img_2.png").is_file()


def test_video(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (WIDTH, HEIGHT))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG")
    for i in range(4):
        writer.write(cv2.cvtColor(frame(i), cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "out"
    assert main([str(video), "-e", "the red disc", "--every", "2", "--out", str(out), *TINY]) == 0
    frames = json.loads((out / "results.json").read_text())["frames"]
    assert [f["frame"] for f in frames] == ["frame_000000", "frame_000002"]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_with_depth_gives_3d(tmp_path, storage):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    types = typestore.types
    Header, Time = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]
    Image, CameraInfo = types["sensor_msgs/msg/Image"], types["sensor_msgs/msg/CameraInfo"]
    RegionOfInterest = types["sensor_msgs/msg/RegionOfInterest"]

    def header(i):
        return Header(stamp=Time(sec=100 + i, nanosec=0), frame_id="camera")

    bag = tmp_path / "bag"
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(bag, version=9, storage_plugin=plugin) as writer:
        color = writer.add_connection("/camera/color", Image.__msgtype__, typestore=typestore)
        depth = writer.add_connection("/camera/depth", Image.__msgtype__, typestore=typestore)
        info = writer.add_connection("/camera/info", CameraInfo.__msgtype__, typestore=typestore)
        for i in range(3):
            t = (100 + i) * 10**9
            # Color first, its depth after: the reader must wait for it.
            rgb = frame(i)
            msg = Image(header=header(i), height=HEIGHT, width=WIDTH, encoding="rgb8", is_bigendian=0,
                        step=WIDTH * 3, data=rgb.reshape(-1))
            writer.write(color, t, typestore.serialize_cdr(msg, Image.__msgtype__))
            millimetres = np.full((HEIGHT, WIDTH), 800, np.uint16)
            msg = Image(header=header(i), height=HEIGHT, width=WIDTH, encoding="16UC1", is_bigendian=0,
                        step=WIDTH * 2, data=millimetres.view(np.uint8).reshape(-1))
            writer.write(depth, t + 1000, typestore.serialize_cdr(msg, Image.__msgtype__))
            msg = CameraInfo(header=header(i), height=HEIGHT, width=WIDTH, distortion_model="plumb_bob",
                             d=np.zeros(5), k=np.array(K), r=np.eye(3).reshape(-1), p=np.zeros(12),
                             binning_x=0, binning_y=0,
                             roi=RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
            writer.write(info, t + 2000, typestore.serialize_cdr(msg, CameraInfo.__msgtype__))
    out = tmp_path / "out"
    code = main([str(bag), "-e", "the red disc", "--topic", "/camera/color", "--depth-topic", "/camera/depth",
                 "--camera-info-topic", "/camera/info", "--out", str(out), *TINY])
    assert code == 0
    frames = json.loads((out / "results.json").read_text())["frames"]
    assert [f["stamp_ns"] for f in frames] == [(100 + i) * 10**9 for i in range(3)]
    assert any(record["targets"][0]["found"] for record in frames)
    for record in frames:
        target = record["targets"][0]
        if target["found"]:
            u, v = target["centroid_px"]
            assert target["candidates"][0]["centroid"] == [u, v] and isinstance(target["ambiguous"], bool)
            assert target["centroid_3d_m"] == pytest.approx([(u - 31.5) * 0.8 / 50, (v - 23.5) * 0.8 / 50, 0.8], abs=1e-3)


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope.avi"), "-e", "x", "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "cannot open" in capsys.readouterr().err
