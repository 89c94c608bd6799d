"""Pascal-VOC annotation XML (the ILSVRC box files use the same format).

VOC coordinates are 1-based inclusive pixel indices: a box reaching the right edge of a 500-pixel-wide image has
xmax = 500.  Every coordinate is lowered by 1 to the package's 0-based inclusive convention.  Fractional values,
which some annotation tools write, are rounded half up first.
"""

import math
import xml.etree.ElementTree as ET

PARSE_ERRORS = (ET.ParseError, ValueError)
"""What ``parse`` raises on a malformed file."""


def from_one_based(xmin, ymin, xmax, ymax) -> tuple[int, int, int, int]:
    """0-based inclusive (ymin, xmin, ymax, xmax) from 1-based inclusive VOC values (numbers or strings)."""
    ymin, xmin, ymax, xmax = (math.floor(float(v) + 0.5) - 1 for v in (ymin, xmin, ymax, xmax))
    return ymin, xmin, ymax, xmax


def parse(data: bytes | str) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(name, 0-based (ymin, xmin, ymax, xmax)) of every <object> with a <bndbox>, in file order."""
    objects = []
    for obj in ET.fromstring(data).iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        values = [box.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")]
        if None in values:
            raise ValueError("a <bndbox> lacks one of xmin, ymin, xmax, ymax")
        objects.append(((obj.findtext("name") or "").strip(), from_one_based(*values)))
    return objects
