"""Job handles: a snapshot of a job plus the client it came from, to refresh, wait, verify.

`AsyncJob` is written in `sparegrid.sdk._async.job`; `Job` is generated from it.
"""

from sparegrid.sdk._async.job import AsyncJob, AsyncJobClient
from sparegrid.sdk._sync.job import Job, SyncJobClient

__all__ = ["AsyncJob", "AsyncJobClient", "Job", "SyncJobClient"]
