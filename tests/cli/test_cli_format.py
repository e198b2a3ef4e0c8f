"""Docker's display shapes: go-units sizes and ages, tables, short ids, stored names."""

from __future__ import annotations

import datetime as dt

import pytest

from lamina.cli._format import (
    created_text,
    human_duration,
    human_size,
    newest_first_key,
    short_id,
    split_name,
    table,
)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (999, "999B"),
        (1000, "1kB"),
        (4_260_000, "4.26MB"),
        (1_070_000_000, "1.07GB"),
        (None, "-"),
    ],
)
def test_human_size_is_go_units_decimal(size: int | None, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "Less than a second"),
        (1, "1 second"),
        (30, "30 seconds"),
        (61, "About a minute"),
        (600, "10 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (3 * 86400, "3 days"),
        (20 * 86400, "2 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration_is_go_units(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_created_text_reads_go_nanoseconds_and_tolerates_junk() -> None:
    now = dt.datetime(2024, 1, 2, 4, 4, 5, tzinfo=dt.UTC)
    assert created_text("2024-01-02T03:04:05.123456789Z", now) == "59 minutes ago"
    assert created_text("2024-01-02T03:04:05Z", now) == "About an hour ago"
    assert created_text(None, now) == "N/A"
    assert created_text("yesterday", now) == "N/A"
    assert created_text("2030-01-01T00:00:00Z", now) == "Less than a second ago"
    assert newest_first_key("junk") < newest_first_key("2001-01-01T00:00:00Z")


def test_short_id_and_names() -> None:
    assert short_id("sha256:" + "ab" * 32) == "ab" * 6
    assert split_name("docker.io/library/debian:12") == ("debian", "12", None)
    digest = "sha256:" + "cd" * 32
    assert split_name(f"localhost:5000/x@{digest}") == ("localhost:5000/x", "<none>", digest)
    assert split_name("not a reference") == ("not a reference", "<none>", None)


def test_table_pads_every_column_but_the_last() -> None:
    assert table(["A", "BB", "C"], [["xxx", "y", "z"]]).splitlines() == [
        "A     BB   C",
        "xxx   y    z",
    ]
