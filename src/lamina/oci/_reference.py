"""Image references, normalised the way Docker normalises them.

A reference is ``[host[:port]/]path[:tag][@digest]``.  Users type short forms
(``debian``, ``debian:12``, ``user/app``) and every tool agrees on what they
mean because Docker's ``ParseNormalizedNamed`` fixed it; we follow it rule by
rule so that a name lamina stores is the name Docker, Podman and skopeo show:

* The first path component is a *host* when it contains ``.`` or ``:``, is
  ``localhost``, or has upper-case letters (a repository path cannot);
  otherwise the host is ``docker.io`` and the whole text is the path.
* ``index.docker.io`` is ``docker.io``; on ``docker.io`` a one-component path
  is an official image: ``debian`` is ``docker.io/library/debian``.
* The path is lower case: ``[a-z0-9]+`` components joined by ``.``, ``_``,
  ``__`` or runs of ``-``, separated by ``/``; the name (host and path) is at
  most 255 characters.  A path with capitals is refused, not folded.
* A tag matches ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``.  A reference with
  neither tag nor digest gets the tag ``latest`` (Docker's
  ``ParseDockerRef``/``TagNameOnly``), so a stored name always says which
  image it is.  A reference may carry both a tag and a digest; both are kept.
* A 64-hex text on its own is an image *id*, never a repository name (Docker
  refuses it too, so ``docker run <id>`` can't be hijacked by a repository).
* The digest must be one lamina can verify (:class:`lamina._ids.Digest`):
  sha256 or sha512, lower-case hex.  Docker also accepts unregistered
  algorithms; we refuse them.

:attr:`Reference.familiar` is the short form Docker prints
(``FamiliarString``): ``docker.io/library/debian:12`` shows as ``debian:12``
and ``docker.io/user/app:latest`` as ``user/app:latest``.  One deliberate
difference: a Docker Hub path whose first component looks like a host
(``docker.io/v1.0/app``) keeps its ``docker.io/``, because Docker's short form
(``v1.0/app``) would read back as the host ``v1.0``; likewise an official image
whose name is 64 hex digits keeps ``docker.io/library/``, since bare it reads as
an image id.  So both ``str(ref)`` and ``ref.familiar`` always parse back to
``ref``.

Every parse error is :class:`lamina.errors.InvalidArgumentError`: a reference
is something a caller typed or passed.  Archive readers that find a bad name
inside a file re-raise it as the archive's error.
"""

from __future__ import annotations

import re

from lamina._frozen import Frozen
from lamina._ids import Digest
from lamina.errors import InvalidArgumentError

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "Reference",
    "parse_reference",
]

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
_LEGACY_DOMAIN = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
_NAME_MAX = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?")
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")


class Reference(Frozen):
    """A normalised image reference: ``domain/path[:tag][@digest]``.

    ``str(ref)`` is the full normalised form and parses back to an equal
    reference; :attr:`familiar` is the short form for display.  Build one
    with :func:`parse_reference` or the constructor, which validates each
    part and normalises Docker Hub's spellings (``index.docker.io``, the
    ``library/`` prefix) but adds no tag.  A host that would not read back
    as a host (``myhost``, which Docker reads as a Docker Hub namespace) is
    refused.
    """

    __slots__ = ("digest", "domain", "path", "tag")
    __match_args__ = _fields = ("domain", "path", "tag", "digest")

    domain: str
    path: str
    tag: str | None
    digest: Digest | None

    def __init__(
        self, domain: str, path: str, tag: str | None = None, digest: str | None = None
    ) -> None:
        if not isinstance(domain, str) or not isinstance(path, str):
            raise InvalidArgumentError("a reference's host and path are strings")
        if _DOMAIN.fullmatch(domain) is None or not _looks_like_host(domain):
            raise InvalidArgumentError(
                f"invalid registry host {domain!r}: a host has a '.' or a ':', has upper case"
                " letters or is 'localhost'"
            )
        if domain == _LEGACY_DOMAIN:
            domain = DEFAULT_DOMAIN
        if domain == DEFAULT_DOMAIN and "/" not in path:
            path = _OFFICIAL_PREFIX + path
        if _PATH.fullmatch(path) is None:
            raise InvalidArgumentError(
                f"invalid repository name {path!r}: lower-case letters, digits and separators"
            )
        if len(domain) + 1 + len(path) > _NAME_MAX:
            raise InvalidArgumentError(f"repository name longer than {_NAME_MAX} characters")
        if tag is not None and (not isinstance(tag, str) or _TAG.fullmatch(tag) is None):
            raise InvalidArgumentError(f"invalid tag {tag!r}")
        object.__setattr__(self, "domain", domain)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "digest", None if digest is None else Digest(digest))

    @property
    def name(self) -> str:
        """``domain/path``: the repository, without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository as Docker shows it: no ``docker.io/``, no ``library/``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith(_OFFICIAL_PREFIX) and "/" not in path[len(_OFFICIAL_PREFIX) :]:
            short = path[len(_OFFICIAL_PREFIX) :]
            # Docker would print a 64-hex official name bare, which reads back as an image id
            return self.name if _IMAGE_ID.fullmatch(short) else short
        if _looks_like_host(path.partition("/")[0]):
            # Docker would print "0.0/app", which reads back as host "0.0": keep the host
            return self.name
        return path

    @property
    def familiar(self) -> str:
        """The short form Docker prints (``FamiliarString``): ``debian:12``."""
        return self.familiar_name + self._suffix()

    def with_tag(self, tag: str) -> Reference:
        """The same repository with ``tag`` and no digest."""
        return Reference(self.domain, self.path, tag)

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to ``digest`` (the tag is kept)."""
        return Reference(self.domain, self.path, self.tag, digest)

    def _suffix(self) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return tag + digest

    def __str__(self) -> str:
        return self.name + self._suffix()


def _looks_like_host(first: str) -> bool:
    """Whether Docker reads ``first`` (a first path component) as a registry host."""
    return "." in first or ":" in first or first == "localhost" or first.lower() != first


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's ``splitDockerDomain``: which part of ``name`` is the host.

    ``index.docker.io`` and the ``library/`` prefix are the constructor's job.
    """
    first, slash, rest = name.partition("/")
    if slash and _looks_like_host(first):
        return first, rest
    return DEFAULT_DOMAIN, name


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise ``text`` as Docker does.

    ``debian`` → ``docker.io/library/debian:latest``; ``localhost:5000/x`` →
    host ``localhost:5000``.  ``default_tag=False`` leaves a reference without
    tag or digest untagged (a repository name).  Errors are
    :class:`InvalidArgumentError`.
    """
    if not isinstance(text, str) or not text:
        raise InvalidArgumentError("empty image reference")
    if _IMAGE_ID.fullmatch(text):
        raise InvalidArgumentError(
            f"invalid reference {text!r}: a 64-hex string is an image id, not a repository"
        )
    rest, at, digest_text = text.partition("@")
    digest = None
    if at:
        try:
            digest = Digest(digest_text)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"invalid reference {text!r}: {exc}") from None
    # a tag follows the last ':' that comes after the last '/' (a port is before it)
    tag: str | None = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        if _TAG.fullmatch(tag) is None:
            raise InvalidArgumentError(f"invalid reference {text!r}: bad tag {tag!r}")
    if not rest:
        raise InvalidArgumentError(f"invalid reference {text!r}: no repository name")
    domain, path = _split_domain(rest)
    if path.lower() != path:
        raise InvalidArgumentError(
            f"invalid reference {text!r}: repository name {path!r} must be lower case"
        )
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    try:
        return Reference(domain, path, tag, digest)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"invalid reference {text!r}: {exc}") from None
