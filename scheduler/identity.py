"""Which campaign a file is: its content fingerprint, and whether an id already used may take it.

A campaign id names one campaign for good. Once a campaign has started and then ended
(finished, expired, or cancelled by removing its file), a file with its id is recognised as
that same campaign only when it says the same thing to the same audience: the file's keys
(`loader.content_key`, ``paused`` and ``resume`` aside) and the audience CSV's bytes, kept in
the journal when the campaign is first planned. Restoring a removed file then resumes it
(SPEC §7); ``resume = true`` carries a cancelled campaign on from another file, as it was
planned; anything else with a used id is refused (`check` errors, the daemon and `send` send
nothing), so a new campaign can never restart an old one's audience and text.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import replace
from pathlib import Path

from scheduler.campaign import Campaign, utc_text
from scheduler.errors import Problem
from scheduler.journal import CampaignRecord
from scheduler.loader import CampaignCheck
from scheduler.tomlsource import TomlProblem, read_toml
from scheduler.vocabulary import ENDED, CampaignState

_CHUNK = 1 << 20  # bytes read at a time while hashing an audience


def content_fingerprint(campaign: Campaign) -> str:
    """What the campaign is: its file's keys (`Campaign.content`) and its audience CSV's bytes,
    as ``KEYS/AUDIENCE`` (two digests, so a change of audience alone can be told apart). Reads
    the whole CSV once per version of it (the digest is kept per size and mtime)."""
    return f"{campaign.content}/{audience_digest(campaign.audience.csv)}"


def audience_digest(path: Path) -> str:
    """sha256 of the file's bytes ("missing" when it cannot be read)."""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return _digest(path, stat.st_size, stat.st_mtime_ns, stat.st_ino)


@functools.lru_cache(maxsize=256)
def _digest(path: Path, size: int, mtime_ns: int, inode: int) -> str:
    """The digest of one version of a file (the stat fields are the cache's key)."""
    del size, mtime_ns, inode
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return "missing"
    return digest.hexdigest()


def used(record: CampaignRecord | None) -> bool:
    """True when the journal's campaign of this id started and has ended: its id is taken."""
    return record is not None and record.started_at is not None and record.state in ENDED


def reuse_problem(
    campaign: Campaign, record: CampaignRecord | None, content: str | None,
) -> Problem | None:
    """What a file with ``campaign``'s id may do, given the journal's ``record`` of that id and
    the file's ``content`` (`content_fingerprint`; needed only when the id is `used`): None
    (a new id, or the very campaign), a warning (``resume = true`` over another file; the own
    file of a finished campaign whose audience changed since, or that an earlier release
    planned without keeping its content), or an error (a used id taken by another campaign)."""
    if record is None or not used(record) or record.content == content:
        return None
    stored, now = (record.content or "").partition("/"), (content or "").partition("/")
    # the same keys over another audience: "the audience CSV changed"; None: not known
    change = None if record.content is None else "keys" if stored[0] != now[0] else "audience"
    when = utc_text(record.finished_at) if record.finished_at is not None else "earlier"
    if record.state != "cancelled":
        return _finished(campaign, record.state, when, change)
    if campaign.resume:
        return _warning(campaign, "resume",
                        f'carries on campaign "{campaign.id}", cancelled {when}, as it was '
                        "planned (the text, audience and send time in the journal); what this "
                        "file or its audience says differently is ignored")
    why = {
        None: "it was planned by an earlier release, which did not keep what it was",
        "keys": "this file is not the one it was planned from (its text, send time, audience "
                "or another setting differs)",
        "audience": "its audience CSV has changed since it was planned",
    }[change]
    return Problem(
        campaign.file, _id_line(campaign.file), "id",
        f'"{campaign.id}" is the id of a campaign cancelled {when} (its file was removed), and '
        f"{why}: to carry that campaign on as it was planned, restore its file and audience or "
        "add resume = true; to send this one as a new campaign, give it a new id",
    )


def _finished(
    campaign: Campaign, state: CampaignState, when: str, change: str | None,
) -> Problem:
    """A file with the id of a campaign that finished: nothing of it is ever sent again."""
    how = "finished" if state == "done" else "ended (expired)"
    if campaign.resume:
        return _warning(campaign, "resume",
                        f'campaign "{campaign.id}" {how} {when}: nothing is left to resume')
    if change == "keys":
        return Problem(campaign.file, _id_line(campaign.file), "id",
                       f'"{campaign.id}" is the id of a campaign that {how} {when}, and an id '
                       "is never sent twice: give this campaign a new id")
    # its own file, left in place: nothing will be sent, but say so where it might be expected
    since = ("its audience CSV has changed since" if change == "audience"
             else "it was planned by an earlier release")
    return _warning(campaign, "id",
                    f'campaign "{campaign.id}" {how} {when} and {since}: it is not sent again '
                    "(for a new campaign, give this file a new id)")


def _warning(campaign: Campaign, key: str, message: str) -> Problem:
    line = _line(campaign.file, key, None)
    return Problem(campaign.file, line, key, message, "warning")


def _id_line(path: Path) -> int | None:
    return _line(path, "id", None)


def _line(path: Path, key: str, default: int | None) -> int | None:
    """The line of ``key`` in the campaign file (``default`` when it cannot be read now)."""
    try:
        return read_toml(path).line_of(key) or default
    except (OSError, TomlProblem):
        return default


def judged(check: CampaignCheck, record: CampaignRecord | None) -> CampaignCheck:
    """``check`` with what its id's journal ``record`` says of it (`reuse_problem`): an error
    takes its campaign away (it is not sent), a warning leaves it. Hashes the audience only
    when the id is `used`."""
    campaign = check.campaign
    if campaign is None or not used(record):
        return check
    problem = reuse_problem(campaign, record, content_fingerprint(campaign))
    if problem is None:
        return check
    problem = replace(problem, file=check.file)
    problems = sorted([*check.problems, problem], key=lambda p: p.line or 0)
    return CampaignCheck(check.file, None if problem.is_error else campaign, problems)
