"""One parser target under atheris (libFuzzer, coverage-guided):

    python -m tests.fuzz.atheris_main TARGET CORPUS_DIR [libFuzzer flags]

The parsers are imported instrumented, so inputs that reach new code are kept in the
corpus; a crash is written where -artifact_prefix says. `scripts/fuzz` runs this.
"""

import sys

import atheris

with atheris.instrument_imports(include=["sparegrid"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    name, *flags = sys.argv[1:]
    atheris.Setup([sys.argv[0], *flags], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
