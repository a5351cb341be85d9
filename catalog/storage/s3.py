"""Archive storage in an S3 bucket (or any S3-compatible store via an endpoint URL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from catalog.errors import ConfigurationError, StoreError, UnsafePath
from catalog.storage.base import FileInfo, check_storage_path

_DELETE_BATCH = 1000  # the most DeleteObjects takes at once


class S3Storage:
    """Objects under ``s3://bucket/prefix``; a storage path ``/a/b`` is the key ``prefix/a/b``."""

    kind = "s3"

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 client: Any = None) -> None:
        if not bucket:
            raise ConfigurationError("an S3 archive needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url or None)
        self.client = client

    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None) -> S3Storage:
        """``s3://bucket/prefix``."""
        if not url.startswith("s3://"):
            raise ConfigurationError(f"{url!r} is not an s3:// URL")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        return cls(bucket, prefix, endpoint_url)

    def _key(self, path: str, allow_root: bool = False) -> str:
        normalised = check_storage_path(path, allow_root)
        return f"{self.prefix}{normalised}" if self.prefix else normalised.lstrip("/")

    def _path(self, key: str) -> str:
        """The storage path of a listed key (which starts with ``prefix/``)."""
        path = "/" + (key[len(self.prefix) + 1:] if self.prefix else key)
        try:
            normalised = check_storage_path(path)
        except UnsafePath:
            normalised = None
        # A key that is not already in normal form ("a//b", "a/./b") would come back from
        # _key() as a different key: listed but impossible to stat, open or delete.
        if normalised != path:
            raise UnsafePath(f"object key {key!r} is not a safe storage path")
        return path

    def _missing(self, error: Any) -> bool:
        code = str(error.response.get("Error", {}).get("Code", ""))
        return code in {"404", "NoSuchKey", "NotFound"}

    def list(self, prefix: str) -> Iterator[FileInfo]:
        directory = self._key(prefix).rstrip("/") + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=directory):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):
                    continue  # a "directory marker", not a file
                yield FileInfo(self._path(item["Key"]), int(item["Size"]),
                               item["LastModified"].timestamp(), item.get("ETag"))

    def stat(self, path: str) -> FileInfo:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(path))
        except ClientError as error:
            if self._missing(error):
                raise FileNotFoundError(path) from None
            raise
        return FileInfo(check_storage_path(path), int(head["ContentLength"]),
                        head["LastModified"].timestamp(), head.get("ETag"))

    def open(self, path: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(path))
        except ClientError as error:
            if self._missing(error):
                raise FileNotFoundError(path) from None
            raise
        return cast(BinaryIO, response["Body"])

    def write(self, path: str, data: bytes | BinaryIO) -> FileInfo:
        if isinstance(data, bytes):
            self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data)
        else:  # in parts, a large file never held whole
            self.client.upload_fileobj(data, self.bucket, self._key(path))
        return self.stat(path)

    def link(self, path: str, target: str) -> bool:
        return False  # an object has no name on this machine's filesystem to share

    def delete_prefix(self, prefix: str) -> int:
        keys = [self._key(info.path) for info in self.list(prefix)]
        failed: list[str] = []
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start:start + _DELETE_BATCH]]
            response = self.client.delete_objects(Bucket=self.bucket,
                                                  Delete={"Objects": batch, "Quiet": True})
            # Quiet mode lists only failures; DeleteObjects answers 200 even when some fail.
            failed += [f"{e.get('Key')} ({e.get('Code')})" for e in response.get("Errors", [])]
        if failed:
            raise StoreError(f"{len(failed)} object(s) under {prefix} could not be deleted: "
                             f"{', '.join(failed[:5])}")
        return len(keys)

    def uri(self, path: str) -> str:
        return f"s3://{self.bucket}/{self._key(path)}"
