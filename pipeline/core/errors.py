"""The project's one error tree. Every message names the file, row or value that is wrong and what to do.

    FacepipeError                      (root, from `indexes.errors`: the bottom layer defines it)
      ConfigError, DataError, ImageError, ModelArtifactError   (this module)
      StoreError -> ModelVersionMismatch, StoreCorrupt, StoreLocked; StoreWriteError (an OSError too)
      RegistryError                    (`lifecycle.registry`), PromotionError (`lifecycle.promotion`)

The CLI (`pipeline.cli.main`) prints any FacepipeError on one line and exits 2; anything else is a bug and
keeps its traceback.
"""

from indexes.errors import FacepipeError, StoreError, StoreWriteError

__all__ = ["ConfigError", "DataError", "FacepipeError", "ImageError", "ModelArtifactError", "StoreError",
           "StoreWriteError"]


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

    def __reduce__(self):  # travels back from worker processes as itself (the default would call __init__(msg))
        return (type(self), (self.path, self.reason))


class ModelArtifactError(FacepipeError, ValueError):
    """A model directory is incomplete, tampered with, or of an unsupported format."""
