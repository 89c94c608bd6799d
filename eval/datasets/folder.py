"""A folder of the user's own photos (.jpg, .jpeg, .png, any case), in file-name order, label -1.

Boxes are optional: ``photo.xml`` beside ``photo.jpg``, Pascal-VOC (``_examples``). ``data_config.folder`` is the
folder; ``image_size`` and ``resize`` as in ``preprocess``. The split name is free ('all', 'train', ...); its slice
applies to the sorted files. An image that does not decode, or whose XML does not parse, yields ``preprocess.skipped``.
"""

import os

from eval.datasets import preprocess, splits, voc_xml

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
LABEL = -1


def load(data_config, split: str, rows=None):
    """(iterator of examples, number of examples) of the images of ``data_config.folder`` that ``split`` picks
    (``rows``: see ``eval.datasets.load``)."""
    preprocess.check_mode(data_config.resize)
    folder = data_config.folder
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder} (--config.data.folder)")
    names = sorted(n for n in os.listdir(folder)
                   if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_EXTENSIONS)} images in {folder} (--config.data.folder)")
    names = [names[i] for i in splits.select(split, len(names))]
    names = names if rows is None else [names[r] for r in rows]
    return _examples(data_config, names), len(names)


def _examples(data_config, names):
    """The examples of ``names``. ``photo.xml`` beside ``photo.jpg`` is read as Pascal-VOC (``voc_xml``; every object
    counts, whatever its name, since the label is unknown and the method explains the predicted class). An image
    without an XML, or whose XML holds no object (what annotation tools write for an image with nothing marked), has
    zero boxes: it is explained but not scored."""
    for name in names:
        path = os.path.join(data_config.folder, name)
        xml = os.path.splitext(path)[0] + ".xml"
        boxes = []
        if os.path.isfile(xml):
            try:
                with open(xml, "rb") as f:
                    boxes = [box for _, box in voc_xml.parse(f.read())]
            except voc_xml.PARSE_ERRORS as e:
                yield preprocess.skipped(name, LABEL, f"cannot parse {xml}: {e}")
                continue
        try:
            with open(path, "rb") as f:
                image = preprocess.decode(f.read())
        except preprocess.DECODE_ERRORS as e:
            yield preprocess.skipped(name, LABEL, f"cannot decode {path}: {e}")
            continue
        yield preprocess.make_example(image, boxes, LABEL, name, data_config.image_size, data_config.resize)
