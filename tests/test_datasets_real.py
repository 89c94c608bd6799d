"""Real-dataset loaders on miniature trees built here: ILSVRC tar + box files, CUB through mocked TFDS, a folder.

Expected boxes are computed by hand from the rules in ``eval.datasets.preprocess`` (edges of the extent
[min, max + 1) scaled and rounded half up; torchvision's Resize(256) + CenterCrop(224) geometry).
"""

import csv
import tarfile

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from ilsvrc_fixtures import add, encode, stem, voc

from eval.datasets import cub, folder, ilsvrc, preprocess, splits, voc_xml

SIZE = 224


# --- preprocess and voc_xml -------------------------------------------------------------------------------------


def test_scale_and_crop_boxes_by_hand():
    np.testing.assert_array_equal(preprocess.scale_boxes([[8, 16, 23, 47]], 3.5, 1.75), [[28, 28, 83, 83]])
    # y: row 5 spans [5, 6) -> [0.5, 0.6) at scale 0.1, no boundary inside: the pixel holding 0.55, row 0.
    # x: columns 5..7 span [5, 8) -> [1.0, 1.6) at scale 0.2: edges round to 1 and 2, column 1.
    np.testing.assert_array_equal(preprocess.scale_boxes([[5, 5, 5, 7]], 0.1, 0.2), [[0, 1, 0, 1]])
    boxes, keep = preprocess.crop_boxes([[32, 64, 95, 191], [0, 384, 255, 511], [-5, 2, 3, 9]], 16, 144, 224, 224)
    np.testing.assert_array_equal(boxes, [[16, 0, 79, 47]])
    np.testing.assert_array_equal(keep, [True, False, False])
    assert preprocess.scale_boxes([], 2.0, 2.0).shape == (0, 4)


def test_squash_and_resize_crop_by_hand():
    image = np.zeros((64, 128, 3), np.uint8)
    boxes = [[8, 16, 23, 47], [0, 96, 63, 127], [16, 40, 47, 87]]
    out, b, keep = preprocess.squash(image, boxes, SIZE)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(b, [[28, 28, 83, 83], [0, 168, 223, 223], [56, 70, 167, 153]])
    assert keep.tolist() == [True, True, True]
    out, b, keep = preprocess.resize_crop(image, boxes, SIZE)
    assert out.shape == (224, 224, 3)
    np.testing.assert_array_equal(b, [[16, 0, 79, 47], [48, 16, 175, 207]])
    assert keep.tolist() == [True, False, True]


def test_resize_crop_follows_torchvision_rounding():
    # 100 x 117: Resize(256) -> 256 x int(299.52) = 256 x 299; CenterCrop left = round(37.5) = 38 (half to even).
    image = np.zeros((100, 117, 3), np.uint8)
    image[:, 20:] = 255
    out, b, _ = preprocess.resize_crop(image, [[0, 10, 99, 20]], SIZE)
    # x: 10 * 299/117 -> 26, (20 + 1) * 299/117 -> 53.67 rounds to 54, minus 1 = 53; minus left 38 -> [-12, 15].
    np.testing.assert_array_equal(b, [[0, 0, 223, 15]])
    # Bilinear source of crop column c: (38 + c + 0.5) * 117/299 - 0.5; column 11 -> 18.9 (black), 14 -> 20.04 (white).
    # With left = 37 column 14 would sample 19.65, a 65% blend.
    assert out[100, 11, 0] == 0 and out[100, 14, 0] == 255


def test_normalised_to_pixels_and_voc_xml():
    np.testing.assert_array_equal(preprocess.normalised_to_pixels([0.2, 0.1, 0.7, 0.9], 50, 40), [[10, 4, 34, 35]])
    objects = voc_xml.parse(voc([("dog", 4, 7, 18, 36), ("cat", 1.4, 1.5, 30, 60)]))
    assert objects == [("dog", (6, 3, 35, 17)), ("cat", (1, 0, 59, 29))]
    assert voc_xml.parse(voc([])) == []
    with pytest.raises(voc_xml.PARSE_ERRORS):
        voc_xml.parse("<annotation><object>")


def test_split_strings():
    assert splits.select("validation[:3]", 10, ("validation",)) == [0, 1, 2]
    assert splits.select("validation[-2:]+validation[:1]", 10, ("validation",)) == [8, 9, 0]
    assert splits.select("images[10%:30%]", 10) == [1, 2]
    assert splits.select("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="Unknown split 'train'"):
        splits.select("train[:3]", 10, ("validation",))
    with pytest.raises(ValueError, match="incompatible with 10 examples"):
        splits.select("validation[:11]", 10, ("validation",))


# --- ILSVRC -----------------------------------------------------------------------------------------------------

# file number -> (height, width, XML objects (synset, 1-based xmin, ymin, xmax, ymax)); synsets are TFDS's
# validation labels of files 1-5: n01751748 (65), n09193705 (970), n02105855 (230), n04263257 (809), n03125729 (516).
IMAGES = {
    1: (64, 128, [("n01751748", 17, 9, 48, 24), ("n01751748", 97, 1, 128, 64), ("n01751748", 41, 17, 88, 48)]),
    2: (100, 50, [("n09193705", 11, 31, 35, 80)]),
    3: (None, None, [("n02105855", 1, 1, 10, 10)]),  # corrupt JPEG
    4: (30, 40, []),  # XML without a box; no CSV row
    5: (40, 40, [("n03125729", 1, 1, 40, 40), ("n01440764", 5, 5, 10, 10)]),  # second box: another class
}
LABELS = {1: 65, 2: 970, 3: 230, 4: 809, 5: 516}


@pytest.fixture(scope="module")
def ilsvrc_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ilsvrc")
    (root / "manual").mkdir()
    (root / "xml").mkdir()
    with tarfile.open(root / "manual" / ilsvrc.VAL_TAR, "w") as tar:
        for k in (4, 2, 5, 1, 3):  # not in name order, as the real tar
            h, w, _ = IMAGES[k]
            add(tar, stem(k) + ".JPEG", b"\xff\xd8\xff\xe0 not a jpeg" if h is None else encode(h, w))
    with tarfile.open(root / "ILSVRC2012_bbox_val_v3.tgz", "w:gz") as tar:
        for k, (_, _, objects) in IMAGES.items():
            add(tar, f"val/{stem(k)}.xml", voc(objects, stem(k)).encode())
            if k != 4:
                (root / "xml" / f"{stem(k)}.xml").write_text(voc(objects, stem(k)))
    with open(root / "LOC_val_solution.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "PredictionString"])
        for k in (5, 2, 1, 3):
            writer.writerow([stem(k), " ".join(f"{s} {a} {b} {c} {d}" for s, a, b, c, d in IMAGES[k][2]) + " "])
    return root


def ilsvrc_config(root, boxes="ILSVRC2012_bbox_val_v3.tgz", resize="squash", order="file_name"):
    return ml_collections.ConfigDict({"name": "ilsvrc", "manual_dir": str(root / "manual"), "boxes": str(root / boxes),
                                      "image_size": SIZE, "resize": resize, "order": order})


def by_id(examples):
    return {ex["image_id"]: ex for ex in examples}


def test_ilsvrc_squash_labels_boxes_and_skips(ilsvrc_tree):
    it, num = ilsvrc.load(ilsvrc_config(ilsvrc_tree), "validation")
    examples = list(it)
    assert num == 5
    assert [ex["image_id"] for ex in examples] == [stem(k) + ".JPEG" for k in range(1, 6)]
    assert [ex["label"] for ex in examples] == [65, 970, 230, 809, 516]
    ex1, ex2, ex3, ex4, ex5 = examples
    assert ex1["image"].shape == (224, 224, 3) and ex1["image"].dtype == np.uint8
    assert np.abs(ex1["image"].astype(int) - [200, 30, 60]).max() <= 4
    assert ex1["original_size"] == (64, 128)
    assert ex1["boxes"].dtype == np.int32 and ex1["boxes_original"].dtype == np.int32
    np.testing.assert_array_equal(ex1["boxes"], [[28, 28, 83, 83], [0, 168, 223, 223], [56, 70, 167, 153]])
    np.testing.assert_array_equal(ex1["boxes_original"], [[8, 16, 23, 47], [0, 96, 63, 127], [16, 40, 47, 87]])
    np.testing.assert_array_equal(ex2["boxes"], [[67, 45, 178, 156]])
    np.testing.assert_array_equal(ex2["boxes_original"], [[30, 10, 79, 34]])
    assert ex2["original_size"] == (100, 50)
    assert "image" not in ex3
    assert ex3["error"].startswith(f"cannot decode {stem(3)}.JPEG in {ilsvrc_tree / 'manual' / ilsvrc.VAL_TAR}")
    assert "image" not in ex4
    tgz = ilsvrc_tree / "ILSVRC2012_bbox_val_v3.tgz"
    assert ex4["error"] == f"val/{stem(4)}.xml in {tgz} has no <object> with a <bndbox>"
    np.testing.assert_array_equal(ex5["boxes"], [[0, 0, 223, 223]])  # the n01440764 box is not of its class
    np.testing.assert_array_equal(ex5["boxes_original"], [[0, 0, 39, 39]])


def test_ilsvrc_resize_crop_boxes(ilsvrc_tree):
    ex = by_id(ilsvrc.load(ilsvrc_config(ilsvrc_tree, resize="resize_crop"), "validation")[0])
    ex1, ex2, ex5 = ex[stem(1) + ".JPEG"], ex[stem(2) + ".JPEG"], ex[stem(5) + ".JPEG"]
    np.testing.assert_array_equal(ex1["boxes"], [[16, 0, 79, 47], [48, 16, 175, 207]])  # the right-edge box is cut
    np.testing.assert_array_equal(ex1["boxes_original"], [[8, 16, 23, 47], [16, 40, 47, 87]])
    np.testing.assert_array_equal(ex2["boxes"], [[10, 35, 223, 162]])
    np.testing.assert_array_equal(ex5["boxes"], [[0, 0, 223, 223]])
    assert ex1["image"].shape == (224, 224, 3)


def test_ilsvrc_orders_and_slices(ilsvrc_tree):
    it, num = ilsvrc.load(ilsvrc_config(ilsvrc_tree, order="class_folder"), "validation")
    assert num == 5
    assert [ex["image_id"] for ex in it] == [stem(k) + ".JPEG" for k in (1, 3, 5, 4, 2)]
    it, num = ilsvrc.load(ilsvrc_config(ilsvrc_tree, order="class_folder"), "validation[1:3]")
    assert num == 2 and [ex["image_id"] for ex in it] == [stem(3) + ".JPEG", stem(5) + ".JPEG"]
    it, num = ilsvrc.load(ilsvrc_config(ilsvrc_tree), "validation[:2]")
    assert num == 2 and [ex["label"] for ex in it] == [65, 970]
    with pytest.raises(ValueError, match="Unknown split 'train'"):
        ilsvrc.load(ilsvrc_config(ilsvrc_tree), "train[:2]")


@pytest.mark.parametrize("resize", ["squash", "resize_crop"])
def test_ilsvrc_xml_folder_and_csv_match_tgz(ilsvrc_tree, resize):
    reference = by_id(ilsvrc.load(ilsvrc_config(ilsvrc_tree, resize=resize), "validation")[0])
    for source in ("xml", "LOC_val_solution.csv"):
        examples = by_id(ilsvrc.load(ilsvrc_config(ilsvrc_tree, boxes=source, resize=resize), "validation")[0])
        for k in (1, 2, 5):
            got, want = examples[stem(k) + ".JPEG"], reference[stem(k) + ".JPEG"]
            np.testing.assert_array_equal(got["boxes"], want["boxes"])
            np.testing.assert_array_equal(got["boxes_original"], want["boxes_original"])
            np.testing.assert_array_equal(got["image"], want["image"])
    csv_ex = by_id(ilsvrc.load(ilsvrc_config(ilsvrc_tree, boxes="LOC_val_solution.csv"), "validation")[0])
    assert csv_ex[stem(4) + ".JPEG"]["error"] == f"no row for {stem(4)} in {ilsvrc_tree / 'LOC_val_solution.csv'}"
    xml_ex = by_id(ilsvrc.load(ilsvrc_config(ilsvrc_tree, boxes="xml"), "validation")[0])
    assert xml_ex[stem(4) + ".JPEG"]["error"] == f"missing box file {ilsvrc_tree / 'xml' / (stem(4) + '.xml')}"


def test_ilsvrc_missing_files_are_named(ilsvrc_tree, tmp_path):
    config = ilsvrc_config(ilsvrc_tree)
    config.manual_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="ImageNet validation tar not found") as err:
        ilsvrc.load(config, "validation")
    assert str(tmp_path / "ILSVRC2012_img_val.tar") in str(err.value)
    with pytest.raises(FileNotFoundError, match="ILSVRC box file not found") as err:
        ilsvrc.load(ilsvrc_config(ilsvrc_tree, boxes="ILSVRC2012_bbox_val_v3.tar.gz"), "validation")
    assert str(ilsvrc_tree / "ILSVRC2012_bbox_val_v3.tar.gz") in str(err.value)
    with pytest.raises(ValueError, match="config.data.order must be one of"):
        ilsvrc.load(ilsvrc_config(ilsvrc_tree, order="random"), "validation")
    with pytest.raises(ValueError, match="config.data.resize must be one of"):
        ilsvrc.load(ilsvrc_config(ilsvrc_tree, resize="crop"), "validation")


# --- CUB --------------------------------------------------------------------------------------------------------


def test_cub_through_mocked_tfds():
    def fake_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        assert isinstance(decoders["image"], tfds.decode.SkipDecoding)  # the loader decodes with PIL
        return tf.data.Dataset.from_tensor_slices({
            "image": [encode(50, 40), b"broken"],
            "image/filename": [b"001.Black_footed_Albatross/a.jpg", b"002.Laysan_Albatross/b.jpg"],
            "label": np.array([0, 1], np.int64),
            "bbox": np.array([[0.2, 0.1, 0.7, 0.9], [0.0, 0.0, 1.0, 1.0]], np.float32),
        })

    config = ml_collections.ConfigDict({"name": "cub", "data_dir": None, "image_size": SIZE, "resize": "squash"})
    with tfds.testing.mock_data(as_dataset_fn=fake_as_dataset):
        it, num = cub.load(config, "test")
        good, bad = list(it)
    assert num == 2
    assert good["image_id"] == "001.Black_footed_Albatross/a.jpg" and good["label"] == 0
    assert good["original_size"] == (50, 40) and good["image"].shape == (224, 224, 3)
    np.testing.assert_array_equal(good["boxes_original"], [[10, 4, 34, 35]])
    np.testing.assert_array_equal(good["boxes"], [[45, 22, 156, 201]])
    assert bad["label"] == 1 and "image" not in bad
    assert bad["error"].startswith("cannot decode 002.Laysan_Albatross/b.jpg of caltech_birds2011")


# --- folder -----------------------------------------------------------------------------------------------------


@pytest.fixture
def photos(tmp_path):
    (tmp_path / "b.jpg").write_bytes(encode(60, 30))
    (tmp_path / "b.xml").write_text(voc([("dog", 4, 7, 18, 36), ("cat", 1, 1, 30, 60)]))
    (tmp_path / "a.png").write_bytes(encode(20, 20, fmt="PNG"))
    (tmp_path / "c.JPEG").write_bytes(encode(10, 10))
    (tmp_path / "c.xml").write_text(voc([]))
    (tmp_path / "d.jpg").write_bytes(b"broken")
    (tmp_path / "e.jpg").write_bytes(encode(10, 10))
    (tmp_path / "e.xml").write_text("<annotation><object>")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def folder_config(path):
    return ml_collections.ConfigDict({"name": "folder", "folder": str(path), "image_size": SIZE, "resize": "squash"})


def test_folder_with_and_without_xml(photos):
    it, num = folder.load(folder_config(photos), "all")
    a, b, c, d, e = list(it)
    assert num == 5
    assert [x["image_id"] for x in (a, b, c, d, e)] == ["a.png", "b.jpg", "c.JPEG", "d.jpg", "e.jpg"]
    assert {x["label"] for x in (a, b, c, d, e)} == {-1}
    assert a["boxes"].shape == (0, 4) and a["boxes_original"].shape == (0, 4) and a["image"].shape == (224, 224, 3)
    np.testing.assert_array_equal(b["boxes"], [[22, 22, 133, 133], [0, 0, 223, 223]])
    np.testing.assert_array_equal(b["boxes_original"], [[6, 3, 35, 17], [0, 0, 59, 29]])
    assert b["original_size"] == (60, 30)
    assert c["boxes"].shape == (0, 4)
    assert "image" not in d and d["error"].startswith(f"cannot decode {photos / 'd.jpg'}")
    assert "image" not in e and e["error"].startswith(f"cannot parse {photos / 'e.xml'}")
    it, num = folder.load(folder_config(photos), "images[1:3]")
    assert num == 2 and [x["image_id"] for x in it] == ["b.jpg", "c.JPEG"]


def test_folder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found") as err:
        folder.load(folder_config(tmp_path / "nope"), "all")
    assert str(tmp_path / "nope") in str(err.value)
    with pytest.raises(FileNotFoundError, match="no .jpg/.jpeg/.png images in"):
        folder.load(folder_config(tmp_path), "all")


def test_split_pick_names_the_rows_of_a_split():
    import types  # noqa: PLC0415

    from eval.datasets import splits  # noqa: PLC0415
    info = {"validation": types.SimpleNamespace(num_examples=2000)}
    assert splits.pick("validation[1000:]", [0, 1, 5], info) == "validation[1000:1002]+validation[1005:1006]"
    assert splits.pick("validation[:2]+validation[10:12]", [1, 2, 3], info) == "validation[1:2]+validation[10:12]"
    assert splits.pick("validation[5:9]", [], info) == ""
