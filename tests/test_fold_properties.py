"""Invariants of the job fold (``services.domain.state``), over generated histories.

* Redelivery is harmless: applying any event a second time, anywhere after its first
  occurrence, changes nothing.
* A terminal event absorbs: after it, no event changes the state.
* First wins: the first request, the first result of an attempt and the first terminal
  event are the ones the state keeps, whatever follows.
* Writers count: a cancel from another client than the requester, and a result from
  another provider than the attempt's, change nothing.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aiimg.messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    BlobRef,
    CancelRequested,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobRequested,
)
from aiimg.services.domain.state import Entry, JobState, apply, fold

JOB = "j1"
PROVIDERS = ["grok", "local"]
REF = BlobRef(name="sha256-" + "a" * 64, size=1, sha256="a" * 64, mime="image/png")

attempts = st.integers(1, 3)
providers = st.sampled_from(PROVIDERS)
clients = st.sampled_from(["c1", "c2"])


entries = st.one_of(
    st.builds(lambda c, p: (c, JobRequested(job_id=JOB, op="draw", prompt=p)), clients, st.sampled_from(["a", "b"])),
    st.builds(lambda c, r: (c, CancelRequested(job_id=JOB, reason=r)), clients, st.sampled_from(["x", "y"])),
    st.builds(
        lambda n, p: ("", AttemptDispatched(job_id=JOB, attempt=n, provider=p, op="draw", chain=PROVIDERS)),
        attempts,
        providers,
    ),
    st.builds(lambda n, p: (p, AttemptSucceeded(job_id=JOB, attempt=n, provider=p, result=REF)), attempts, providers),
    st.builds(
        lambda n, p, r: (p, AttemptFailed(job_id=JOB, attempt=n, provider=p, reason=r)),
        attempts,
        providers,
        st.sampled_from(["timeout", "auth"]),
    ),
    st.builds(lambda p: ("", JobCompleted(job_id=JOB, result=REF, provider=p, attempt=1)), providers),
    st.builds(lambda m: ("", JobFailed(job_id=JOB, message=m)), st.sampled_from(["m1", "m2"])),
    st.just(("", JobCancelled(job_id=JOB, reason="r"))),
    st.just(("", JobRejected(job_id=JOB, reason="bad_request", message="no"))),
)
histories = st.lists(entries, max_size=14)


def _fold(items: list[Any]) -> JobState:
    return fold(JOB, items)


@settings(max_examples=400)
@given(histories, st.data())
def test_a_redelivered_event_changes_nothing(history: list[Entry], data: st.DataObject) -> None:
    """An event that took effect, applied again later (a redelivery), changes nothing."""
    states = [JobState(job_id=JOB)]
    for writer, event in history:
        states.append(apply(states[-1], event, writer))
    effective = [i for i in range(len(history)) if states[i + 1] != states[i]]
    if not effective:
        return
    i = data.draw(st.sampled_from(effective))
    j = data.draw(st.integers(i + 1, len(history)))
    repeated = [*history[:j], history[i], *history[j:]]
    assert _fold(repeated) == _fold(history)


@settings(max_examples=400)
@given(histories, histories)
def test_a_terminal_event_absorbs_everything_after_it(before: list[Entry], after: list[Entry]) -> None:
    state = _fold(before)
    if state.terminal is None:
        return
    assert _fold([*before, *after]) == state


@settings(max_examples=400)
@given(histories)
def test_the_first_request_and_the_first_terminal_event_win(history: list[Entry]) -> None:
    state = _fold(history)
    requests = [e for _, e in history if isinstance(e, JobRequested)]
    if requests and state.terminal is None:
        assert state.request == requests[0]
    if state.request is not None:
        first_writer = next(w for w, e in history if isinstance(e, JobRequested))
        assert state.client == first_writer
    terminals = [e for _, e in history if isinstance(e, (JobCompleted, JobFailed, JobCancelled, JobRejected))]
    if terminals:
        assert state.terminal == terminals[0]


@settings(max_examples=400)
@given(histories)
def test_each_attempt_keeps_its_first_result_from_its_own_provider(history: list[Entry]) -> None:
    state = _fold(history)
    for view in state.attempts:
        if view.outcome is not None:
            assert view.outcome.provider == view.provider
            dispatched = next(i for i, (_, e) in enumerate(history) if e is view.dispatch)
            results = [
                e
                for _, e in history[dispatched:]
                if isinstance(e, (AttemptSucceeded, AttemptFailed))
                and e.attempt == view.n
                and e.provider == view.provider
            ]
            assert results and view.outcome == results[0]
    # Attempts are numbered 1..n without gaps.
    assert [a.n for a in state.attempts] == list(range(1, len(state.attempts) + 1))


@settings(max_examples=300)
@given(histories, clients)
def test_only_the_requester_can_cancel(history: list[Entry], canceller: str) -> None:
    state = _fold(history)
    if state.request is None or state.terminal is not None or state.cancel_requested is not None:
        return
    after = apply(state, CancelRequested(job_id=JOB, reason="stop"), canceller)
    assert (after.cancel_requested is not None) == (canceller == state.client)
