"""What jobs cost: `sparegrid job prices` and `job submit --dry-run`."""

import argparse
import json

from rich.table import Table
from rich.text import Text

from sparegrid.cli import common, output
from sparegrid.sdk import Estimate, Info


def price_text(credit: int, units: int, unit: str) -> str:
    if units == 1:
        return f"{credit} per {unit}"
    return f"{credit} per {units:,} {unit}s"


def prices_table(info: Info) -> Table:
    t = output.table("kind", "price (credit)", "work unit", "what it is")
    for k in sorted(info.kinds, key=lambda k: k.name):
        t.add_row(  # the coordinator's words, not rich markup: "resolution [w, h]"
            Text(k.name),
            price_text(k.price_credit, k.price_units, k.work_unit),
            Text(k.work_unit),
            Text(k.description),
        )
    return t


def prices(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        info = client.info()
    if args.json:
        kinds = [
            {
                "kind": k.name,
                "price_credit": k.price_credit,
                "price_units": k.price_units,
                "work_unit": k.work_unit,
            }
            for k in sorted(info.kinds, key=lambda k: k.name)
        ]
        print(json.dumps(kinds, indent=2))
        return 0
    output.show(prices_table(info))
    output.note(
        "a task costs its work at this price, rounded up to whole credit (at least 1), for "
        "each validated result; `job submit ... --dry-run` shows a job's cost"
    )
    return 0


def estimate_rows(e: Estimate) -> list[tuple[str, str]]:
    rows = [
        ("tasks", str(e.tasks)),
        ("work", f"{e.work_units:,} {e.work_unit}s"),
        ("price", price_text(e.price_credit, e.price_units, e.work_unit)),
        ("one pass", f"{e.credit_per_pass} credit (the work is worth {e.exact_credit:.4g})"),
        ("policy", f"{e.policy}: up to {e.max_paid_results} paid results per task"),
        ("held at submit", f"{e.max_held} credit (what is not spent comes back)"),
        ("balance", f"{e.balance} credit" + ("" if e.affordable else " - NOT ENOUGH")),
    ]
    if e.rounding:
        rows.append(("rounding", e.rounding))
    if e.waiting:  # submitted now, it would wait (and fail after --wait-limit) for this
        rows.append(("would wait", e.waiting))
    return rows


def show_estimate(e: Estimate, as_json: bool = False) -> int:
    """Prints an estimate (stdout); exit 0 when the account can pay for it, else 1."""
    if as_json:
        fields = {name: getattr(e, name) for name in e.__dataclass_fields__}
        print(json.dumps({**fields, "affordable": e.affordable}, indent=2))
    else:
        output.show(output.fields("estimate (nothing submitted)", estimate_rows(e)))
    if not e.affordable:
        output.error(
            f"this job holds up to {e.max_held} credit, the account has {e.balance}",
            "INSUFFICIENT_CREDIT",
        )
        output.hint(common.COMMAND_HINTS["INSUFFICIENT_CREDIT", "job submit"])
        return 1
    return 0
