"""What the coordinator learns when sites send no update: one typed failure per site, parsed once, and the round
that failed. Behaviour keys on the refusal's code (`fedhaven.shared.refusal`); the text is for people."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.app import Error

from fedhaven.server.seam.errors import readable_reason, short_reason
from fedhaven.shared.refusal import BUDGET_CODES, Code, code_of
from fedhaven.shared.text import printable


@dataclass(frozen=True)
class SiteFailure:
    """A site's failure in one attempt: its refusal's code (None when it did not refuse: a crash, a timeout, a lost
    node, too few sites) and one readable line."""

    text: str
    code: Code | None = None

    @property
    def refused(self) -> bool:
        """A refusal: the site trained and sent nothing for the task."""
        return self.code is not None

    @property
    def budget(self) -> bool:
        return self.code in BUDGET_CODES

    def __str__(self) -> str:
        return self.text


def site_failure(failure: Any) -> SiteFailure:
    """A failure as Flower's workflows hand it over: an `Exception(Error)` (the site's error reply), a (proxy,
    FitRes) with a failed status, or any exception. The only place that reads one; its text is safe to show (control
    characters escaped: `fedhaven.shared.text.printable`)."""
    if isinstance(failure, tuple):
        return SiteFailure(printable(f"site returned status {failure[1].status.code.name}: "
                                     f"{failure[1].status.message}"))
    inner = failure.args[0] if isinstance(failure, BaseException) and failure.args else None
    if isinstance(inner, Error):
        assert inner.reason is not None  # every error reply, Flower's and fedhaven's, says why
        code = code_of(inner.code)
        if code is not None:  # a fedhaven refusal: the site's own sentence, control characters escaped
            return SiteFailure(printable(inner.reason), code)
        return SiteFailure(printable(readable_reason(inner.reason)))  # a crash: Flower's or Ray's words, readable
    return SiteFailure(printable(short_reason(str(failure))))


class RoundFailed(RuntimeError):
    """A round produced no aggregate (e.g. SecAgg+ halted); never reported as success."""

    def __init__(self, message: str, *, failures: tuple[SiteFailure, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures

    @property
    def budget_exhausted(self) -> bool:
        """Whether every site that failed refused for lack of budget (its own, or the run's target)."""
        return bool(self.failures) and all(f.budget for f in self.failures)


class NoRoundTrained(RoundFailed):
    """The run ended without a single aggregated round: never a success, whatever the reason."""
