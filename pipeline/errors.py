"""Error types of the pipeline library. Every message names the file, row or value that is wrong."""


class FacepipeError(Exception):
    """Base class for errors a user can act on (the CLI prints them without a traceback)."""


class ConfigError(FacepipeError, ValueError):
    """A configuration value or file is invalid."""


class DataError(FacepipeError, ValueError):
    """A dataset folder, manifest or pairs file is missing or malformed."""


class ImageError(FacepipeError, ValueError):
    """One image cannot be decoded; batch operations record it as a reject and go on.

    ``str(err)`` is ``"<path>: <reason>"``; ``err.reason`` alone goes in a rejects table's ``error`` column.
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class ModelArtifactError(FacepipeError, ValueError):
    """A model directory is incomplete, tampered with, or of an unsupported format."""
