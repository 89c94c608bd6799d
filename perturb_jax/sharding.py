"""Data parallelism over every device: a one-axis mesh, the batch split along it, everything else replicated.

The axis is Auto (``jax.make_mesh`` defaults to Explicit): the vmapped optimiser then needs no sharding annotations.
"""

import jax
from jax.sharding import NamedSharding, PartitionSpec as P


def data_parallel() -> tuple[NamedSharding, NamedSharding]:
    """(batch sharding, replicated sharding) over a ``data`` mesh of all devices, with automatic propagation."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
