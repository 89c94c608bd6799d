"""What every command line here shares: absl flag parsing with a one-line error for a bad config field."""

import ast

from absl import flags


def parse_flags(argv):
    """absl's parsing, with a misspelt or ill-typed config field, or a config file's own ``ConfigError`` (an unknown
    variant), reported in one line instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
        own = _innermost_config_error(e)
        if own is not None:
            raise SystemExit(f"error: {' '.join(str(own).split())}") from None
        text = str(e)
        if text[:1] in "'\"":  # config_flags wraps a KeyError's repr in an AttributeError
            text = ast.literal_eval(text)
        message = " ".join(text.split())
        raise SystemExit(f"error: bad flag or config field: {message}") from None


def _innermost_config_error(error: BaseException) -> BaseException | None:
    """The innermost ``ConfigError`` in ``error``'s chain (config_flags re-raises a config file's with the traceback
    as its message, and absl wraps that), or None."""
    from eval.errors import ConfigError  # noqa: PLC0415

    found = None
    while error is not None:
        found = error if isinstance(error, ConfigError) else found
        error = error.__cause__ or error.__context__
    return found


def run_job(job, config_help: str, workdir_help: str, errors: tuple = ()) -> None:
    """The command line of a job: ``--config`` (an ml_collections file, locked) and ``--workdir``, then
    ``job(config, workdir)``. A config, checkpoint or missing-file error (and any of ``errors``) is one line."""
    from absl import app, logging  # noqa: PLC0415
    from ml_collections import config_flags  # noqa: PLC0415

    from perturb_jax.runtime.checkpoint import CheckpointError  # noqa: PLC0415
    from eval.errors import ConfigError  # noqa: PLC0415

    config = config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["config", "workdir"])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint at INFO; --verbosity=0 shows it.
        try:
            job(config.value, workdir.value)
        except (ConfigError, CheckpointError, FileNotFoundError, *errors) as e:
            raise SystemExit(f"error: {e}") from None

    app.run(main, flags_parser=parse_flags)
