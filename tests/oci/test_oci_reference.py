"""Image references: Docker's normalisation, case by case, and a round-trip property.

The expected values are what ``docker pull``/``docker tag`` report for the
same text (distribution/reference's ``ParseNormalizedNamed`` test table,
re-derived by hand, plus ``TagNameOnly``'s default tag).
"""

from __future__ import annotations

import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina import errors
from lamina.oci import Reference, parse_reference

D = "sha256:" + "7" * 64


@pytest.mark.parametrize(
    ("text", "full", "familiar"),
    [
        ("debian", "docker.io/library/debian:latest", "debian:latest"),
        ("debian:12", "docker.io/library/debian:12", "debian:12"),
        ("library/debian:12", "docker.io/library/debian:12", "debian:12"),
        ("docker.io/debian", "docker.io/library/debian:latest", "debian:latest"),
        ("docker.io/library/debian", "docker.io/library/debian:latest", "debian:latest"),
        ("index.docker.io/debian:12", "docker.io/library/debian:12", "debian:12"),
        ("user/app", "docker.io/user/app:latest", "user/app:latest"),
        ("user/app:v1.2-rc_3", "docker.io/user/app:v1.2-rc_3", "user/app:v1.2-rc_3"),
        ("library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest"),
        ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
        ("localhost:5000/app:1", "localhost:5000/app:1", "localhost:5000/app:1"),
        ("127.0.0.1:5000/debian:12", "127.0.0.1:5000/debian:12", "127.0.0.1:5000/debian:12"),
        ("quay.io/podman/stable", "quay.io/podman/stable:latest", "quay.io/podman/stable:latest"),
        ("[::1]:5000/a", "[::1]:5000/a:latest", "[::1]:5000/a:latest"),
        ("Docker.IO/x", "Docker.IO/x:latest", "Docker.IO/x:latest"),  # upper case: a host
        ("localhost:5000", "docker.io/library/localhost:5000", "localhost:5000"),  # a tag
        (f"debian@{D}", f"docker.io/library/debian@{D}", f"debian@{D}"),
        (f"debian:12@{D}", f"docker.io/library/debian:12@{D}", f"debian:12@{D}"),
        (f"ghcr.io/o/r:t@{D}", f"ghcr.io/o/r:t@{D}", f"ghcr.io/o/r:t@{D}"),
        ("a__b-c--d.e_f", "docker.io/library/a__b-c--d.e_f:latest", "a__b-c--d.e_f:latest"),
        # Docker prints "v1.0/app" here, which reads back as host "v1.0"; we keep docker.io/
        ("docker.io/v1.0/app", "docker.io/v1.0/app:latest", "docker.io/v1.0/app:latest"),
    ],
)
def test_normalisation_matches_docker(text: str, full: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == full
    assert ref.familiar == familiar
    assert parse_reference(full) == ref
    assert parse_reference(familiar) == ref


# Cases from distribution/reference's own test tables (normalize_test.go), as data.
_DOCKER_VALID = [
    "docker/docker",
    "index.docker.io/library/debian",
    "127.0.0.1:5000/library/debian",
    "192.168.0.1",  # no slash: a Docker Hub name
    "192.168.0.1:80",  # ... with the tag "80"
    "192.168.0.1:8/debian",
    "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",  # 64, not hex
    "[fc00::1]:5000/docker/docker",
    "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
    "docker.io/" + "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d" * 2,  # with a host, 64 hex is a name
    "DOCKER/docker",
    "docker---rules/docker",
    "d/docker",
    "dock__er/docker",
    "test_com/foo",  # '_' does not make a host
    "test-com:8080/foo",
    "xn--n3h.com:18080/foo",
]
_DOCKER_INVALID = [
    "https://github.com/docker/docker",
    "-docker",
    "-docker.io/docker/docker",
    "docker///docker",
    "docker.io/docker/Docker",
    "[fc00::1]",
    "[fc00::1]:5000",
    "fc00::1:5000/debian",
    "[fe80::1%eth0]:5000/debian",
    "[2001:db8:3:4::192.0.2.33]:5000/debian",
    "docker-/docker",
    "____/____",
    "_docker/_docker",
    "dock_.er/docker",
    "dock-.er/docker",
    "docker/",
    "x" * 250 + "/docker",
]


@pytest.mark.parametrize("text", _DOCKER_VALID)
def test_docker_s_valid_names(text: str) -> None:
    ref = parse_reference(text)
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar) == ref
    bare = parse_reference(text, default_tag=False)
    assert parse_reference(bare.familiar, default_tag=False) == bare


@pytest.mark.parametrize("text", _DOCKER_INVALID)
def test_docker_s_invalid_names(text: str) -> None:
    with pytest.raises(errors.InvalidArgumentError):
        parse_reference(text)


def test_a_64_hex_official_name_keeps_its_prefix_in_the_short_form() -> None:
    hex64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d" * 2
    ref = parse_reference(f"docker.io/{hex64}", default_tag=False)
    assert ref.familiar == f"docker.io/library/{hex64}"  # bare, it would read as an image id
    tagged = parse_reference(f"docker.io/{hex64}:1")
    assert tagged.familiar == f"docker.io/library/{hex64}:1"  # the name alone is the same


def test_parts_of_a_reference() -> None:
    ref = parse_reference(f"localhost:5000/team/app:1.0@{D}")
    assert ref.domain == "localhost:5000"
    assert ref.path == "team/app"
    assert ref.tag == "1.0"
    assert ref.digest == D and ref.digest.algorithm == "sha256"
    assert ref.name == "localhost:5000/team/app"
    assert ref.with_tag("2").tag == "2" and ref.with_tag("2").digest is None
    assert ref.with_digest("sha256:" + "8" * 64).tag == "1.0"


def test_default_tag_can_be_left_off() -> None:
    ref = parse_reference("debian", default_tag=False)
    assert ref.tag is None and str(ref) == "docker.io/library/debian"
    assert ref.familiar == "debian"


def test_the_constructor_normalises_docker_hub_names() -> None:
    assert Reference("docker.io", "debian", "12") == parse_reference("debian:12")
    assert Reference("index.docker.io", "user/x") == parse_reference("user/x", default_tag=False)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Debian",  # upper-case repository names are refused, not folded
        "user/App",
        "docker.io/Library/debian",
        "a" * 64,  # a 64-hex string is an image id
        "0123456789abcdef" * 4,
        "debian:",
        "debian:-bad",  # a tag cannot start with '-'
        "debian:" + "t" * 129,  # tags are at most 128 characters
        "debian:a/b",
        "debian@sha256:" + "A" * 64,
        "debian@sha256:abc",
        "debian@md5:" + "0" * 32,
        "debian@",
        "@" + D,
        ":tag",
        "/debian",
        "debian/",
        "a//b",
        "a/-b",
        "a/b_",
        "a/b...c",
        "exam ple/app",
        "host:port/app",  # a port is digits
        "-host.io/app",
        "x" * 256,  # longer than 255
        "debian:12:13",
    ],
)
def test_malformed_references_are_invalid_arguments(text: str) -> None:
    with pytest.raises(errors.InvalidArgumentError):
        parse_reference(text)


def test_a_host_that_would_not_read_back_as_a_host_is_refused() -> None:
    with pytest.raises(errors.InvalidArgumentError):
        Reference("myhost", "app")  # 'myhost/app' would parse as a Docker Hub repository


def test_references_are_values() -> None:
    ref = parse_reference("debian:12")
    assert ref == parse_reference("docker.io/library/debian:12")
    assert hash(ref) == hash(parse_reference("library/debian:12"))
    assert pickle.loads(pickle.dumps(ref)) == ref
    with pytest.raises(AttributeError):
        ref.tag = "13"  # type: ignore[misc]


# -- property: parse(str(ref)) == ref ----------------------------------------------

_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_separator = st.sampled_from([".", "_", "__", "-", "--"])
_component = st.builds(
    lambda first, rest: first + "".join(s + c for s, c in rest),
    _alnum,
    st.lists(st.tuples(_separator, _alnum), max_size=2),
)
_path = st.lists(_component, min_size=1, max_size=3).map("/".join)
_host = st.one_of(
    st.just("docker.io"),
    st.just("index.docker.io"),
    st.just("localhost"),
    st.builds(lambda a, b: f"{a}.{b}", _alnum, _alnum),
    st.builds(
        lambda a, p: f"{a}:{p}", st.sampled_from(["localhost", "reg.io"]), st.integers(1, 65535)
    ),
)
_WORD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
_tag = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(_WORD),
    st.text(_WORD + ".-", max_size=20),
)
_digest = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()),
    st.binary(min_size=64, max_size=64).map(lambda b: "sha512:" + b.hex()),
)


@st.composite
def _reference_texts(draw: st.DrawFn) -> str:
    host = draw(st.one_of(st.none(), _host))
    path = draw(_path)
    text = path if host is None else f"{host}/{path}"
    if draw(st.booleans()):
        text += ":" + draw(_tag)
    if draw(st.booleans()):
        text += "@" + draw(_digest)
    return text


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_reference_texts())
def test_parse_of_str_is_the_identity(text: str) -> None:
    try:
        ref = parse_reference(text)
    except errors.InvalidArgumentError:
        # Refusals the generator can hit, each one Docker's too: a name over 255 characters,
        # a 64-hex image id, a first component with '.' or ':' (so a host) that is no host.
        first = text.partition("/")[0]
        assert (
            len(text) > 200
            or len(text) == 64
            or ("/" in text and ("." in first or ":" in first) and "_" in first)
        ), text
        return
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar) == ref
    assert str(parse_reference(str(ref))) == str(ref)
