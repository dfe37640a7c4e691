"""The UFile-rules proxy really refuses what UFile refuses (so a clean UFile contract run means something)."""

from __future__ import annotations

import http.client
import urllib.parse

import botocore.config
import pytest
from botocore.exceptions import ClientError

pytestmark = [pytest.mark.storage, pytest.mark.faults]

MiB = 1024 * 1024


def client(seaweedfs, proxy, checksums: str = "when_required"):
    config = botocore.config.Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1},
        request_checksum_calculation=checksums,
        response_checksum_validation="when_required",
    )
    return seaweedfs.client(endpoint_url=proxy.endpoint, config=config)


def upload_parts(s3, bucket: str, sizes: list[int]):
    upload = s3.create_multipart_upload(Bucket=bucket, Key="obj")
    parts = []
    for number, size in enumerate(sizes, 1):
        answer = s3.upload_part(
            Bucket=bucket, Key="obj", UploadId=upload["UploadId"], PartNumber=number, Body=b"p" * size
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    return lambda: s3.complete_multipart_upload(
        Bucket=bucket, Key="obj", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )


def refused(call) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return caught.value.response["Error"]["Message"]


def test_exact_8mib_parts_and_a_short_last_part_pass(seaweedfs, s3_bucket, ufile_proxy):
    s3 = client(seaweedfs, ufile_proxy)
    upload_parts(s3, s3_bucket, [8 * MiB, 8 * MiB, 1000])()
    assert s3.head_object(Bucket=s3_bucket, Key="obj")["ContentLength"] == 16 * MiB + 1000
    assert ufile_proxy.rejections == []


def test_a_5mib_non_final_part_is_refused(seaweedfs, s3_bucket, ufile_proxy):
    s3 = client(seaweedfs, ufile_proxy)
    complete = upload_parts(s3, s3_bucket, [5 * MiB, 1000])
    assert "part 1" in refused(complete)
    assert len(ufile_proxy.rejections) == 1


def test_a_part_over_8mib_is_refused_at_once(seaweedfs, s3_bucket, ufile_proxy):
    s3 = client(seaweedfs, ufile_proxy)
    assert "fixed" in refused(lambda: upload_parts(s3, s3_bucket, [9 * MiB]))
    assert len(ufile_proxy.rejections) == 1


def test_content_md5_is_refused(seaweedfs, s3_bucket, ufile_proxy):
    s3 = client(seaweedfs, ufile_proxy)
    message = refused(
        lambda: s3.put_object(Bucket=s3_bucket, Key="k", Body=b"abc", ContentMD5="kAFQmDzST7DWlj99KOF/cg==")
    )
    assert "Content-MD5" in message


def test_checksum_headers_are_refused(seaweedfs, s3_bucket, ufile_proxy):
    s3 = client(seaweedfs, ufile_proxy, checksums="when_supported")  # boto3's default: CRC32 on every upload
    assert "checksum" in refused(lambda: s3.put_object(Bucket=s3_bucket, Key="k", Body=b"abc"))


def test_put_object_over_the_limit_is_refused(seaweedfs, s3_bucket, ufile_proxy):
    s3 = client(seaweedfs, ufile_proxy)
    body = b"b" * (ufile_proxy.put_limit + 1)
    assert "multipart" in refused(lambda: s3.put_object(Bucket=s3_bucket, Key="k", Body=body))


def test_listing_more_than_5000_keys_a_page_is_refused(seaweedfs, s3_bucket, ufile_proxy):
    s3 = client(seaweedfs, ufile_proxy)
    assert "max-keys" in refused(lambda: s3.list_objects(Bucket=s3_bucket, MaxKeys=6000))


def test_non_sigv4_requests_are_refused(s3_bucket, ufile_proxy):
    url = urllib.parse.urlsplit(ufile_proxy.endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", f"/{s3_bucket}", headers={"Authorization": "AWS someone:c2lnbmF0dXJl"})
    answer = conn.getresponse()
    assert answer.status == 400 and b"Signature V4" in answer.read()
    conn.close()
    assert len(ufile_proxy.rejections) == 1
