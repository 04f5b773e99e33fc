"""The `check` command's work: validate campaign files and their audiences, and describe them.

Everything a marketer can get wrong is found in one pass and reported together: file-level rules
(`scheduler.loader`), row-level skip counts (`scheduler.audience.summarize`), duplicate ids
against the other files of the campaigns folder, and config problems that would stop the daemon.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from scheduler.audience import summarize
from scheduler.campaign import Campaign, utc_text
from scheduler.caps import caps_for
from scheduler.config import CREDENTIAL_SOURCES, SANDBOX, Config
from scheduler.csvfile import CsvProblem
from scheduler.errors import CampaignError, ConfigError, Problem
from scheduler.forecast import capped_now, describe, forecast
from scheduler.identity import judged
from scheduler.journal import JournalError, JournalReader, open_journal
from scheduler.loader import CampaignCheck, broken_link, campaign_files, load_campaigns, real_path
from scheduler.rows import AudienceSummary
from scheduler.series import series_line
from scheduler.suppression import Suppression
from scheduler.tomlsource import TomlDocument, TomlProblem, read_toml
from scheduler.trigger import TRIGGER_DAY_SHAPE
from scheduler.trigger_scan import due_counts, due_line, next_days
from scheduler.vocabulary import FINISHED, SkipReason

#: how many line numbers per skip reason the report shows
LINES_SHOWN = 5


@dataclass(frozen=True)
class CheckReport:
    """Every campaign file checked, the audience summary of each valid one, and config problems."""

    checks: list[CampaignCheck]
    summaries: dict[Path, AudienceSummary] = field(default_factory=dict)
    config_problems: list[Problem] = field(default_factory=list)
    #: what send windows and frequency caps will do, per valid campaign file (lines of text)
    notes: dict[Path, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing is an error (warnings are allowed)."""
        problems = [*self.config_problems, *(p for c in self.checks for p in c.problems)]
        return not any(p.is_error for p in problems)


def check_paths(
    paths: Sequence[Path], config: Config, now: datetime, *, strict: bool = False,
) -> CheckReport:
    """Check the given files and folders (none: the configured campaigns folder).

    ``strict``: also what the daemon needs on this machine (a credential for a real API);
    marketers checking their files are not told about the operator's credentials.
    """
    config_problems = [*_defaults_problems(config), *_sending_problems(config),
                       *_sandbox_problems(config)]
    if strict:
        config_problems.extend(_credential_problems(config))
    folders = paths or [display_path(config.paths.campaigns)]
    files, missing = _expand(folders, config, config_problems)
    checks = _with_folder_duplicates(load_campaigns(files, config, now), config)
    checks = [*missing, *checks]
    suppression = _suppression(config, config_problems)
    summaries: dict[Path, AudienceSummary] = {}
    for index, check in enumerate(checks):
        if check.campaign is not None:
            # `check` is a command that starts no thread: big audiences use a second core
            checks[index], summary = check_audience(check, suppression, may_fork=True)
            if summary is not None:
                summaries[check.file] = summary
    if strict:
        checks = [_with_account_key(check, config) for check in checks]
    checks = _judge_ids(checks, config, config_problems)
    checks, started = _started(checks, config, now)
    notes = _policy_notes(checks, summaries, config, suppression, now, set(started))
    for file, note in started.items():
        notes.setdefault(file, []).insert(0, note)
    return CheckReport(checks, summaries, config_problems, notes)


def _judge_ids(
    checks: list[CampaignCheck], config: Config, config_problems: list[Problem],
) -> list[CampaignCheck]:
    """Each valid file against the journal's campaign of its id (`identity.judged`): the id
    of a campaign that ended is an error unless this is that very campaign."""
    if not any(c.campaign for c in checks):
        return checks
    try:
        if not _journal_exists(config):
            return checks
        with JournalReader(open_journal(config.journal_location())) as journal:
            records = {r.id: r for r in journal.campaigns()}
    except OSError:  # a journal this user may not read: the daemon judges the ids when it loads
        return checks
    except JournalError as exc:
        config_problems.append(Problem(None, None, None, f"cannot tell whether these ids were "
                                       f"used by earlier campaigns: {exc}", "warning"))
        return checks
    return [judged(c, records.get(c.campaign.id)) if c.campaign else c for c in checks]


def _started(
    checks: list[CampaignCheck], config: Config, now: datetime,
) -> tuple[list[CampaignCheck], dict[Path, str]]:
    """Campaigns due already that the journal has started from this same file: the checks
    without the "send time has passed" warning (the daemon does not send them "at once" now),
    and a note per file with what the journal says instead."""
    due = {c.campaign.id: c for c in checks if c.campaign is not None and
           c.campaign.send_at <= now}
    if not due:
        return checks, {}
    notes: dict[Path, str] = {}
    try:
        if not _journal_exists(config):
            return checks, {}
        with JournalReader(open_journal(config.journal_location())) as journal:
            for record in journal.campaigns():
                check = due.get(record.id)
                if (check is None or record.started_at is None
                        or record.file != str(real_path(check.file))):
                    continue
                sent = journal.counts(record.id).get("sent", 0)
                notes[check.file] = (
                    f"finished in the journal ({record.state}, {sent:,} sent): the daemon "
                    "sends nothing more" if record.state in FINISHED else
                    f"started in the journal ({record.state}, {sent:,} sent so far)")
    except (JournalError, OSError):  # OSError: a journal this user may not read
        return checks, {}  # the warning stays: it is what the files alone say
    return [c if c.file not in notes else CampaignCheck(
        c.file, c.campaign, [p for p in c.problems if not _passed(p)]) for c in checks], notes


def _journal_exists(config: Config) -> bool:
    """True when the config's journal exists; raises `OSError` when this user may not even
    look (a marketer checking with the service's config: its journal is the service's)."""
    return config.journal_location().exists


def _passed(problem: Problem) -> bool:
    """The loader's warning that a campaign's send time has passed."""
    return (problem.field == "send_at" and not problem.is_error
            and problem.message.startswith("send time has passed"))


def _policy_notes(
    checks: list[CampaignCheck], summaries: Mapping[Path, AudienceSummary], config: Config,
    suppression: Suppression | None, now: datetime, started: set[Path],
) -> dict[Path, list[str]]:
    """Per valid campaign not ``started``: its send-window forecast, and how many the caps
    would skip now (counted against the journal's sent messages, when there is a journal)."""
    notes: dict[Path, list[str]] = {}
    with contextlib.ExitStack() as stack:
        journal: JournalReader | None = None
        for check in checks:
            campaign, summary = check.campaign, summaries.get(check.file)
            if campaign is None or summary is None or check.file in started:
                continue
            lines = notes.setdefault(
                check.file, policy_notes(campaign, summary.zones, config, suppression, now)
                if campaign.trigger is None else _trigger_notes(campaign, now))
            if not caps_for(campaign, config.policy.caps):
                continue
            try:
                if not _journal_exists(config):
                    continue
                if journal is None:
                    reader = JournalReader(open_journal(config.journal_location()))
                    journal = stack.enter_context(reader)
                capped = capped_now(campaign, config.policy.caps, journal, suppression, now)
            except (JournalError, OSError) as exc:  # OSError: a journal this user may not read
                lines.append(f"frequency caps: cannot tell ({exc})")
                continue
            lines.append(_capped_line(capped))
    return notes


def policy_notes(
    campaign: Campaign, zones: Mapping[str, int], config: Config,
    suppression: Suppression | None, now: datetime, journal: JournalReader | None = None,
) -> list[str]:
    """What the send window (by zone: ``zones``) and, with a ``journal``, the frequency caps
    will do to ``campaign`` if it goes now (`check`, `send --dry-run`)."""
    lines = []
    seen = forecast(campaign, zones, now)
    if seen is not None:
        lines.extend(describe(seen))
    if journal is not None and caps_for(campaign, config.policy.caps):
        lines.append(_capped_line(
            capped_now(campaign, config.policy.caps, journal, suppression, now)))
    return lines


def _trigger_notes(campaign: Campaign, now: datetime) -> list[str]:
    """A trigger's rows due in the 7 days from today (UTC), by day (SPEC §13.2); its send
    window, if any, holds each day's messages as for any campaign."""
    try:
        counts = due_counts(campaign, next_days(campaign, today=now.astimezone(UTC).date()))
    except (OSError, CsvProblem) as exc:  # the summary already said what is wrong
        return [f"due rows: cannot tell ({exc})"]
    lines = [due_line(campaign, counts)]
    if campaign.window is not None:
        lines.append(f"send window {campaign.window.text()} (recipient's local time): a "
                     "message due outside it waits for it")
    return lines


def _capped_line(capped: int) -> str:
    return f"frequency caps would skip {capped:,} now"


def check_audience(
    check: CampaignCheck, suppression: Suppression | None, *, may_fork: bool,
) -> tuple[CampaignCheck, AudienceSummary | None]:
    """Read a valid campaign's whole audience: the check with what its rows add (an unreadable
    CSV, no valid recipient, a large invalid share, empty personalisation), and the counts.
    ``may_fork``: the caller runs no other thread (`summarize`)."""
    assert check.campaign is not None
    series = check.campaign.repeat is not None
    # a series' rows are read as its next occurrence's: tracking ids carry the run id
    read = check.campaign.occurrence(check.campaign.send_at) if series else check.campaign
    try:
        summary = summarize(read, suppression, may_fork=may_fork)
    except CampaignError as exc:
        return CampaignCheck(check.file, None, [*check.problems, *exc.problems]), None
    problems = audience_problems(check.file, summary)
    if series:
        problems.extend(_series_id_problems(check.file, read.wire_id, summary))
    elif read.trigger is not None:  # each day run's ids: birthday.YYYY-MM-DD-{id}
        problems.extend(_series_id_problems(check.file, f"{read.wire_id}.{TRIGGER_DAY_SHAPE}",
                                            summary))
    failed = any(p.is_error for p in problems)
    campaign = None if failed else check.campaign
    return CampaignCheck(check.file, campaign, [*check.problems, *problems]), summary


def _series_id_problems(file: Path, prefix: str, summary: AudienceSummary) -> list[Problem]:
    """A series whose tracking ids would be too long is an error, not a skipped row: every
    occurrence would skip the same rows (SPEC §13.1)."""
    detail = summary.first_details.get("invalid_id", "")
    if not detail.startswith("the tracking id would be"):
        return []
    line = summary.first_lines["invalid_id"][0]
    return [Problem(file, _lines(file).line_of("audience.id_column"), "audience.id_column",
                    f"each occurrence's tracking ids are {prefix}-{{id}}: for line {line} "
                    f"{detail.removeprefix('the ')}")]


#: skip reasons that mean the row itself is wrong (duplicates and opt-outs are expected)
_BROKEN_ROWS: tuple[SkipReason, ...] = ("invalid_phone", "invalid_id", "text_too_long")
#: over this share of broken rows, the audience is probably exported wrong: a warning
BROKEN_SHARE = 0.10


def audience_problems(file: Path, summary: AudienceSummary) -> list[Problem]:
    """What the rows say about the campaign: no valid recipient is an error (it would send
    nothing); many broken rows and placeholders left empty are warnings."""
    lines = _lines(file)
    at_csv, at_text = lines.line_of("audience.csv"), lines.line_of("text")
    if summary.total == 0:
        return [Problem(file, at_csv, "audience.csv", "has no recipients: the CSV has its "
                        "header line but no rows below it")]
    if summary.valid == 0:
        return [Problem(file, at_csv, "audience.csv", f"no valid recipient: all "
                        f"{summary.total:,} rows are skipped ({_reasons(summary)}), so the "
                        f"campaign would send nothing; {_first(summary, summary.skipped)}")]
    problems = []
    broken = {r: n for r in _BROKEN_ROWS if (n := summary.skipped.get(r, 0))}
    share = sum(broken.values()) / summary.total
    if share > BROKEN_SHARE:
        problems.append(Problem(
            file, at_csv, "audience.csv",
            f"{sum(broken.values()):,} of {summary.total:,} rows ({share:.0%}) cannot be sent "
            f"({', '.join(f'{r} {n:,}' for r, n in broken.items())}): is the CSV exported "
            f"right? {_first(summary, broken)}", "warning",
        ))
    if zones := summary.skipped.get("invalid_timezone", 0):
        problems.append(Problem(
            file, lines.line_of("audience.tz_column"), "audience.tz_column",
            f"{zones:,} {'row names' if zones == 1 else 'rows name'} no IANA time zone and "
            f"{'is' if zones == 1 else 'are'} skipped: "
            f"{_first(summary, {'invalid_timezone': zones})}", "warning",
        ))
    for name, count in summary.empty.items():
        shown = ", ".join(map(str, summary.empty_lines[name]))
        more = ", …" if count > len(summary.empty_lines[name]) else ""
        rows = "row" if count == 1 else "rows"
        problems.append(Problem(
            file, at_text, "text",
            f"{{{name}}} is empty in {count:,} {rows} (line{'s' if count > 1 else ''} "
            f"{shown}{more}): those messages go out with nothing in its place; fill the "
            "column, or word the text so it reads well without it", "warning",
        ))
    return problems


def _reasons(summary: AudienceSummary) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in summary.skipped.items())


def _first(summary: AudienceSummary, reasons: Mapping[SkipReason, int]) -> str:
    """``line 2: "380…" is missing the +: write +380…`` for the first of these reasons."""
    reason = next(iter(reasons))
    line = summary.first_lines[reason][0]
    detail = summary.first_details.get(reason) or reason
    return f"line {line}: {detail}"


def _lines(file: Path) -> TomlDocument:
    """The campaign file's key lines (it was just read: a failure here only loses lines)."""
    try:
        return read_toml(file)
    except TomlProblem:
        return TomlDocument(file, {})


#: the account's documented request rate (SPEC §3: 100 requests/s, bursts of 150)
ACCOUNT_RATE = 100


def _sending_problems(config: Config) -> list[Problem]:
    """A request rate above what the account allows: a warning (the API answers 429)."""
    rate = config.sending.requests_per_second
    if rate <= ACCOUNT_RATE or config.api.is_sandbox:
        return []
    line = None
    if config.source is not None:
        with contextlib.suppress(TomlProblem):
            line = read_toml(config.source).line_of("sending.requests_per_second")
    return [Problem(
        config.source, line, "sending.requests_per_second",
        f"{rate:g} requests/s is above the account's documented {ACCOUNT_RATE}/s (bursts of "
        "150): the API answers 429 and sending slows down; set it to 100 or less", "warning",
    )]


def _defaults_problems(config: Config) -> list[Problem]:
    """No config file at all: a warning, since the daemon's policy and suppression list are
    then not applied and `check`'s counts differ from what the daemon will send."""
    if config.source is not None:
        return []
    return [Problem(None, None, None, "no config file (no --config, $CASCADE_CONFIG or "
                    "./config.toml): checking with the built-in defaults, so with no [policy] "
                    "window or caps and no suppression list; the daemon's counts may differ: "
                    "pass its config with --config FILE", "warning")]


def _sandbox_problems(config: Config) -> list[Problem]:
    """``[sandbox]`` faults set while a real API is configured: a warning (they do nothing)."""
    if config.api.is_sandbox or not config.sandbox.model_fields_set:
        return []
    return [Problem(config.source, None, "sandbox", "is for the embedded sandbox only "
                    f'(base_url = "sandbox"), not {config.api.base_url}: it changes nothing; '
                    "remove it", "warning")]


def display_path(path: Path) -> Path:
    """``path`` relative to the current folder when it is inside it (shorter in reports)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _expand(
    paths: Iterable[Path], config: Config, problems: list[Problem]
) -> tuple[list[Path], list[CampaignCheck]]:
    """Files as given, folders as their campaign files; a path that cannot be read (missing,
    a broken symbolic link) is a failed check."""
    files: list[Path] = []
    missing: list[CampaignCheck] = []
    for path in paths:
        if path.is_dir():
            files.extend(_folder_files(path, problems))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(_unreadable(path, config))
    return _unique(files), missing


def _folder_files(folder: Path, problems: list[Problem]) -> list[Path]:
    """The folder's campaign files; a symbolic link among them that loops or points nowhere
    is a warning (the other files are still checked)."""
    found = campaign_files(folder)
    if not found:
        problems.append(Problem(folder, None, None, "no campaign files (*.toml) in this "
                                "folder", "warning"))
    files = []
    for path in found:
        link = broken_link(path)
        if link is None:
            files.append(path)
        else:
            problems.append(Problem(path, None, None, f"cannot read: {link}", "warning"))
    return files


def _unreadable(path: Path, config: Config) -> CampaignCheck:
    """The failed check of a path named on the command line that is neither file nor folder."""
    link = broken_link(path)
    if link is not None:
        message = f"cannot read: {link}"
    elif real_path(path) == config.paths.campaigns:
        message = ("no such file or folder: create it, or set [paths].campaigns in the config "
                   "(--config FILE)")
    else:
        message = "no such file or folder"
    return CampaignCheck(path, None, [Problem(path, None, None, message)])


def _unique(files: list[Path]) -> list[Path]:
    """Each file once, even when named twice (``check campaigns/ campaigns/a.toml``)."""
    seen: set[Path] = set()
    unique = []
    for path in files:
        if real_path(path) not in seen:
            seen.add(real_path(path))
            unique.append(path)
    return unique


def _with_folder_duplicates(checks: list[CampaignCheck], config: Config) -> list[CampaignCheck]:
    """Also compare ids with the campaign files of the folder that were not checked this time."""
    checked = {real_path(c.file) for c in checks}
    folder = config.paths.campaigns
    others = {} if not folder.is_dir() else _ids_of(
        p for p in campaign_files(folder) if real_path(p) not in checked
    )
    result = []
    for check in checks:
        campaign = check.campaign
        other = None if campaign is None else others.get(campaign.id)
        if campaign is None or other is None:
            result.append(check)
            continue
        problem = Problem(
            check.file, _line_of_id(check.file), "id",
            f'id "{campaign.id}" is also used by {other}: every campaign needs its own id',
        )
        result.append(CampaignCheck(check.file, None, [*check.problems, problem]))
    return result


def _line_of_id(path: Path) -> int | None:
    try:
        return read_toml(path).line_of("id")
    except TomlProblem:
        return None


def _ids_of(files: Iterable[Path]) -> dict[str, Path]:
    """The ``id`` written in each readable file (for duplicate detection only)."""
    ids: dict[str, Path] = {}
    for path in files:
        try:
            value = read_toml(path).data.get("id")
        except TomlProblem:
            continue
        if isinstance(value, str):
            ids.setdefault(value, path)
    return ids


def _with_account_key(check: CampaignCheck, config: Config) -> CampaignCheck:
    """``check --strict``: a campaign whose account (``[[accounts]]``) has no API key in this
    environment is an error, naming where the key is read from (never a value)."""
    campaign = check.campaign
    if campaign is None or not config.accounts:
        return check
    account = config.account(campaign.account)
    if account.base_url == SANDBOX or campaign.account in config.credentials.account_keys:
        return check
    variable, filename = config.key_source(campaign.account)
    line = _line_of(check.file, "account")
    problem = Problem(check.file, line, "account", f'account "{campaign.account}" has no API '
                      f"key here: set {variable}, or put the key in {filename} in "
                      "$CREDENTIALS_DIRECTORY (LoadCredential= in the systemd unit)")
    return CampaignCheck(check.file, None, [*check.problems, problem])


def _line_of(path: Path, key: str) -> int | None:
    try:
        return read_toml(path).line_of(key)
    except TomlProblem:
        return None


def _credential_problems(config: Config) -> list[Problem]:
    """A real API without credentials in this environment: a warning, for ``check --strict``
    on the daemon's machine (under systemd, ``LoadCredential=`` gives the daemon its own)."""
    if config.accounts:  # each account's key is its campaigns' business (`_with_account_key`)
        return []
    try:
        config.require_credentials()
    except ConfigError as exc:
        names = ", ".join(env for env, _, _ in CREDENTIAL_SOURCES)
        return [
            Problem(p.file, p.line, p.field, f"no credential set ({names}): a daemon "
                    "started with this environment would refuse to start", "warning")
            for p in exc.problems
        ]
    return []


def _suppression(config: Config, problems: list[Problem]) -> Suppression | None:
    """The suppression list, or None (with its problems recorded) when it cannot be read."""
    try:
        return Suppression.load(config.paths.suppression)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


# --------------------------------------------------------------------------------------------
# Rendering


def render_report(report: CheckReport) -> str:
    """The human text printed by `check`: one line per campaign, then its problems, then a total."""
    lines = [p.render() for p in report.config_problems]
    for check in report.checks:
        lines.append(_headline(check, report.summaries.get(check.file)))
        if check.campaign is not None and check.campaign.repeat is not None:
            lines.append(f"    {series_line(check.campaign.repeat, check.campaign.send_at)}")
        lines.extend(f"    {note}" for note in report.notes.get(check.file, []))
        lines.extend(f"    {p.render()}" for p in check.problems)
    lines.append(_totals(report))
    return "\n".join(lines)


def _headline(check: CampaignCheck, summary: AudienceSummary | None) -> str:
    campaign = check.campaign
    if campaign is None:
        count = len(check.errors)
        return f"INVALID  {check.file}  ({count} {'error' if count == 1 else 'errors'})"
    when = (f"send_at {utc_text(campaign.send_at)}" if campaign.repeat is None
            else f'series "{campaign.repeat.cron}" {campaign.repeat.timezone}')
    if campaign.trigger is not None:
        when = f"trigger next run {campaign.day_run(next_days(campaign, 1)[0]).id}"
    parts = [f"OK       {check.file}", campaign.id, campaign.type, when]
    if campaign.paused:
        parts.append("paused")
    if summary is not None:
        parts.append(describe_summary(summary))
    return "  ".join(parts)


def describe_summary(summary: AudienceSummary) -> str:
    """``1,234 recipients valid, 12 skipped (invalid_phone 7: lines 4, 9; duplicate 5: ...)``."""
    noun = "recipient" if summary.valid == 1 else "recipients"
    text = f"{summary.valid:,} {noun} valid"
    total = sum(summary.skipped.values())
    if not total:
        return text + ", none skipped"
    reasons = []
    for reason, count in summary.skipped.items():
        shown = summary.first_lines.get(reason, [])[:LINES_SHOWN]
        where = ("line " if len(shown) == 1 else "lines ") + ", ".join(map(str, shown))
        more = ", …" if count > len(shown) else ""
        reasons.append(f"{reason} {count:,}: {where}{more}")
    return f"{text}, {total:,} skipped ({'; '.join(reasons)})"


def _totals(report: CheckReport) -> str:
    valid = sum(1 for c in report.checks if c.campaign is not None)
    invalid = len(report.checks) - valid
    problems = [*report.config_problems, *(p for c in report.checks for p in c.problems)]
    errors = sum(1 for p in problems if p.is_error)
    warnings = len(problems) - errors
    files = "campaign file" if len(report.checks) == 1 else "campaign files"
    return (
        f"{len(report.checks)} {files}: {valid} valid, {invalid} invalid; "
        f"{errors} {'error' if errors == 1 else 'errors'}, "
        f"{warnings} {'warning' if warnings == 1 else 'warnings'}"
    )
