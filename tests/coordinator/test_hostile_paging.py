"""Malformed numbers and strings sent to the coordinator's RPCs: each gets a clear error
with a stable code, never INTERNAL, and changes nothing."""

import grpc
import pytest
from grpc import aio

from sparegrid.v1 import blob_pb2, blob_pb2_grpc, client_pb2, client_pb2_grpc
from tests.coordinator.conftest import Served, code_of


@pytest.mark.parametrize(
    "token",
    [
        "9" * 5000,  # int() refuses more than 4,300 digits
        "99999999999999999999",  # fits Python, overflows a SQL integer
        "2147483648",  # no task index gets this far
        "\u00b2",  # str.isdigit() says yes, int() says no
        "\u0663",  # an Arabic-Indic digit: a number, but not a token this server issued
        "-1",
        " 1",
    ],
)
async def test_a_page_token_not_issued_by_the_server_is_bad_page_token(
    served: Served, token: str
) -> None:
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    alice = served.auth(served.alice_key)
    spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 3}')
    job = (await stub.SubmitJob(client_pb2.SubmitJobRequest(spec=spec), metadata=alice)).job
    request = client_pb2.GetJobResultsRequest(job_id=job.job_id, page_token=token)
    with pytest.raises(aio.AioRpcError) as err:
        await stub.GetJobResults(request, metadata=alice)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(err.value) == "BAD_PAGE_TOKEN"
    assert "next_page_token" in (err.value.details() or "")
    assert len(err.value.details() or "") < 300


async def test_pages_still_follow_their_tokens(served: Served) -> None:
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    alice = served.auth(served.alice_key)
    spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 5}')
    job = (await stub.SubmitJob(client_pb2.SubmitJobRequest(spec=spec), metadata=alice)).job
    seen, token = [], ""
    while True:
        request = client_pb2.GetJobResultsRequest(job_id=job.job_id, page_size=2, page_token=token)
        page = await stub.GetJobResults(request, metadata=alice)
        seen += [r.index for r in page.results]
        token = page.next_page_token
        if not token:
            break
    assert seen == [0, 1, 2, 3, 4]


async def test_a_huge_digest_is_bad_digest_not_a_broken_stream(served: Served) -> None:
    """The error message quotes the digest; quoted whole, 100 KB of it made the status
    trailer too large for the client, which then saw RESOURCE_EXHAUSTED and no code."""
    stub = blob_pb2_grpc.BlobServiceStub(served.channel)
    request = blob_pb2.StatBlobRequest(digest="x" * 100_000)
    with pytest.raises(aio.AioRpcError) as err:
        await stub.StatBlob(request, metadata=served.auth(served.alice_key))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(err.value) == "BAD_DIGEST"
