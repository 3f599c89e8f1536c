"""Partitions of a dataset on disk or in an object store, and the files written for them.

One input file is one partition. Each partition's forecasts go to one Parquet file whose path mirrors the
input's path below the source folder (``sales/2024/part-3.csv`` -> ``OUTPUT/2024/part-3.parquet``). A file
is written under a temporary name and renamed when complete, so a reader (or a rerun) never sees half of
one, and a retried task overwrites its own file instead of adding rows. The file's Parquet metadata records
which input (path, size, modification time) and which run settings it was computed from; a rerun skips a
partition only when both still match.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import uuid
from dataclasses import asdict, dataclass

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
    """One input file. ``location`` is what messages show (a local path or a URI), ``path`` what its
    filesystem calls it, ``output`` the output file relative to the output folder."""

    location: str
    path: str
    size: int
    mtime_ns: int
    output: str

    def stamp(self, run_digest: str) -> dict:
        """What an output file records about its input and run; equal stamps mean the output is current."""
        return {"input": self.location, "size": self.size, "mtime_ns": self.mtime_ns, "run": run_digest}


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


def list_partitions(source) -> list[Partition]:
    """The input files of ``source`` (one file, or every data file below a folder), sorted by path.

    Raises ``InputError`` for a missing source, a folder without data files, or a file of another type
    inside the folder (so no data is skipped silently).
    """
    fs, root, prefix = resolve(source)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{prefix}{root}: no such file or folder")
    if info.type == pafs.FileType.File:
        infos, base = [info], posixpath.dirname(root)
    else:
        base = root
        infos = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.type == pafs.FileType.File]
    partitions, unknown, outputs = [], [], {}
    for i in sorted(infos, key=lambda i: i.path):
        relative = posixpath.relpath(i.path, base)
        if len(infos) > 1 and _hidden(relative):
            continue
        suffix = _data_suffix(relative)
        if suffix is None:
            unknown.append(relative)
            continue
        output = relative[: -len(suffix)] + ".parquet"
        if output in outputs:
            raise InputError(f"{prefix}{i.path} and {outputs[output]} would both write {output}; rename one of them")
        outputs[output] = prefix + i.path
        partitions.append(Partition(prefix + i.path, i.path, int(i.size or 0), int(i.mtime_ns or 0), output))
    if unknown:
        raise InputError(f"{prefix}{root}: files that are neither .parquet nor .csv: {unknown[:5]}; move them out of "
                         "the input folder (names starting with '_' or '.' are ignored)")
    if not partitions:
        raise InputError(f"{prefix}{root}: no .parquet or .csv files")
    return partitions


def read_partition(fs: pafs.FileSystem, partition: Partition):
    """The partition as a DataFrame, read by ``tirex.io.read_table`` (remote files are copied to local disk
    first, so both go through the same reader and its checks)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return read_table(partition.path)
    with tempfile.TemporaryDirectory(prefix="tirex-partition-") as folder:
        local = os.path.join(folder, posixpath.basename(partition.path))
        pafs.copy_files(partition.path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        try:
            return read_table(local)
        except InputError as err:
            raise InputError(str(err).replace(local, partition.location)) from None


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
