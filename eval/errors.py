"""The one error of a config value that cannot run: raised by the loaders, the runtime and both jobs, printed as one
line naming the field and the fix (``perturb_jax.runtime.cli``)."""


class ConfigError(ValueError):
    """A config value that cannot run; the message names the field and the fix."""
