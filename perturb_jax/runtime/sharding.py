"""Data parallelism over every device of every process: a one-axis mesh, the batch split along it, the rest replicated.

The axis is Auto (``jax.make_mesh`` defaults to Explicit): the vmapped optimiser then needs no sharding annotations.
Each process feeds the rows of a global batch that its own devices hold (``process_rows``).
"""

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def data_parallel() -> tuple[NamedSharding, NamedSharding]:
    """(batch sharding, replicated sharding) over a ``data`` mesh of all devices, with automatic propagation."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


def process_rows(batch_sharding: NamedSharding, batch_size: int) -> np.ndarray:
    """The rows of a global batch this process's devices hold, ascending: the order in which
    ``jax.make_array_from_process_local_data`` takes this process's local batch."""
    indices = batch_sharding.addressable_devices_indices_map((batch_size,)).values()
    return np.array(sorted({row for index in indices for row in range(*index[0].indices(batch_size))}))


def replicate(tree, sharding: NamedSharding):
    """Host values, the same on every process, as global arrays placed by ``sharding``."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
