"""Which exceptions are the user's mistake: `matrl.cli.main` prints those as one line and exits 2.

A user error is bad input the user can fix: a graph (`GraphError`), a config or `--set`
(`ConfigError`), a dataset (`DatasetError`), a checkpoint (`CheckpointError`), missing pretrained
weights (`WeightsUnavailable`), an argument a command checks itself (`UserError`), or a file the OS
refuses (`OSError` naming a file). Their messages already name the culprit, so a traceback adds
nothing. Every other exception is a bug and keeps its traceback.

The types live in lower packages that `matrl` must not import eagerly (torch, pyarrow): an error of
a type whose module was never imported cannot have been raised, so they are looked up in
`sys.modules` only.
"""

from __future__ import annotations

import sys

USER_ERROR_TYPES = (  # (module, class name)
    ("graph_executor.errors", "GraphError"),
    ("matrl.config", "ConfigError"),
    ("learner.dataset", "DatasetError"),
    ("policy.checkpoint", "CheckpointError"),
    ("policy.pretrained", "WeightsUnavailable"),
)
MAX_MESSAGE_CHARS = 1000  # a message longer than this is cut: one line must stay readable


class UserError(Exception):
    """A command argument that cannot be used; the message names the flag and the value."""


def _types() -> tuple[type, ...]:
    found = [UserError]
    for module, name in USER_ERROR_TYPES:
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def user_error_message(err: BaseException) -> str | None:
    """`err` as one line if it is a user error, else None (the caller re-raises it)."""
    if isinstance(err, _types()):
        text = str(err)
    elif isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"
    else:
        return None
    text = " ".join(text.split()) or type(err).__name__
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + " ..."
