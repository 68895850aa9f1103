"""Hypothesis settings for the fuzz tests: a short, deterministic pass in the normal suite
(derandomized, no example database), a long random one under `scripts/fuzz`."""

import os

from hypothesis import HealthCheck, settings

# examples per target in the normal suite; scripts/fuzz sets it far higher
EXAMPLES = int(os.environ.get("SPAREGRID_FUZZ_EXAMPLES", "40"))
LONG = os.environ.get("SPAREGRID_FUZZ_LONG") == "1"

settings.register_profile(
    "fuzz",
    max_examples=EXAMPLES,
    derandomize=not LONG,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
