"""lamina: a storage engine for container image layers.

The public API is Docker's graph-driver contract (:mod:`lamina.drivers`),
the archive engine that applies and exports layers (:mod:`lamina.archive`)
and one exception tree (:mod:`lamina.errors`).
"""

from lamina import archive, drivers, errors
from lamina._change import Change, ChangeKind

__all__ = ["Change", "ChangeKind", "__version__", "archive", "drivers", "errors"]

__version__ = "0.1.0"
