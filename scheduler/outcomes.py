"""A stored batch's open messages, and the final outcomes decided for them while it is posted.

The usual batch is posted as stored and accepted whole without its body ever being decoded
(`Stored`); the outcomes of one batch gather across retries and 400 splits (`Outcomes`).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import overload

import orjson

from scheduler.batching import Message
from scheduler.journal import BatchRecord, Results, Run
from scheduler.journal.codec import split_keys
from scheduler.vocabulary import Outcome

#: a message's tracking id and phone, read at C speed
_ID, _PHONE = operator.itemgetter("id"), operator.itemgetter("toPhone")


@dataclass
class Doubt:
    """Where one part of a batch stands (SPEC §13.4): ``doubtful`` once a post of it may have
    reached the API without a clear answer, ``resent`` once it was posted again after that
    (every outcome it then gets is marked resent: it may have gone twice)."""

    doubtful: bool = False
    resent: bool = False


class Outcomes:
    """The final outcomes decided so far for one batch (across retries and splits), and
    whether any post of its open messages may have reached the API (``doubtful``)."""

    __slots__ = ("doubtful", "results")

    def __init__(self, doubtful: bool = False) -> None:
        self.results = Results()
        self.doubtful = doubtful

    def add(
        self, part: Sequence[Message], outcome: Outcome, detail: str | None, attempts: int,
        resent: bool = False,
    ) -> None:
        """The same final outcome for every message of ``part``."""
        self.results.add(same_run(part, outcome, detail, attempts, resent))

    def doubted(self, doubt: Doubt) -> None:
        """A post of ``doubt``'s part had an ambiguous outcome: the next one is a resend."""
        doubt.doubtful = self.doubtful = True

    def accept(
        self, part: Sequence[Message], ids: Mapping[str, str], attempts: int,
        resent: bool = False,
    ) -> list[Message]:
        """Record the accepted messages as sent; return those the answer left out."""
        tracking = ids_of(part)
        if list(ids) == tracking:  # the usual answer: every message, in the request's order
            message_ids: list[str | None] = list(ids.values())
        else:
            message_ids = list(map(ids.get, tracking))
        if all(message_ids):  # every message named: one run, no Python code per message
            self.results.add(Run("sent", attempts, tracking, message_ids, phones_of(part),
                                 resent))
            return []
        named = [message_id is not None for message_id in message_ids]
        sent = list(itertools.compress(part, named))
        self.results.add(Run("sent", attempts, list(map(_ID, sent)),
                             [m for m in message_ids if m is not None], list(map(_PHONE, sent)),
                             resent))
        return [message for message, found in zip(part, named, strict=True) if not found]


class Stored(Sequence[Message]):
    """A stored batch's messages: their tracking ids and phones at hand (split from the
    snapshot's keys), the message dicts decoded from the body only when a path needs them
    (a 400 split, an answer that leaves ids out, a frequency cap). The usual batch is posted
    as stored and accepted whole without ever being decoded (~0.6 µs a message saved)."""

    __slots__ = ("_decoded", "body", "ids", "phones")

    def __init__(self, body: bytes, ids: list[str], phones: list[str]) -> None:
        self.body, self.ids, self.phones = body, ids, phones
        self._decoded: list[Message] | None = None

    def _messages(self) -> list[Message]:
        if self._decoded is None:
            self._decoded = orjson.loads(self.body)
        return self._decoded

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> list[Message]: ...

    def __getitem__(self, index: int | slice) -> Message | list[Message]:
        return self._messages()[index]

    def __iter__(self) -> Iterator[Message]:
        return iter(self._messages())


def ids_of(part: Sequence[Message]) -> list[str]:
    """The tracking ids of ``part``, in order."""
    return part.ids if isinstance(part, Stored) else list(map(_ID, part))


def phones_of(part: Sequence[Message]) -> list[str]:
    """The phones of ``part``, in order."""
    return part.phones if isinstance(part, Stored) else list(map(_PHONE, part))


def open_size(batch: BatchRecord) -> int:
    """How many of the batch's messages have no final outcome yet."""
    return batch.size - len(batch.decided)


def open_messages(batch: BatchRecord) -> Sequence[Message]:
    """The batch's messages that have no final outcome yet."""
    if batch.keys is not None and not batch.decided:
        return Stored(batch.body, *split_keys(batch.keys))
    messages: list[Message] = orjson.loads(batch.body)
    if batch.decided:
        messages = [m for m in messages if m["id"] not in batch.decided]
    return messages


def same_run(
    messages: Sequence[Message], outcome: Outcome, detail: str | None, attempts: int,
    resent: bool = False,
) -> Run:
    """The same final outcome for every message of ``messages``."""
    return Run(outcome, attempts, ids_of(messages), [detail] * len(messages),
               phones_of(messages), resent)


def all_open(batch: BatchRecord, outcome: Outcome, detail: str | None) -> Results:
    """The same final outcome for every open message of ``batch``, as its results."""
    return same_results(open_messages(batch), outcome, detail, batch.attempts)


def same_results(
    messages: Sequence[Message], outcome: Outcome, detail: str | None, attempts: int,
) -> Results:
    """The same final outcome for every message of ``messages``, as a batch's results."""
    return Results([same_run(messages, outcome, detail, attempts)])
