"""Errors the worker's parts raise to each other."""


class BlobUnavailable(Exception):
    """A blob transfer failed for a reason that may pass (network, reconnect); retry."""


class BlobRejected(Exception):
    """The coordinator refused a blob transfer for good (not found, too large, bad digest)."""


class DigestMismatch(Exception):
    """Downloaded bytes do not hash to the digest they were asked for."""


class SessionError(Exception):
    """The coordinator broke the session protocol; the worker reconnects."""
