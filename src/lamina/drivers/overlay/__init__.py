"""The overlay driver (kernel overlayfs, Docker's overlay2 layout).

Registered as ``"overlay"``; see :mod:`lamina.drivers.overlay._driver`.
"""

from lamina.drivers.overlay._driver import OverlayDriver

__all__ = ["OverlayDriver"]
