"""TFDS split strings ('validation[:1000]', 'test[10%:]', 'a[:2]+a[5:]') applied to an ordered list of items.

The loaders that order their own items (ILSVRC by file name, a user's folder) use TFDS's own parser, so a split
string means the same slice as it would for a TFDS dataset of that length, percent rounding included.
"""

import types

import tensorflow_datasets as tfds


def split_names(split: str) -> list[str]:
    """The split names a split string mentions, e.g. ['validation'] for 'validation[:10]+validation[20:]'."""
    return sorted({part.split("[")[0].strip() for part in split.split("+")})


def select(split: str, num_items: int, allowed: tuple[str, ...] | None = None) -> list[int]:
    """Indices, in order, of the items that ``split`` picks from ``num_items``.

    ``allowed=None`` accepts any split name for the items.  'all' means every item, as in TFDS (which cannot slice
    it).  Raises ValueError for a malformed string, an unknown split name or a slice beyond ``num_items``.
    """
    if allowed is None:
        allowed = tuple(n for n in split_names(split) if n != "all") or ("items",)
    names = allowed
    info = types.SimpleNamespace(num_examples=num_items, shard_lengths=[num_items])
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute({name: info for name in names})
    return [i for ins in instructions for i in range(num_items)[slice(ins.from_, ins.to)]]


def pick(split: str, rows, split_infos) -> str:
    """The TFDS split string of the items at positions ``rows`` (increasing) of ``split``, e.g. rows [0, 1, 5] of
    'validation[1000:]' -> 'validation[1000:1002]+validation[1005:1006]'; ``split_infos`` maps split names to
    objects with ``num_examples`` (a builder's ``info.splits``). Empty ``rows`` give ''."""
    items = [(ins.splitname, i) for ins in tfds.core.ReadInstruction.from_spec(split).to_absolute(split_infos)
             for i in range(split_infos[ins.splitname].num_examples)[slice(ins.from_, ins.to)]]
    runs = []
    for name, i in (items[r] for r in rows):
        if runs and runs[-1][0] == name and runs[-1][2] == i:
            runs[-1][2] = i + 1
        else:
            runs.append([name, i, i + 1])
    return "+".join(f"{name}[{a}:{b}]" for name, a, b in runs)
