"""The exceptions that stop a long job early (light to import)."""


class Interrupted(SystemExit):
    """Raised after a deferred Ctrl-C once the checkpoint is safely written (or when a stop keeps an earlier
    checkpoint); its message says what is kept and how to resume. `status`: the exit status (130, 143)."""

    def __init__(self, message: str, status: int = 130) -> None:
        super().__init__(message)
        self.status = status


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every `finally` removes its temporary files."""
