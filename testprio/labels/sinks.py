"""Where an export's files go: a folder (local or gs://) or a zip archive."""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from testprio import storage


class Sink(Protocol):
    """What an export writes its files through: bytes it made, or a file it copies."""

    def put_bytes(self, name: str, data: bytes) -> None: ...
    def put_file(self, name: str, uri: str) -> None: ...


@dataclass
class FolderSink:
    """Files under ``folder`` (local or gs://): ``testprio labels export --out``."""

    folder: str

    def put_bytes(self, name: str, data: bytes) -> None:
        storage.write_bytes(storage.join(self.folder, name), data)

    def put_file(self, name: str, uri: str) -> None:
        storage.copy_file(uri, storage.join(self.folder, name))


@dataclass
class ZipSink:
    """Members of an open zip ``archive``, under ``prefix``: the app's download, export.zip."""

    archive: zipfile.ZipFile
    prefix: str = ""

    def put_bytes(self, name: str, data: bytes) -> None:
        self.archive.writestr(self.prefix + name, data)

    def put_file(self, name: str, uri: str) -> None:
        # Already-compressed image formats gain nothing from deflate.
        info = zipfile.ZipInfo(
            self.prefix + name, date_time=datetime.now(timezone.utc).timetuple()[:6]
        )
        with storage.open_read(uri) as source, self.archive.open(info, "w") as target:
            shutil.copyfileobj(source, target, length=1 << 20)
