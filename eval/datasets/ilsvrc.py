"""ImageNet (ILSVRC-2012) validation images with the ILSVRC localisation boxes, through ``preprocess``.

The images are read straight from ``ILSVRC2012_img_val.tar`` (not from TFDS's prepared split: docs/design-notes.md
says why), joined by file name with a box table (``read_boxes``) and labelled with TFDS's own label tables
(``label_tables``). ``load`` lists the ``data_config`` fields.
"""

import csv
import functools
import os
import tarfile

import tensorflow_datasets as tfds

from eval.datasets import preprocess, splits, voc_xml

VAL_TAR = "ILSVRC2012_img_val.tar"
ORDERS = ("file_name", "class_folder")


@functools.cache
def label_tables() -> tuple[list[str], list[str]]:
    """(synsets in label order, synset of each validation image in file-name order), as TFDS ships them in
    ``labels.txt`` (the sorted synsets; the label is the index, the same as torchvision's ImageFolder index) and
    ``validation_labels.txt``: labels equal TFDS's."""
    root = tfds.core.tfds_path("datasets/imagenet2012")
    return (root / "labels.txt").read_text().split(), (root / "validation_labels.txt").read_text().split()


def index_tar(path: str) -> dict[str, tuple[int, int]]:
    """{member file name: (data offset, size)} of the regular files of an uncompressed tar."""
    with tarfile.open(path, "r:") as tar:
        return {os.path.basename(m.name): (m.offset_data, m.size) for m in tar if m.isfile()}


def _csv_table(path: str, stems: set[str]) -> dict[str, list | str]:
    table = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: expected the columns ImageId,PredictionString, got {reader.fieldnames}")
        for row in reader:
            stem, tokens = row["ImageId"], row["PredictionString"].split()
            if stem not in stems:
                continue
            if not tokens or len(tokens) % 5:
                table[stem] = f"{path}: PredictionString of {stem} is not groups of 'synset xmin ymin xmax ymax'"
                continue
            try:
                table[stem] = [(tokens[i], voc_xml.from_one_based(*tokens[i + 1:i + 5]))
                               for i in range(0, len(tokens), 5)]
            except ValueError:
                table[stem] = f"{path}: PredictionString of {stem} has a coordinate that is not a number"
    for stem in stems - table.keys():
        table[stem] = f"no row for {stem} in {path}"
    return table


def _xml_entry(data: bytes, where: str) -> list | str:
    try:
        objects = voc_xml.parse(data)
    except voc_xml.PARSE_ERRORS as e:
        return f"cannot parse {where}: {e}"
    return objects or f"{where} has no <object> with a <bndbox>"


def _xml_table(path: str, stems: set[str]) -> dict[str, list | str]:
    table = {}
    if os.path.isdir(path):
        for stem in stems:
            xml = os.path.join(path, stem + ".xml")
            if os.path.isfile(xml):
                with open(xml, "rb") as f:
                    table[stem] = _xml_entry(f.read(), xml)
            else:
                table[stem] = f"missing box file {xml}"
        return table
    with tarfile.open(path, "r|*") as tar:
        for m in tar:
            stem = os.path.splitext(os.path.basename(m.name))[0]
            if m.isfile() and m.name.endswith(".xml") and stem in stems:
                table[stem] = _xml_entry(tar.extractfile(m).read(), f"{m.name} in {path}")
    for stem in stems - table.keys():
        table[stem] = f"no {stem}.xml in {path}"
    return table


def read_boxes(path: str, stems: set[str]) -> dict[str, list | str]:
    """{stem: [(synset, 0-based box), ...] or a one-line error} for the wanted file stems."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"ILSVRC box file not found: {path} (--config.data.boxes: ILSVRC2012_bbox_val_v3.tgz, "
            "a folder of ILSVRC2012_val_XXXXXXXX.xml, or LOC_val_solution.csv)")
    if path.lower().endswith(".csv"):
        return _csv_table(path, stems)
    return _xml_table(path, stems)


def load(data_config, split: str, rows=None):
    """(iterator of examples, number of examples) of ImageNet validation in ``data_config.order``, sliced by split
    (``rows``: see ``eval.datasets.load``).

    ``data_config`` fields:
      manual_dir:  folder holding ``ILSVRC2012_img_val.tar`` (from image-net.org);
      boxes:       ``ILSVRC2012_bbox_val_v3.tgz``, a folder of ``ILSVRC2012_val_XXXXXXXX.xml`` (the tgz's ``val/``),
                   or Kaggle's ``LOC_val_solution.csv`` (ImageId, PredictionString = 'synset xmin ymin xmax ymax ...',
                   the XMLs' numbers, hence the same 1-based inclusive convention; see ``voc_xml``);
      order:       'file_name' (ILSVRC2012_val_00000001 first) or 'class_folder' (synset, then file name: the order of
                   torchvision's ImageFolder over a val/ sorted into class folders);
      image_size, resize: see ``preprocess``.
    The split string (``validation`` only) slices that order: 'validation[:1000]' is the first 1000 images.

    A missing tar or box file raises FileNotFoundError naming the path expected. A problem with one image (no entry
    in the box table, an XML without a box or that does not parse, an image that does not decode) yields
    ``preprocess.skipped`` (image_id, label and a one-line ``error``, no image) in its place, so a long run records it
    and goes on.
    """
    preprocess.check_mode(data_config.resize)
    if data_config.order not in ORDERS:
        raise ValueError(f"config.data.order must be one of {ORDERS}, got {data_config.order!r}")
    tar_path = os.path.join(data_config.manual_dir, VAL_TAR)
    if not os.path.isfile(tar_path):
        raise FileNotFoundError(f"ImageNet validation tar not found: {tar_path} "
                                f"(put {VAL_TAR} from image-net.org in --config.data.manual_dir)")
    members = index_tar(tar_path)
    synsets, val_synsets = label_tables()
    synset_of = dict(zip(sorted(members), val_synsets))
    names = sorted(synset_of)
    if data_config.order == "class_folder":
        names.sort(key=lambda n: (synset_of[n], n))
    names = [names[i] for i in splits.select(split, len(names), allowed=("validation",))]
    names = names if rows is None else [names[r] for r in rows]
    table = read_boxes(data_config.boxes, {os.path.splitext(n)[0] for n in names})
    label_of = {s: i for i, s in enumerate(synsets)}
    return _examples(data_config, tar_path, members, names, synset_of, label_of, table), len(names)


def _examples(data_config, tar_path, members, names, synset_of, label_of, table):
    with open(tar_path, "rb") as f:
        for name in names:
            stem, synset = os.path.splitext(name)[0], synset_of[name]
            label, entry = label_of[synset], table[stem]
            if isinstance(entry, str):
                yield preprocess.skipped(name, label, entry)
                continue
            boxes = [box for s, box in entry if s == synset]  # only the image's class (in ILSVRC-2012 every box is)
            if not boxes:
                yield preprocess.skipped(name, label, f"no box of class {synset} for {stem} in {data_config.boxes}")
                continue
            offset, size = members[name]
            f.seek(offset)
            try:
                image = preprocess.decode(f.read(size))
            except preprocess.DECODE_ERRORS as e:
                yield preprocess.skipped(name, label, f"cannot decode {name} in {tar_path}: {e}")
                continue
            yield preprocess.make_example(image, boxes, label, name, data_config.image_size, data_config.resize)
