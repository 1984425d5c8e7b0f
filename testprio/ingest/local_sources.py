"""Pools on local disk and in Cloud Storage (``gs://bucket/object``, or
``gs://bucket/prefix``: a "folder", every object under it downloaded).

A local file or folder is used where it is, only ever read; gs:// objects are downloaded
into the scratch folder ``resolve`` hands over, within the download limit.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest.archives import DEFAULT_ARCHIVE_LIMITS
from testprio.ingest.byte_budget import ByteBudget, copy_within, too_large
from testprio.ingest.downloads import DownloadLimits
from testprio.ingest.messages import short

GCS_DOWNLOAD_THREADS = 8
MAX_FOLDER_DEPTH = DEFAULT_ARCHIVE_LIMITS.max_depth  # for gs:// prefixes too


def local_name(data_uri: str) -> tuple[str, str]:
    path = os.path.abspath(data_uri)
    if not os.path.exists(path):
        raise TestprioError(f"the pool {data_uri} does not exist; check the path.")
    name = os.path.basename(path)
    return path, name + "/" if os.path.isdir(path) else name


def fetch_local(
    data_uri: str, scratch: Callable[[], str], limit: int, limits: DownloadLimits
) -> tuple[str, str]:
    return local_name(data_uri)


def fetch_gcs(
    data_uri: str, scratch: Callable[[], str], limit: int, limits: DownloadLimits
) -> tuple[str, str]:
    bucket, blob = storage.split_gcs_uri(data_uri)
    root = f"gs://{bucket}/{blob}" if blob else f"gs://{bucket}"
    # Every object name is checked before it becomes a path: 'x/..' is an object in GCS.
    top = storage.object_file_name(root) if blob else bucket
    budget = ByteBudget(limit, too_large(data_uri, limit))
    if blob and not data_uri.endswith("/") and not storage.is_folder(root):
        name = top
        path = os.path.join(scratch(), name)
        with storage.open_read(root) as source:
            copy_within(source, path, budget)
        return path, name
    name = top + "/"
    # Folder placeholders (objects named "prefix/") are no files.
    names = [n for n in storage.list_tree(root) if n and not n.endswith("/")]
    if not names:
        raise TestprioError(f"{data_uri} holds no objects; check the bucket and the prefix.")
    folder = os.path.join(scratch(), name.rstrip("/"))
    targets = {}
    for object_name in names:
        parts = storage.object_parts(object_name)
        if parts is None:
            raise TestprioError(
                f"{data_uri} has an object '{short(object_name, 80)}' that cannot be a file "
                "name (a part that is empty, '.', '..', holds a NUL byte or is over "
                f"{storage.MAX_FILE_NAME_BYTES} bytes); rename or remove that object."
            )
        if len(parts) > MAX_FOLDER_DEPTH:
            raise TestprioError(
                f"{data_uri} has an object '{short(object_name, 60)}' nested "
                f"{len(parts) - 1:,} folders deep, more than the limit of "
                f"{MAX_FOLDER_DEPTH - 1:,}; give a prefix with a flatter folder tree."
            )
        targets[object_name] = os.path.join(folder, *parts)

    def download(object_name: str) -> None:
        os.makedirs(os.path.dirname(targets[object_name]), exist_ok=True)
        with storage.open_read(storage.join(root, object_name)) as source:
            copy_within(source, targets[object_name], budget)

    with concurrent.futures.ThreadPoolExecutor(GCS_DOWNLOAD_THREADS) as pool:
        futures = [pool.submit(download, object_name) for object_name in names]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return folder, name
