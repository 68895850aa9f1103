"""Plain synchronous services over a store and a clock: the coordinator's rules."""
