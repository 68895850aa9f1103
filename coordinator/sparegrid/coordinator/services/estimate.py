"""What a job would cost, worked out as a submit would, with nothing stored or held."""

from dataclasses import dataclass

from sparegrid.coordinator.services.jobs import Planned
from sparegrid.coordinator.services.verification import policy_text


@dataclass
class Estimate:
    tasks: int
    work_units: int
    price_credit: int
    price_units: int
    exact_credit: float  # one pass over every task, unrounded
    credit_per_pass: int  # one validated result of every task, as charged
    max_paid_results: int
    max_held: int  # what the submit holds in escrow
    policy: str
    rounding: str  # what whole-credit rounding does to this job; "" when nothing


def estimate(planned: Planned) -> Estimate:
    """Reads every task plan once (a million-task job: on a thread)."""
    job = planned.job
    work = charged = small = 0
    for plan in planned.plans:
        work += plan.work
        cost = job.task_cost(plan.work)
        charged += cost
        small += plan.work * job.price_credit < job.price_units
    exact = work * job.price_credit / job.price_units
    rounding = ""
    if charged > exact + 1e-9:
        rounding = (
            f"each validated result is charged in whole credit, rounded up, at least 1: this "
            f"job's work is worth {exact:.4g} credit a pass, charged {charged}"
        )
        if small:
            rounding += f" ({small} of its {job.task_count} task(s) are worth less than 1 each)"
        rounding += (
            "; a check of a new node's result (a crop of a frame, or the task again) costs at "
            "least 1 credit too, within the hold. Fewer, larger tasks (--chunk, fewer --tiles) "
            "round less"
        )
    return Estimate(
        tasks=job.task_count,
        work_units=work,
        price_credit=job.price_credit,
        price_units=job.price_units,
        exact_credit=exact,
        credit_per_pass=charged,
        max_paid_results=job.max_paid_results,
        max_held=job.cost_held,
        policy=policy_text(job),
        rounding=rounding,
    )
