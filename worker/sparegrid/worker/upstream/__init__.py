"""The upstream session: the stream to the coordinator, result batching and signing, the
outbox that keeps signed results until they are acknowledged, flow control (how much work
to invite) and blob transfer. Nothing here runs job code."""
