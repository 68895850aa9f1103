"""The parsers of untrusted bytes, fuzzed: a crash (any exception but the parser's own
refusal) or an inconsistency is a failure. A short deterministic pass; `scripts/fuzz` runs
the same targets for minutes."""

import pytest
from hypothesis import example, given, settings

from tests.fuzz.inputs import EXAMPLES, INPUTS
from tests.fuzz.targets import TARGETS


def fuzz(name: str) -> None:
    @settings(settings.get_profile("fuzz"))
    @given(INPUTS[name])
    def run(data: bytes) -> None:
        TARGETS[name](data)

    for seed in EXAMPLES[name]:
        run = example(seed)(run)
    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz(name: str) -> None:
    fuzz(name)
