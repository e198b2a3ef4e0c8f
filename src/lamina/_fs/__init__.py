"""Effects: the only code that makes writes atomic, takes locks, copies trees or mounts."""

from lamina._fs._mounter import Mount, Mounter

__all__ = ["Mount", "Mounter"]
