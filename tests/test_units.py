"""Docker's size strings (go-units RAMInBytes)."""

from __future__ import annotations

import pytest

from lamina._units import ram_in_bytes
from lamina.errors import InvalidArgumentError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50M", 50 * 1024 * 1024),
        ("50m", 50 * 1024 * 1024),
        ("50MB", 50 * 1024 * 1024),
        ("50MiB", 50 * 1024 * 1024),
        ("50 mib", 50 * 1024 * 1024),
        ("32", 32),
        ("32b", 32),
        ("32 B", 32),
        ("1k", 1024),
        ("1.5k", 1536),
        ("1.5KiB", 1536),
        ("0.5g", 512 * 1024 * 1024),
        ("1T", 1 << 40),
        ("1p", 1 << 50),
        (".5k", 512),
        ("1e3", 1000),
        ("0", 0),
        ("3.9", 3),
    ],
)
def test_accepted(text: str, expected: int) -> None:
    assert ram_in_bytes(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "M",
        "-1",
        "-50M",
        "50x",
        "50MBB",
        "50 M B",
        "50kb2",
        "50bb",
        "50Mx",
        "50Mi",
        "abc",
        "1..2k",
        "9999999999p",
        "nan",
        "inf",
    ],
)
def test_refused(text: str) -> None:
    with pytest.raises(InvalidArgumentError):
        ram_in_bytes(text)
