"""The SDK's clients, job handles and inference jobs.

`sparegrid.sdk._async` is the one source; `scripts/unasync` writes `sparegrid.sdk._sync`
from it. Import both flavours from `sparegrid.sdk`.
"""
