"""What work costs: a price per work unit for each job kind, and the defaults."""

from dataclasses import dataclass

from sparegrid.coordinator.domain import MAX_BIGINT


@dataclass(frozen=True)
class Price:
    """`credit` per `units` work units of a kind; a task costs at least 1."""

    credit: int = 1
    units: int = 1

    def __post_init__(self) -> None:
        if not (1 <= self.credit <= MAX_BIGINT and 1 <= self.units <= MAX_BIGINT):
            # a job's row keeps both as BIGINTs: PostgreSQL refused each submit's group commit
            raise ValueError(f"a price is 1 to 2^63 - 1 credit per 1 to 2^63 - 1 units, not {self}")

    def __str__(self) -> str:
        return f"{self.credit}/{self.units}" if self.units != 1 else str(self.credit)


# The default prices, the one place they are written: `Settings`, `coordinator serve
# --help`, `sparegrid job prices` (which asks the coordinator for the prices in force) and
# the README's table (a test compares it) all read them from here. Credit per work units:
# an echo task is 1 unit, a checksum 1 per byte, an inference shard 1 per GFLOP of its
# program over its samples, a render task 1 per pixel x sample (a 1920x1080 frame at 128
# samples: 27 credit). A kind not listed costs 1 credit per work unit.
DEFAULT_PRICES: dict[str, Price] = {
    "echo": Price(1),
    "checksum": Price(1, 1 << 20),
    "inference": Price(1, 100),
    "render": Price(1, 10_000_000),
    # per 1,000 weighted tokens: a prompt token 1, a generated one 4 (kinds/generate.py)
    "generate": Price(1, 1000),
}


def prices_text(prices: dict[str, Price]) -> str:
    """ "echo=1, checksum=1/1048576, ..." for help texts."""
    return ", ".join(f"{kind}={price}" for kind, price in prices.items())


def parse_price(text: str) -> Price:
    """ "CREDIT" or "CREDIT/UNITS"; ValueError saying what is wrong."""
    credit, _, units = text.partition("/")
    if not credit.isdigit() or (units and not units.isdigit()):
        raise ValueError(f"a price is CREDIT or CREDIT/UNITS (positive integers), got {text!r}")
    return Price(int(credit), int(units or 1))
