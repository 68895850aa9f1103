"""The coordinator's clock is the project's one clock (`sparegrid.wire.clock`); this name
stays so that services import time from their own package."""

from sparegrid.wire.clock import Clock, FakeClock, SystemClock

__all__ = ["Clock", "FakeClock", "SystemClock"]
