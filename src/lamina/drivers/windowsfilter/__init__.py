"""The windowsfilter driver: Windows image layers (the seed's driver) on Linux."""

from lamina.drivers.windowsfilter._driver import (
    DEFAULT_SANDBOX_SIZE,
    UNSUPPORTED_FILESYSTEMS,
    WindowsFilterDriver,
)

__all__ = ["DEFAULT_SANDBOX_SIZE", "UNSUPPORTED_FILESYSTEMS", "WindowsFilterDriver"]
