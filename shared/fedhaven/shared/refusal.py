"""A site's refusal: a code the coordinator acts on, beside the sentence a person reads. No behaviour reads the words.

A site that refuses a task sends nothing it trained: every refusal means nothing was
trained or sent for that task (SECAGG at SecAgg+'s unmask stage: the masked update sent
earlier stays masked, since the site hands over no share). The site raises `TaskRefused(code, reason)`; its
outermost ClientApp mod turns it into Flower's public `Error(code, reason)` reply (a
returned error passes through Flower's simulation engine and SuperNode untouched),
and the coordinator reads the code back with `code_of` and keys everything on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Code(IntEnum):
    """Why a site refused. Flower's own error codes are small numbers; fedhaven's start at 5100."""

    SITE_BUDGET = 5101  # this site's own budget (policy.max_epsilon) is spent
    RUN_TARGET = 5102  # the run's target (dp.target_epsilon) is reached for this site
    POLICY = 5103  # the task breaks the site policy (model, noise, delta, DP or SecAgg+ required, update bound)
    PACKAGE = 5104  # the run's package (FAB) or task type is not what this site runs
    LEDGER = 5105  # the site's privacy ledger does not verify: its operator must act
    DATA = 5106  # the site's data cannot serve the task (image shape, classes, no examples)
    MAX_WEIGHT = 5107  # SecAgg+'s max_weight is below the site's example count
    UNSUPPORTED = 5108  # a request fedhaven sites never answer (initial weights, evaluation on private data)
    SECAGG = 5109  # SecAgg+ parameters, neighbours or unmask lists that break the site's terms (refused at any stage:
    #                at unmask, the masked update already sent stays masked: no share of it is handed over)


#: Refusals for lack of privacy budget: when every site refuses so, a run ends cleanly with its last model.
BUDGET_CODES = frozenset({Code.SITE_BUDGET, Code.RUN_TARGET})


class TaskRefused(RuntimeError):
    """A task this site will not run: `code` says why for the coordinator, the message says why for people."""

    def __init__(self, code: Code, reason: str) -> None:
        super().__init__(reason)
        self.code = Code(code)


@dataclass(frozen=True)
class Refusal:
    """One reason a site refuses a task, with its code."""

    code: Code
    reason: str

    @property
    def budget(self) -> bool:
        return self.code in BUDGET_CODES


def code_of(error_code: int) -> Code | None:
    """The refusal code an error reply carries, or None when the error is not a fedhaven refusal (a crash, a
    timeout, Flower's own errors): the one place that tells them apart."""
    try:
        return Code(error_code)
    except ValueError:
        return None
