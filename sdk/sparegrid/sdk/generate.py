"""Generation jobs: OpenAI Batch JSONL in, completions out in request order.

`Client.generate` / `AsyncClient.generate` submit one and give a `GenerateJob` /
`AsyncGenerateJob`: `.completions()` yields the decoded completions in request order as
tasks finish, and `.write_batch_output(path)` writes the OpenAI Batch output format. The
asyncio job calls are written once (sparegrid.sdk._async.generate) and the sync ones
generated from them; the text work both share (reading and checking the batch file, chat
templates, tokenizing) is in sparegrid.sdk.batchfile.
"""

from sparegrid.sdk._async.generate import AsyncGenerateJob
from sparegrid.sdk._sync.generate import GenerateJob, estimate, submit
from sparegrid.sdk.batchfile import Completion, Tokenizer, read_batch, tokenize

__all__ = [
    "AsyncGenerateJob",
    "Completion",
    "GenerateJob",
    "Tokenizer",
    "estimate",
    "read_batch",
    "submit",
    "tokenize",
]
