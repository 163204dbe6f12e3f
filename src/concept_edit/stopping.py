"""The exception a long job raises after a deferred Ctrl-C, once its checkpoint is written (light to import)."""


class Interrupted(SystemExit):
    """Raised after a deferred Ctrl-C once the checkpoint is safely written; its message says how to resume."""
