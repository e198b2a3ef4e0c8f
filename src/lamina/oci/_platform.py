"""Platforms (``os/arch[/variant]``) and how an index entry is chosen for one.

An image index lists one manifest per platform, and the same machine has
several spellings (``x86_64`` and ``amd64``; ``aarch64``, ``arm64`` and
``arm64/v8``), so both what the user asks for and what an index offers are
normalised before they are compared, with containerd's table
(``platforms/database.go``):

* os: lower case; ``macos`` is ``darwin``.
* ``x86_64``, ``x86-64`` → ``amd64``; its variant ``v1`` is the default and
  dropped.  ``i386``, ``i486``, ``i586``, ``i686`` → ``386``.
* ``aarch64`` → ``arm64``; ``v8`` (also ``8``, ``v8.0``) is arm64's default
  variant and dropped, so ``arm64`` and ``arm64/v8`` are the same platform.
* ``arm``: the default variant is ``v7`` and is written out (``arm`` →
  ``arm/v7``, as containerd writes it); ``armhf`` → ``arm/v7``; ``armel`` →
  ``arm/v6``; a bare digit ``6`` is ``v6``.
* ``os.version`` (Windows builds, ``10.0.20348.2113``) is kept; a wanted
  platform with one matches candidates of the same ``major.minor.build``.

:func:`select_platform` picks the index entry to pull: an exact match
first, then what the wanted machine also runs, best first (an ``arm64``
host runs ``arm/v8`` … ``arm/v5``; ``amd64/v3`` runs ``v2`` and ``v1``;
``arm/v7`` runs ``v6`` and ``v5``), like containerd's ordered matcher.
Only the platform's own fields are compared: ``os.features`` and
``features`` are carried, not matched.
"""

from __future__ import annotations

from lamina._frozen import Frozen
from lamina.errors import InvalidArgumentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["Platform", "host_platform", "parse_platform", "select_platform"]

_OS = {"macos": "darwin"}
_X86 = {"x86_64", "x86-64", "amd64"}
_I386 = {"i386", "i486", "i586", "i686", "386"}


def _normalise(os_name: str, arch: str, variant: str) -> tuple[str, str, str]:
    os_name = os_name.lower()
    os_name = _OS.get(os_name, os_name)
    arch, variant = arch.lower(), variant.lower()
    if arch in _I386:
        return os_name, "386", variant
    if arch in _X86:
        return os_name, "amd64", "" if variant == "v1" else variant
    if arch in {"aarch64", "arm64"}:
        if variant in {"8", "v8", "v8.0"}:
            variant = ""
        elif variant in {"9", "9.0", "v9.0"}:
            variant = "v9"
        return os_name, "arm64", variant
    if arch == "armhf":
        return os_name, "arm", "v7"
    if arch == "armel":
        return os_name, "arm", "v6"
    if arch == "arm":
        if variant in {"", "7"}:
            variant = "v7"
        elif variant in {"5", "6", "8"}:
            variant = "v" + variant
        return os_name, "arm", variant
    return os_name, arch, variant


class Platform(Frozen):
    """A normalised platform; ``str(p)`` is ``os/arch[/variant]``.

    The constructor normalises, so ``Platform("linux", "x86_64") ==
    Platform("linux", "amd64")``.
    """

    __slots__ = ("architecture", "os", "os_features", "os_version", "variant")
    __match_args__ = _fields = ("os", "architecture", "variant", "os_version", "os_features")

    os: str
    architecture: str
    variant: str
    os_version: str
    os_features: tuple[str, ...]

    def __init__(
        self,
        os: str,
        architecture: str,
        variant: str = "",
        os_version: str = "",
        os_features: Iterable[str] = (),
    ) -> None:
        if not os or not architecture:
            raise InvalidArgumentError(
                f"a platform needs an os and an architecture: {os!r}/{architecture!r}"
            )
        os, architecture, variant = _normalise(os, architecture, variant or "")
        object.__setattr__(self, "os", os)
        object.__setattr__(self, "architecture", architecture)
        object.__setattr__(self, "variant", variant)
        object.__setattr__(self, "os_version", os_version or "")
        object.__setattr__(self, "os_features", tuple(os_features))

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)

    def to_dict(self) -> dict[str, object]:
        """The descriptor's ``platform`` object (OCI field names)."""
        data: dict[str, object] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            data["variant"] = self.variant
        if self.os_version:
            data["os.version"] = self.os_version
        if self.os_features:
            data["os.features"] = list(self.os_features)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Platform:
        """From a descriptor's ``platform`` object or an image config (same field names)."""
        os_name, arch = data.get("os"), data.get("architecture")
        variant, version = data.get("variant", ""), data.get("os.version", "")
        features = data.get("os.features", [])
        if not (
            isinstance(os_name, str)
            and isinstance(arch, str)
            and isinstance(variant, str)
            and isinstance(version, str)
            and isinstance(features, list)
            and all(isinstance(f, str) for f in features)
        ):
            raise InvalidArgumentError(f"malformed platform {dict(data)!r}")
        return cls(os_name, arch, variant, version, features)

    def matches(self, candidate: Platform) -> bool:
        """Whether ``candidate`` is exactly this platform (``self`` is the one wanted).

        The os version only counts when this platform names one: then the
        candidate's first three components (``major.minor.build``) must agree.
        """
        if (self.os, self.architecture, self.variant) != (
            candidate.os,
            candidate.architecture,
            candidate.variant,
        ):
            return False
        if self.os_version:
            return _build(self.os_version) == _build(candidate.os_version)
        return True

    def compatible(self) -> list[Platform]:
        """This platform, then what a machine of this platform also runs, best first."""
        result = [self]

        def add(arch: str, variants: Iterable[str]) -> None:
            result.extend(Platform(self.os, arch, v, self.os_version) for v in variants)

        if self.architecture == "arm64":
            add("arm", ("v8", "v7", "v6", "v5"))
        elif self.architecture == "arm" and self.variant[:1] == "v" and self.variant[1:].isdigit():
            level = int(self.variant[1:])
            add("arm", (f"v{n}" for n in range(level - 1, 4, -1)))
        elif self.architecture == "amd64":
            level = int(self.variant[1:]) if self.variant[1:].isdigit() else 1
            add("amd64", (f"v{n}" if n > 1 else "" for n in range(level - 1, 0, -1)))
            add("386", ("",))
        return result


def _build(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:3])


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]`` (``linux/arm64``, ``linux/arm/v7``), normalised.

    Errors are :class:`InvalidArgumentError`.
    """
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgumentError(f"invalid platform {text!r}: want os/arch[/variant]")
    return Platform(*parts)


def host_platform() -> Platform:
    """The platform of this machine, as Docker would ask for it by default."""
    import platform as _stdlib_platform
    import sys

    os_name = "windows" if sys.platform == "win32" else sys.platform
    if os_name.startswith("linux"):
        os_name = "linux"
    machine = _stdlib_platform.machine() or "amd64"
    variant = ""
    if machine.lower().startswith("armv"):
        variant = "v" + machine[4:5]
        machine = "arm"
    return Platform(os_name, machine, variant)


def select_platform(candidates: Iterable[Platform | None], wanted: Platform) -> int | None:
    """The position of the best candidate for ``wanted``, or ``None``.

    An exact match wins, then the platforms ``wanted`` also runs, in
    :meth:`Platform.compatible` order; among equals the first in the list
    (index order).  ``None`` entries (descriptors without a platform) never
    match.
    """
    listed = list(candidates)
    for option in wanted.compatible():
        for position, candidate in enumerate(listed):
            if candidate is not None and option.matches(candidate):
                return position
    return None
