"""A generation job's credit, checked before its model and prompts are uploaded.

`Client.generate` uploads a model folder (often many GB) before it submits, and only the
submit learns whether the account can pay: a long upload wasted, then a refusal. The
client tokenizes the prompts itself, so it can price the job before uploading anything,
at the prices the coordinator publishes (GetInfo), and compare that with the account's
balance (GetAccount). The job calls (sparegrid.sdk._async.generate) fetch both and call
`check_balance`.

The price here is a lower bound, never more than the coordinator would hold: the
coordinator splits prompts into tasks and rounds each task's credit up, and the sum of
rounded parts is at least the rounded whole. So this refuses only a job the coordinator
would refuse too. It is advice: the coordinator's own check at submit stays, since a
balance can change between the two.
"""

import grpc

from sparegrid.sdk.errors import FailedPreconditionError
from sparegrid.sdk.models import Account, Info
from sparegrid.wire.llm import Prompt

KIND = "generate"
OUT_WEIGHT = 4  # a generated token counts 4 units, as the coordinator prices it
ADAPTIVE_PAID = 3  # results paid per task at most under the adaptive policy (domain.Job)


def least_credit(
    prompts: list[Prompt], price_credit: int, price_units: int, files: int, replicas: int
) -> int:
    """The least a generation job of these prompts holds at submit: its weighted tokens at
    the price, rounded up once (each of its tasks costs at least 1, and it has at least one
    task per prompts file), times the results paid per task."""
    work = sum(len(p.input_ids) + OUT_WEIGHT * p.max_tokens for p in prompts)
    credit = max(-(-work * price_credit // price_units), files, 1)
    return credit * (replicas or ADAPTIVE_PAID)


def check_balance(
    info: Info, account: Account, prompts: list[Prompt], files: int, replicas: int, quorum: int
) -> None:
    """Raises INSUFFICIENT_CREDIT, as the coordinator's submit would, when the account
    holds less than the least this job costs. A coordinator that does not publish a price
    for generation is left to decide at submit."""
    kind = {k.name: k for k in info.kinds}.get(KIND)
    if kind is None or kind.price_units < 1:
        return
    least = least_credit(prompts, kind.price_credit, kind.price_units, files, replicas)
    if least <= account.balance:
        return
    tokens_in = sum(len(p.input_ids) for p in prompts)
    tokens_out = sum(p.max_tokens for p in prompts)
    policy = "adaptive" if not replicas else f"{quorum} of {replicas}"
    paid = replicas or ADAPTIVE_PAID
    price = f"{kind.price_credit}/{kind.price_units}"
    if kind.price_units == 1:
        price = str(kind.price_credit)
    raise FailedPreconditionError(
        "INSUFFICIENT_CREDIT",
        f"job costs at least {least} credit ({tokens_in} prompt tokens and up to "
        f"{tokens_out} generated (x{OUT_WEIGHT}) at {price} credit per token, up to {paid} "
        f"paid results each under the {policy} policy), account {account.name!r} holds "
        f"{account.balance}; nothing was uploaded. Have an operator add credit (`sparegrid "
        f"admin credit grant {account.name} AMOUNT`), or send fewer prompts or a lower "
        "max_tokens",
        grpc.StatusCode.FAILED_PRECONDITION,
    )
