"""Platforms: containerd's normalisation table and index-entry selection."""

from __future__ import annotations

import pytest

from lamina import errors
from lamina.oci import Index, Platform, host_platform, parse_platform, select_platform


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/x86-64", "linux/amd64"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/amd64/v3", "linux/amd64/v3"),
        ("Linux/AMD64", "linux/amd64"),
        ("linux/i686", "linux/386"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/arm64/8", "linux/arm64"),
        ("linux/aarch64/v8.0", "linux/arm64"),
        ("linux/arm64/v9.0", "linux/arm64/v9"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/7", "linux/arm/v7"),
        ("linux/arm/v6", "linux/arm/v6"),
        ("linux/arm/6", "linux/arm/v6"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("macos/arm64", "darwin/arm64"),
        ("windows/amd64", "windows/amd64"),
        ("linux/s390x", "linux/s390x"),
        ("linux/ppc64le", "linux/ppc64le"),
        ("linux/riscv64", "linux/riscv64"),
    ],
)
def test_platforms_normalise_like_containerd(text: str, normal: str) -> None:
    platform = parse_platform(text)
    assert str(platform) == normal
    assert parse_platform(normal) == platform


@pytest.mark.parametrize("text", ["", "linux", "linux/", "/amd64", "linux/arm/v7/x", "a//b"])
def test_malformed_platforms_are_invalid_arguments(text: str) -> None:
    with pytest.raises(errors.InvalidArgumentError):
        parse_platform(text)


def test_platform_json_round_trip() -> None:
    windows = Platform("windows", "amd64", os_version="10.0.20348.2113", os_features=["win32k"])
    data = windows.to_dict()
    assert data == {
        "architecture": "amd64",
        "os": "windows",
        "os.version": "10.0.20348.2113",
        "os.features": ["win32k"],
    }
    assert Platform.from_dict(data) == windows
    with pytest.raises(errors.InvalidArgumentError):
        Platform.from_dict({"os": "linux", "architecture": 64})


def test_windows_os_version_matches_on_the_build() -> None:
    want = Platform("windows", "amd64", os_version="10.0.20348")
    assert want.matches(Platform("windows", "amd64", os_version="10.0.20348.2113"))
    assert not want.matches(Platform("windows", "amd64", os_version="10.0.17763.5122"))
    # a wanted platform without a version takes any build
    assert Platform("windows", "amd64").matches(Platform("windows", "amd64", os_version="1.2.3"))


# A Docker Hub-style manifest list (the platforms of the official debian image).
_LIST = b"""{
  "manifests": [
    {"digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
     "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "platform": {"architecture": "amd64", "os": "linux"}, "size": 1017},
    {"digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222",
     "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "platform": {"architecture": "arm", "os": "linux", "variant": "v5"}, "size": 1017},
    {"digest": "sha256:3333333333333333333333333333333333333333333333333333333333333333",
     "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}, "size": 1017},
    {"digest": "sha256:4444444444444444444444444444444444444444444444444444444444444444",
     "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}, "size": 1017},
    {"digest": "sha256:5555555555555555555555555555555555555555555555555555555555555555",
     "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "platform": {"architecture": "unknown", "os": "unknown"}, "size": 566},
    {"digest": "sha256:6666666666666666666666666666666666666666666666666666666666666666",
     "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "platform": {"architecture": "s390x", "os": "linux"}, "size": 1017}
  ],
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "schemaVersion": 2
}"""


@pytest.mark.parametrize(
    ("wanted", "position"),
    [
        ("linux/amd64", 0),
        ("linux/x86_64", 0),
        ("linux/arm64", 3),  # the entry says arm64/v8: the same platform
        ("linux/aarch64", 3),
        ("linux/arm/v7", 2),
        ("linux/arm", 2),
        ("linux/arm/v6", 1),  # no v6 entry: v5 runs on a v6 machine
        ("linux/s390x", 5),
        ("linux/ppc64le", None),
        ("windows/amd64", None),
        ("linux/amd64/v3", 0),  # a v3 machine runs v1 images
    ],
)
def test_select_platform_from_a_real_index(wanted: str, position: int | None) -> None:
    index = Index.parse(_LIST)
    assert select_platform(index.platforms(), parse_platform(wanted)) == position


def test_an_exact_match_beats_a_compatible_one() -> None:
    candidates = [parse_platform("linux/arm/v5"), parse_platform("linux/arm/v7"), None]
    assert select_platform(candidates, parse_platform("linux/arm/v7")) == 1
    assert select_platform([None], parse_platform("linux/amd64")) is None


def test_host_platform_is_normalised() -> None:
    host = host_platform()
    assert host.os and host.architecture
    assert host == parse_platform(str(host))
