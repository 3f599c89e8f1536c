"""Partitions of a dataset on disk or in an object store, and the files written for them.

A partition is one input file (``by="file"``, the default), or every data file directly inside one folder
(``by="folder"``: the layout that Spark's ``partitionBy``, Ray Data's ``write_parquet(partition_cols=...)`` and
``pyarrow.dataset.write_dataset`` produce, several files per ``bucket=k/`` folder). Each partition's forecasts go
to one Parquet file whose path mirrors the input's path below the source folder (``sales/2024/part-3.csv`` ->
``OUTPUT/2024/part-3.parquet``; folder ``sales/bucket=7/`` -> ``OUTPUT/bucket=7/forecast.parquet``). A file
is written under a temporary name and renamed when complete, so a reader (or a rerun) never sees half of
one, and a retried task overwrites its own file instead of adding rows. The file's Parquet metadata records
which input (path, size, modification time) and which run settings it was computed from; a rerun skips a
partition only when both still match.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
import uuid
from dataclasses import asdict, dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..io import InputError, read_table

DATA_SUFFIXES = (".parquet", ".pq", ".csv", ".txt", ".csv.gz", ".txt.gz")
MANIFEST_NAME = "_tirex_run.json"   # the run's settings, written before the first partition
SUCCESS_NAME = "_SUCCESS"           # written when every partition is done (the Hadoop/Spark convention)
METADATA_KEY = b"tirex.partition"   # Parquet key-value metadata of every output file


@dataclass(frozen=True)
class Partition:
    """One input file or folder. ``location`` is what messages show (a local path or a URI), ``path`` what the
    filesystem calls its files (newline-separated), ``size`` / ``mtime_ns`` their total size and newest
    modification, ``output`` the output file relative to the output folder."""

    location: str
    path: str
    size: int
    mtime_ns: int
    output: str

    def stamp(self, run_digest: str) -> dict:
        """What an output file records about its input and run; equal stamps mean the output is current."""
        files = hashlib.sha256(self.path.encode()).hexdigest()[:16]
        return {"input": self.location, "files": files, "size": self.size, "mtime_ns": self.mtime_ns,
                "run": run_digest}

    @property
    def paths(self) -> list[str]:
        return self.path.split("\n")


def resolve(location) -> tuple[pafs.FileSystem, str, str]:
    """``(filesystem, path, prefix)`` for a local path or a URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``);
    ``prefix + path`` is the location as shown to the user."""
    text = os.fspath(location)
    if "://" in text:
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise InputError(f"{text}: cannot open this location ({exc})") from None
        scheme = text.split("://", 1)[0]
        return fs, path.rstrip("/") or path, "" if isinstance(fs, pafs.LocalFileSystem) else f"{scheme}://"
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text)), ""


def _data_suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in sorted(DATA_SUFFIXES, key=len, reverse=True) if lower.endswith(s)), None)


def _hidden(relative: str) -> bool:
    # _SUCCESS, _temporary/, .crc files and our own temporary files, as Spark, Hive and pyarrow skip them
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def list_partitions(source, by: str = "file") -> list[Partition]:
    """The partitions of ``source`` (one file, or the data files below a folder), sorted by path.

    ``by="file"``: each data file is a partition; ``by="folder"``: the data files directly inside one folder
    together are a partition. Raises ``InputError`` for a missing source, a folder without data files, or a
    file of another type inside the folder (so no data is skipped silently).
    """
    if by not in ("file", "folder"):
        raise InputError(f"partitions are made by 'file' or 'folder', not {by!r}")
    fs, root, prefix = resolve(source)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{prefix}{root}: no such file or folder")
    if info.type == pafs.FileType.File:
        infos, base = [info], posixpath.dirname(root)
    else:
        base = root
        infos = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.type == pafs.FileType.File]
    groups: dict[str, list[tuple[pafs.FileInfo, str]]] = {}
    unknown = []
    for i in sorted(infos, key=lambda i: i.path):
        relative = posixpath.relpath(i.path, base)
        if len(infos) > 1 and _hidden(relative):
            continue
        suffix = _data_suffix(relative)
        if suffix is None:
            unknown.append(relative)
            continue
        if by == "file":
            groups[relative[: -len(suffix)] + ".parquet"] = [(i, relative)]
        else:
            folder = posixpath.dirname(relative)
            groups.setdefault(posixpath.join(folder, "forecast.parquet"), []).append((i, relative))
    if unknown:
        raise InputError(f"{prefix}{root}: files that are neither .parquet nor .csv: {unknown[:5]}; move them out of "
                         "the input folder (names starting with '_' or '.' are ignored)")
    if not groups:
        raise InputError(f"{prefix}{root}: no .parquet or .csv files")
    partitions, by_output = [], {}
    for output, members in sorted(groups.items()):
        if by == "file":
            location = prefix + members[0][0].path
            if output in by_output:
                raise InputError(f"{location} and {by_output[output]} would both write {output}; rename one of them")
            by_output[output] = location
        else:
            location = prefix + posixpath.join(base, posixpath.dirname(members[0][1])).rstrip("/")
        partitions.append(Partition(location, "\n".join(i.path for i, _ in members),
                                    sum(int(i.size or 0) for i, _ in members),
                                    max(int(i.mtime_ns or 0) for i, _ in members), output))
    return partitions


def read_partition(fs: pafs.FileSystem, partition: Partition):
    """The partition as one DataFrame, each file read by ``tirex.io.read_table`` (remote files are copied to
    local disk first, so both go through the same reader and its checks)."""
    frames = [_read_file(fs, path, partition.location) for path in partition.paths]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _read_file(fs: pafs.FileSystem, path: str, location: str):
    if isinstance(fs, pafs.LocalFileSystem):
        return read_table(path)
    shown = location if location.endswith(path) else f"{location.split('://')[0]}://{path}"
    with tempfile.TemporaryDirectory(prefix="tirex-partition-") as folder:
        local = os.path.join(folder, posixpath.basename(path))
        pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        try:
            return read_table(local)
        except InputError as err:
            raise InputError(str(err).replace(local, shown)) from None


def write_atomic(fs: pafs.FileSystem, path: str, write, before_rename=None) -> None:
    """Call ``write(stream)`` on a temporary file next to ``path``, then rename it to ``path``."""
    parent, name = posixpath.split(path)
    fs.create_dir(parent, recursive=True)
    temporary = posixpath.join(parent, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with fs.open_output_stream(temporary) as stream:
            write(stream)
        if before_rename is not None:
            before_rename()
        fs.move(temporary, path)
    finally:
        if fs.get_file_info(temporary).type != pafs.FileType.NotFound:
            fs.delete_file(temporary)


def write_table(fs: pafs.FileSystem, path: str, table: pa.Table, stamp: dict, before_rename=None) -> None:
    """Write ``table`` as Parquet at ``path`` (atomically), recording ``stamp`` in its metadata."""
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(stamp, sort_keys=True).encode()
    table = table.replace_schema_metadata(metadata)
    write_atomic(fs, path, lambda stream: pq.write_table(table, stream), before_rename)


def read_stamp(fs: pafs.FileSystem, path: str) -> dict | None:
    """The stamp of an output file, or None when there is none (missing, unreadable or not ours)."""
    try:
        with fs.open_input_file(path) as handle:
            metadata = pq.read_schema(handle).metadata or {}
        return json.loads(metadata[METADATA_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


def write_json(fs: pafs.FileSystem, path: str, data: dict) -> None:
    write_atomic(fs, path, lambda stream: stream.write(json.dumps(data, indent=2, sort_keys=True).encode()))


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    try:
        with fs.open_input_stream(path) as handle:
            return json.loads(handle.read())
    except (OSError, ValueError):
        return None


def output_files(fs: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    """Every file below the output folder (none when it does not exist yet)."""
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    return [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.type == pafs.FileType.File]


def is_temporary(info: pafs.FileInfo) -> bool:
    return info.base_name.startswith(".") and info.base_name.endswith(".tmp")


def delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except (FileNotFoundError, OSError):
        pass


def as_row(partition: Partition) -> dict:
    return asdict(partition)
