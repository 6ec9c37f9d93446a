"""Errors a user can act on: each message names the file, folder or config key at fault."""

from __future__ import annotations


class MemSegError(Exception):
    """Base of every error memseg raises on purpose."""


def listed(problems: list[str], limit: int = 50) -> str:
    """One indented line per problem, the first ``limit`` of them, then how many more."""
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return "".join(f"\n  {line}" for line in problems[:limit]) + more


class ConfigError(MemSegError, ValueError):
    """A config file or override is invalid; the message names the dotted key."""


class DatasetLayoutError(MemSegError):
    """The dataset folder is not in the MVTec AD layout; ``problems`` lists every offending path."""

    def __init__(self, root: str, problems: list[str]) -> None:
        self.root = root
        self.problems = list(problems)
        super().__init__(f"{root}: dataset layout has {len(self.problems)} problem(s):{listed(self.problems)}")


class ImageReadError(MemSegError):
    """An image or mask file could not be decoded."""


class DownloadError(MemSegError):
    """A download failed or its checksum did not match."""


class TrainingDivergedError(MemSegError):
    """The loss became NaN or infinite; training stopped instead of going on with garbage."""


class CheckpointError(MemSegError):
    """A checkpoint file is missing, unreadable or from an incompatible config schema."""
