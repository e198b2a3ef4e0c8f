"""Image commands: images, rmi, tag, inspect, save, load.

They print what ``docker`` prints for the same command (tables, ``Loaded
image: …``, ``Untagged:``/``Deleted:`` lines), so people and scripts that know
Docker's output can read lamina's.  The work is the store's
(:class:`lamina.store.Store`); this module only turns arguments into calls
and results into text.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import click

from lamina.cli._common import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CommandError,
    State,
    exit_code_for,
    open_store,
    pass_state,
    refuse_terminal,
    stdin_binary,
    stdout_binary,
)
from lamina.cli._format import (
    created_text,
    human_size,
    iso_created,
    json_text,
    layer_key,
    newest_first_key,
    short_id,
    split_name,
    table,
)
from lamina.errors import LaminaError, NotFoundError

if TYPE_CHECKING:
    from lamina.store import Image

__all__ = [
    "image_json",
    "images",
    "inspect",
    "load",
    "one_failed",
    "report_each",
    "rmi",
    "save",
    "tag",
]

SAVE_FORMATS = ("docker-archive", "oci-archive", "oci-dir")

_quiet = click.option("-q", "--quiet", is_flag=True, help="Print only image ids, no progress.")
_format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json (an array) for scripts.",
)


@contextlib.contextmanager
def report_each() -> Iterator[list[int]]:
    """Run a command over several arguments: report each failure, go on, fail at the end.

    Like ``docker rmi a b``: one bad argument does not stop the others, each
    failure is one line on stderr (:func:`one_failed`), and the command's
    status is the first failure's.
    """
    statuses: list[int] = []
    yield statuses
    if statuses:
        raise click.exceptions.Exit(statuses[0])


def one_failed(statuses: list[int], exc: BaseException) -> None:
    """Report one argument's failure as the usual error line and remember its status."""
    from lamina.cli._common import debug_enabled, describe_error

    if debug_enabled():
        raise exc
    click.echo(f"lamina: error: {describe_error(exc)}", err=True)
    statuses.append(exit_code_for(exc))


def _rows(
    all_images: list[Image], digests: bool, no_trunc: bool, wanted: str | None
) -> list[list[str]]:
    rows: list[list[str]] = []
    ordered = sorted(
        all_images,
        key=lambda img: newest_first_key(img.created),
        reverse=True,
    )
    for img in ordered:
        ident = img.id if no_trunc else short_id(img.id)
        kept = [name for name in img.names if wanted is None or _name_matches(name, wanted)]
        names = [split_name(name) for name in kept] or [("<none>", "<none>", None)]
        tagged = [n for n in names if n[1] != "<none>"]
        for repo, tag_name, digest in tagged or names:
            row = [repo, tag_name]
            if digests:
                row.append(digest or img.digest or "<none>")
            row += [ident, created_text(img.created), human_size(img.size)]
            rows.append(row)
    return rows


def image_json(img: Image) -> dict[str, Any]:
    """One image as ``docker image inspect`` shows it, plus lamina's own fields."""
    config = dict(img.config or {})
    repo_tags, repo_digests = [], []
    for name in img.names:
        repo, tag_name, digest = split_name(name)
        if tag_name != "<none>":
            repo_tags.append(f"{repo}:{tag_name}")
        if digest is not None:
            repo_digests.append(f"{repo}@{digest}")
    if img.digest:
        for name in img.names:
            repo = split_name(name)[0]
            pinned = f"{repo}@{img.digest}"
            if pinned not in repo_digests:
                repo_digests.append(pinned)
    rootfs = config.get("rootfs") or {}
    return {
        "Id": img.id,
        "RepoTags": repo_tags,
        "RepoDigests": repo_digests,
        "Names": [str(name) for name in img.names],
        "Digest": img.digest,
        "Created": iso_created(img.created),
        "Author": config.get("author", ""),
        "Config": config.get("config"),
        "Architecture": img.architecture,
        "Variant": img.variant or None,
        "Os": img.os,
        "OsVersion": img.os_version or None,
        "Size": img.size,
        "RootFS": {"Type": rootfs.get("type", "layers"), "Layers": rootfs.get("diff_ids", [])},
        "Layers": [layer_key(layer) for layer in img.layers],
        "History": config.get("history", []),
    }


@click.command()
@click.argument("repository", required=False, metavar="[REPOSITORY[:TAG]]")
@_quiet
@click.option("--digests", is_flag=True, help="Show a DIGEST column (the manifest digest).")
@click.option("--no-trunc", is_flag=True, help="Show full image ids.")
@_format_option
@pass_state
def images(
    state: State,
    repository: str | None,
    quiet: bool,
    digests: bool,
    no_trunc: bool,
    output_format: str,
) -> None:
    """List the images in the store, newest first, like `docker images`.

    One row per name (REPOSITORY and TAG), then IMAGE ID, CREATED and SIZE;
    an image without names shows <none>. REPOSITORY[:TAG] keeps the rows of
    that repository (and tag). -q prints each image id once; --format json
    prints a JSON array with one object per image.

    \b
    Example:
      lamina images
      lamina images debian --digests
      lamina images -q --no-trunc
    """
    with open_store(state) as store:
        found = store.images()
        if repository is not None:
            found = _matching(found, repository)
        if output_format == "json":
            if quiet:
                raise CommandError("-q and --format json exclude each other", EXIT_USAGE)
            click.echo(json_text([image_json(img) for img in found]))
            return
        if quiet:
            seen: list[str] = []
            for img in found:
                ident = img.id if no_trunc else short_id(img.id)
                if ident not in seen:
                    seen.append(ident)
            if seen:
                click.echo("\n".join(seen))
            return
        header = ["REPOSITORY", "TAG", *(["DIGEST"] if digests else [])]
        header += ["IMAGE ID", "CREATED", "SIZE"]
        click.echo(table(header, _rows(found, digests, no_trunc, repository)))


def _name_matches(name: str, wanted: str) -> bool:
    """Whether stored ``name`` is in repository ``wanted`` (and has its tag, if it names one)."""
    from lamina.oci import parse_reference

    ref = parse_reference(wanted, default_tag=False)
    try:
        have = parse_reference(str(name), default_tag=False)
    except LaminaError:
        return False
    return have.name == ref.name and (ref.tag is None or have.tag == ref.tag)


def _matching(found: list[Image], wanted: str) -> list[Image]:
    """The images with a name in repository ``wanted`` (and its tag, when it has one)."""
    return [img for img in found if any(_name_matches(name, wanted) for name in img.names)]


@click.command()
@click.argument("images_", metavar="IMAGE...", nargs=-1, required=True)
@click.option(
    "-f",
    "--force",
    is_flag=True,
    help="Remove an image with several names, or one a container uses (its names go; "
    "its layers stay for the container).",
)
@pass_state
def rmi(state: State, images_: tuple[str, ...], force: bool) -> None:
    """Remove images, or names of images, like `docker rmi`.

    IMAGE is a name, a full id or a unique id prefix. Naming an image by one
    of its several names only removes that name (Untagged:); naming it by id
    removes the image with all its names, which needs -f when it has more
    than one. An image a container uses is refused (exit status 7) unless
    -f. Its layers go at once when nothing else needs them. Each argument is
    tried; the exit status is the first failure's.

    \b
    Example:
      lamina rmi debian:12
      lamina rmi -f 3f57d9401f8d
    """
    from lamina.oci import parse_reference

    with open_store(state) as store, report_each() as statuses:
        for arg in images_:
            try:
                img = store.image(arg)
                names = [str(name) for name in img.names]
                as_name: str | None = None
                with contextlib.suppress(LaminaError):
                    as_name = str(parse_reference(arg))
                if as_name in names and len(names) > 1:
                    store.untag(as_name)
                    click.echo(f"Untagged: {split_name(as_name)[0]}:{split_name(as_name)[1]}")
                    continue
                if as_name not in names and len(names) > 1 and not force:
                    raise CommandError(
                        f"image {short_id(img.id)} has {len(names)} names; remove them one "
                        "by one or give -f",
                        EXIT_USAGE,
                    )
                store.remove_image(img, force=force)
                for name in names:
                    repo, tag_name, digest = split_name(name)
                    shown = f"{repo}@{digest}" if tag_name == "<none>" and digest else name
                    if tag_name != "<none>":
                        shown = f"{repo}:{tag_name}"
                    click.echo(f"Untagged: {shown}")
                try:
                    store.image(img.id)
                except NotFoundError:
                    click.echo(f"Deleted: {img.id}")
            except CommandError as exc:
                click.echo(f"lamina: error: {exc}", err=True)
                statuses.append(exc.exit_code)
            except (LaminaError, OSError) as exc:
                one_failed(statuses, exc)


@click.command()
@click.argument("source")
@click.argument("target")
@pass_state
def tag(state: State, source: str, target: str) -> None:
    """Give image SOURCE the name TARGET, like `docker tag`.

    SOURCE is a name, a full id or a unique id prefix; TARGET is a reference
    (`debian:12` is stored as docker.io/library/debian:12). A TARGET that
    names another image moves to this one.

    \b
    Example:
      lamina tag 3f57d9401f8d myapp:1.0
      lamina tag debian:12 localhost:5000/debian:12
    """
    with open_store(state) as store:
        store.tag(source, target)


@click.command()
@click.argument("names", metavar="IMAGE|CONTAINER...", nargs=-1, required=True)
@click.option(
    "--type",
    "kind",
    type=click.Choice(["image", "container"]),
    help="Look only for images or only for containers. [default: containers, then images]",
)
@pass_state
def inspect(state: State, names: tuple[str, ...], kind: str | None) -> None:
    """Print images and containers as JSON, like `docker inspect`.

    Each argument is a container's name or id, or an image's name, full id
    or unique id prefix. What is found is printed; each argument that is
    not gives one error line and the exit status of the first failure
    (3 for not found).

    \b
    Example:
      lamina inspect debian:12
      lamina inspect --type container web | jq '.[0].GraphDriver'
    """
    from lamina.cli._containers import container_json

    found: list[dict[str, Any]] = []
    with open_store(state) as store:
        statuses: list[int] = []
        for arg in names:
            try:
                if kind != "image":
                    try:
                        found.append(container_json(store, store.container(arg)))
                        continue
                    except NotFoundError:
                        if kind == "container":
                            raise
                found.append(image_json(store.image(arg)))
            except NotFoundError:
                click.echo(f"lamina: error: no such object: {arg}", err=True)
                statuses.append(EXIT_NOT_FOUND)
            except (LaminaError, OSError) as exc:
                one_failed(statuses, exc)
        click.echo(json_text(found))
        if statuses:
            raise click.exceptions.Exit(statuses[0])


@click.command()
@click.argument("images_", metavar="IMAGE...", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    type=click.Path(allow_dash=True, path_type=str),
    help="Write to FILE (a directory for oci-dir). [default: standard output, "
    "which must not be a terminal]",
)
@click.option(
    "--format",
    "archive_format",
    type=click.Choice(SAVE_FORMATS),
    default="docker-archive",
    show_default=True,
    help="docker-archive (`docker load`), oci-archive (an OCI layout in a tar) or "
    "oci-dir (an OCI layout directory).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@pass_state
def save(
    state: State, images_: tuple[str, ...], output: str | None, archive_format: str, quiet: bool
) -> None:
    """Write images to an archive, like `docker save`.

    Layers are written as the store received them (the original blobs, when
    kept), so digests do not drift. Each image is listed in the archive
    under all its names. Without -o the tar goes to standard output, which is
    refused when it is a terminal; oci-dir always needs -o. Progress goes to
    stderr.

    \b
    Example:
      lamina save -o debian.tar debian:12
      lamina save --format oci-dir -o ./layout debian:12 busybox
      lamina save debian:12 | lamina --root /srv/other load
    """
    from lamina.cli._progress import CountingWriter, Progress

    progress = Progress(quiet)
    to_stdout = output is None or output == "-"
    if to_stdout and archive_format == "oci-dir":
        raise CommandError("--format oci-dir writes a directory: give -o DIR", EXIT_USAGE)
    if to_stdout:
        refuse_terminal(
            stdout_binary(), "refusing to write an archive to a terminal; use -o or redirect"
        )
    with open_store(state) as store:
        for arg in images_:
            store.image(arg)  # an unknown name fails before anything is written
        what = ", ".join(images_)
        if to_stdout:
            out = stdout_binary()
            with progress.step(f"Saving {what} ({archive_format})") as step:
                writer = CountingWriter(out, step)
                store.save(list(images_), cast(BinaryIO, writer), format=archive_format)
                writer.flush()
            return
        assert output is not None
        title = f"Saving {what} to {output} ({archive_format})"
        if archive_format == "oci-dir":
            with progress.step(title):
                store.save(list(images_), output, format=archive_format)
            return
        # the archive goes through a counting writer, so the bar moves as bytes are written
        with open(output, "wb") as raw:
            regular = stat.S_ISREG(os.fstat(raw.fileno()).st_mode)  # not /dev/null, a FIFO
            try:
                with progress.step(title) as step:
                    writer = CountingWriter(raw, step)
                    store.save(list(images_), cast(BinaryIO, writer), format=archive_format)
                    writer.flush()
            except BaseException:
                if regular:
                    with contextlib.suppress(OSError):
                        os.unlink(output)  # never leave a truncated archive that looks whole
                raise


@click.command()
@click.option(
    "-i",
    "--input",
    "source",
    metavar="FILE",
    type=click.Path(exists=True, allow_dash=True, path_type=str),
    help="Read FILE: a docker-archive or OCI archive tar, or an OCI layout directory. "
    "[default: standard input]",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress; still print what was loaded.")
@pass_state
def load(state: State, source: str | None, quiet: bool) -> None:
    """Load images from an archive, like `docker load`.

    Reads a `docker save` tar (both its manifest.json and its OCI form), an
    OCI archive tar or an OCI layout directory, from FILE or from standard
    input, plain or gzip/zstd compressed (streamed: no copy of the whole
    archive is made). Every digest is checked on the way in; a mismatch is
    exit status 10 and adds nothing.
    Prints "Loaded image: NAME" per name, or "Loaded image ID: ID" for an
    image without names.

    \b
    Example:
      lamina load -i debian.tar
      docker save busybox | lamina load
      lamina load -i ./oci-layout
    """
    from lamina.cli._progress import CountingReader, Progress

    progress = Progress(quiet)
    from_stdin = source is None or source == "-"
    if from_stdin:
        refuse_terminal(
            stdin_binary(), "refusing to read an archive from a terminal; use -i FILE or redirect"
        )
    with open_store(state) as store:
        if source is None or source == "-":
            stream = stdin_binary()
            with progress.step("Loading from standard input") as step:
                loaded = store.load(cast(BinaryIO, CountingReader(stream, step)))
                step.note = _loaded_note(loaded)
        elif os.path.isdir(source):
            with progress.step(f"Loading {source}") as step:
                loaded = store.load(source)
                step.note = _loaded_note(loaded)
        else:
            with open(source, "rb") as raw:
                total = os.fstat(raw.fileno()).st_size
                with progress.step(f"Loading {source}", total) as step:
                    loaded = store.load(cast(BinaryIO, CountingReader(raw, step)))
                    step.note = _loaded_note(loaded)
    for img in loaded:
        shown = False
        for name in img.names:
            repo, tag_name, digest = split_name(name)
            if tag_name != "<none>":
                click.echo(f"Loaded image: {repo}:{tag_name}")
                shown = True
            elif digest is not None:
                click.echo(f"Loaded image: {repo}@{digest}")
                shown = True
        if not shown:
            click.echo(f"Loaded image ID: {img.id}")


def _loaded_note(loaded: list[Image]) -> str:
    count = len(loaded)
    return f"{count} image{'s' if count != 1 else ''}"
