"""The slots: one per device. `attempts` takes an assignment from fetched inputs to an
outcome, `cache` holds inputs by digest, and `child/` is the process boundary across which
executors run, sandboxed, in a subprocess per device."""
