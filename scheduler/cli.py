"""The command line: a thin layer that parses arguments and calls functions tests can call directly.

Each command is one ``cmd_*`` function plus one ``_configure_*`` function for its arguments,
registered in `COMMANDS`. Mistakes in the user's files or arguments end as one clear message on
stderr and exit code 1 (2 for usage errors), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import orjson
import tomli_w

from scheduler import __version__, stream_reader
from scheduler.campaign import (
    DEFAULT_TTL,
    ID_PATTERN,
    MESSAGE_TYPES,
    Campaign,
    MessageType,
    utc_text,
)
from scheduler.checking import check_audience, check_paths, display_path, render_report
from scheduler.config import Config, load_config, postgres_url
from scheduler.errors import Problem, UserError
from scheduler.journal import JournalBusy, JournalError, JournalReader, open_journal
from scheduler.journal.copy import copy_to_postgres
from scheduler.loader import CampaignCheck, load_campaign, naive_time_hint, real_path
from scheduler.lookup import PHONE_COLUMNS, phone_rows
from scheduler.phones import normalise
from scheduler.planning import PLAN_COLUMNS, no_journal_line, plan_rows, with_occurrences
from scheduler.report import (
    LISTINGS,
    RECIPIENT_COLUMNS,
    Listing,
    journaled_account,
    listed_total,
    recipient_columns,
    recipient_rows,
    resent_rows,
    valid_status,
    with_account,
    write_rows,
    write_summary,
)
from scheduler.sandbox_options import SandboxOptions
from scheduler.series import names
from scheduler.status import (
    CAMPAIGN_COLUMNS,
    DAEMON_COLUMNS,
    SERIES_COLUMNS,
    CampaignFiles,
    read_status,
)
from scheduler.streaming import Reader, StreamJob
from scheduler.suppression import Suppression

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_NO_LEADER = 3  # `status`: no daemon holds the lease (for scripts and monitoring)
EXIT_INTERRUPTED = 130
EXIT_PIPE = 128 + signal.SIGPIPE  # 141, like `yes | head -1`'s yes

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    """One subcommand: what it does (for --help), how to read its arguments, and its handler."""

    help: str
    configure: Configure
    handler: Handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code (the console script's entry point)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # a reader that went away shows here, not in the flush at exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except UserError as exc:
        print("\n".join(p.render() for p in exc.problems), file=sys.stderr)
        return EXIT_INVALID
    except (OSError, JournalError) as exc:
        # the process edge: a folder that cannot be created, a journal that cannot be opened,
        # a full disk... one clear sentence, the path included, never a traceback
        print(f"error: {_describe_os_error(exc)}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _stdout_closed() -> int:
    """Whoever read our output went away (``report | head -1``): stop quietly, as Unix tools
    do, with the exit code of a process ended by SIGPIPE. Later writes (the flush at exit) go
    to /dev/null instead of raising again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE


def _describe_os_error(exc: OSError | JournalError) -> str:
    if isinstance(exc, JournalError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return (f"{exc.filename}: {exc.strerror or exc}: check the path in the config "
                "([paths]) and that this user may write there")
    return f"{exc}: check [paths] in the config and the free disk space"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand; ``--config`` goes before or after."""
    parser = argparse.ArgumentParser(
        prog="cascade-scheduler",
        description="Schedule messaging campaigns through the SMSBAT Cascade API.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_config_option(parser, default=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        # SUPPRESS: a --config given before the command is not reset by the subparser's default.
        _add_config_option(sub, default=argparse.SUPPRESS)
        command.configure(sub)
        sub.set_defaults(handler=command.handler)
    return parser


def _add_config_option(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE", default=default,
        help="daemon config file (default: $CASCADE_CONFIG, else ./config.toml if present)",
    )


def _config(args: argparse.Namespace) -> Config:
    """The config named by ``--config`` (or found the usual way)."""
    explicit: Path | None = args.config
    return load_config(explicit)


# --------------------------------------------------------------------------------------------
# check


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH",
        help="campaign files or folders (default: the configured campaigns folder)",
    )
    parser.add_argument(
        "--strict", action="store_true",
        help="also check what the daemon needs on this machine (a credential for a real API)",
    )


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config and campaign files; 0 when valid (warnings allowed), else 1."""
    config = _config(args)
    report = check_paths(args.paths, config, datetime.now(UTC), strict=args.strict)
    print(render_report(report))
    return EXIT_OK if report.ok else EXIT_INVALID


# --------------------------------------------------------------------------------------------
# new

#: a sensible starting text per type (no placeholders: they must match the CSV's columns)
DEFAULT_TEXT: dict[MessageType, str | None] = {
    "transaction": "Your order has been confirmed. Thank you for shopping with us!",
    "promo": "Up to 50% off this week only: https://example.com/sale",
    "viber_survey": "How would you rate our service?",
    "flashcall": None,
}
DEFAULT_SURVEY_OPTIONS = ["Great", "OK", "Poor"]


def _campaign_id(value: str) -> str:
    if not re.fullmatch(ID_PATTERN.strip("^$"), value):
        raise argparse.ArgumentTypeError(
            f'"{value}" is not a valid id: use 1 to 64 letters, digits, ".", "_" or "-", '
            "starting with a letter or digit"
        )
    return value


def _utc_moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'"{value}" is not a date and time: write it like 2026-12-01T09:00:00Z (UTC)'
        ) from None
    if moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(naive_time_hint(moment))
    if moment.utcoffset():
        raise argparse.ArgumentTypeError(f'"{value}" is not UTC: write {utc_text(moment)}')
    return moment.astimezone(UTC)


def _configure_new(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=_campaign_id, metavar="ID", help="the campaign's id")
    parser.add_argument("--type", required=True, choices=MESSAGE_TYPES, help="message type")
    parser.add_argument("--audience", required=True, type=Path, metavar="CSV",
                        help="the audience CSV (path from here; written relative to the file)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--send-at", type=_utc_moment, metavar="UTC",
                      help="send time in UTC, like 2026-12-01T09:00:00Z (default: tomorrow "
                      "09:00Z)")
    # a series (SPEC §13.1) instead of a one-off campaign
    when.add_argument("--repeat", metavar="CRON",
                      help='write a series: a 5-field cron read in --timezone, like "0 10 * * '
                      'MON" (every Monday at 10:00)')
    # a trigger (SPEC §13.2): each recipient on their own date
    when.add_argument("--trigger", metavar="COLUMN",
                      help="write a trigger: each recipient gets the message on the date in "
                      "this CSV column (YYYY-MM-DD), at --at in their own time zone")
    parser.add_argument("--yearly", action="store_true",
                        help="with --trigger: match month and day every year (birthdays)")
    parser.add_argument("--offset-days", type=int, default=0, metavar="N",
                        help="with --trigger: days from the date (-3: three days before)")
    parser.add_argument("--at", default="10:00", metavar="HH:MM",
                        help="with --trigger: the recipient's local time (default: 10:00)")
    parser.add_argument("--timezone", metavar="ZONE",
                        help='with --repeat: the zone the cron is read in, like "Europe/Kyiv"')
    parser.add_argument("--evergreen", action="store_true",
                        help="with --repeat: each occurrence goes only to recipients no "
                        'earlier one messaged (audience = "new")')
    parser.add_argument("--from-name", default="YourBrand", metavar="NAME",
                        help="sender name shown to recipients (default: YourBrand)")
    parser.add_argument("--phone-column", default="phone", metavar="NAME",
                        help="the CSV column with the phones (default: phone)")
    parser.add_argument("--id-column", metavar="NAME",
                        help="a CSV column with your own id per recipient (default: the row "
                        "number)")
    parser.add_argument("--dir", type=Path, metavar="DIR",
                        help="where to write ID.toml (default: the configured campaigns folder)")


def cmd_new(args: argparse.Namespace) -> int:
    """Write a valid campaign file to start from; refuse to overwrite an existing one."""
    config = _config(args)
    folder: Path = args.dir or config.paths.campaigns
    target = folder / f"{args.id}.toml"
    if target.exists():
        raise UserError.single("already exists: edit it, or pick another id", file=target)
    if not folder.is_dir():
        raise UserError.single("no such folder: create it first, or pass --dir", file=folder)
    now = datetime.now(UTC)
    document = new_campaign_document(args, folder, config.paths.campaigns, now)
    check = write_new_campaign(target, _toml_text(document), config, now)
    for problem in check.problems:  # warnings only: the file is written
        print(problem.render(), file=sys.stderr)
    shown = display_path(target.absolute())
    print(f"wrote {shown} (paused: nothing is sent yet): check it with  cascade-scheduler "
          f"check {shown}  then set paused = false in it to make it live")
    return EXIT_OK


def new_campaign_document(
    args: argparse.Namespace, folder: Path, campaigns: Path, now: datetime,
) -> dict[str, Any]:
    """The TOML content of a new campaign file in ``folder``, from the ``new`` command's
    arguments (``campaigns``: the configured campaigns folder).

    It starts paused (the daemon may be watching the folder: nothing goes out before a person
    says it is ready). The audience path is relative to the file in the campaigns folder, and
    absolute elsewhere (a draft folder): a draft then keeps working when it moves into the
    campaigns folder to go live.
    """
    kind: MessageType = args.type
    send_at = args.send_at or datetime.combine(now.date() + timedelta(days=1), time(9), UTC)
    repeat = _new_repeat(args)
    csv = real_path(args.audience)
    audience = (os.path.relpath(csv, real_path(folder))
                if real_path(folder) == real_path(campaigns) else csv.as_posix())
    document: dict[str, Any] = {
        "id": args.id, "from_name": args.from_name, "type": kind, "send_at": send_at,
        "ttl": DEFAULT_TTL[kind],
    }
    trigger = _new_trigger(args)
    if repeat is not None or trigger is not None:
        del document["send_at"]  # a series has [repeat] instead, a trigger [trigger]
    if DEFAULT_TEXT[kind] is not None:
        document["text"] = DEFAULT_TEXT[kind]
    if kind == "viber_survey":
        document["survey_options"] = DEFAULT_SURVEY_OPTIONS
    document["paused"] = True
    if repeat is not None:
        document["repeat"] = repeat
    if trigger is not None:
        document["trigger"] = trigger
    document["audience"] = {"csv": Path(audience).as_posix(), "phone_column": args.phone_column}
    if args.id_column is not None:
        document["audience"]["id_column"] = args.id_column
    return document


def _new_repeat(args: argparse.Namespace) -> dict[str, str] | None:
    """``new --repeat``'s ``[repeat]`` table, or None for a one-off campaign."""
    if args.repeat is None:
        if args.timezone is not None or args.evergreen:
            raise UserError.single("--timezone and --evergreen go with --repeat CRON")
        return None
    if args.timezone is None:
        raise UserError.single('--repeat needs --timezone: the zone its cron is read in, '
                               'like --timezone Europe/Kyiv')
    return {"cron": args.repeat, "timezone": args.timezone,
            "audience": "new" if args.evergreen else "all"}


def _new_trigger(args: argparse.Namespace) -> dict[str, Any] | None:
    """``new --trigger``'s ``[trigger]`` table, or None."""
    if args.trigger is None:
        if args.yearly or args.offset_days or args.at != "10:00":
            raise UserError.single("--yearly, --offset-days and --at go with --trigger COLUMN")
        return None
    return {"column": args.trigger, "yearly": args.yearly, "offset_days": args.offset_days,
            "at": args.at}


#: written above ``paused = true`` in a new campaign file
PAUSED_COMMENT = (
    "# A new campaign starts paused: the daemon sends nothing while paused = true.\n"
    "# When the text, the audience and send_at are right, run `cascade-scheduler check` on\n"
    "# this file, then set paused = false to make it live.\n"
)


def _toml_text(document: dict[str, Any]) -> str:
    """tomli-w's output, with ``send_at`` in the ``...T09:00:00Z`` form the docs teach and a
    comment that says how to make the paused campaign live."""
    text = tomli_w.dumps(document)
    text = re.sub(r"(?m)^paused = true$", lambda m: PAUSED_COMMENT + m.group(0), text)
    if "send_at" not in document:  # a series
        return text
    return re.sub(r"(?m)^send_at = .*$", f"send_at = {utc_text(document['send_at'])}", text)


#: which ``new`` argument sets each key of the file it writes
_NEW_ARGUMENTS = {
    "id": "ID", "type": "--type", "from_name": "--from-name", "send_at": "--send-at",
    "audience.csv": "--audience", "audience.phone_column": "--phone-column",
    "audience.id_column": "--id-column", "repeat.cron": "--repeat",
    "repeat.timezone": "--timezone", "trigger.column": "--trigger", "trigger.at": "--at",
    "trigger.offset_days": "--offset-days",
}


def write_new_campaign(
    target: Path, text: str, config: Config, now: datetime
) -> CampaignCheck:
    """Validate ``text`` as ``target`` would be, exactly as `check` does (the whole audience
    included), then create ``target`` without overwriting; the check (warnings) is returned
    naming ``target``.

    The draft is checked under a hidden name in the same folder (so relative paths resolve the
    same and the daemon's watcher ignores it); only a valid draft becomes the real file. Errors
    name the argument to change (or the CSV line), never the file that was not written.
    """
    draft = target.with_name(f".{target.name}.new")
    draft.write_text(text, "utf-8")
    try:
        check = load_campaign(draft, config, now)
        if check.campaign is not None:
            check, _ = check_audience(check, Suppression.load(config.paths.suppression),
                                      may_fork=True)  # `new` starts no thread
        if not check.ok:
            problems = [_as_argument(p, draft) for p in check.problems if p.is_error]
            problems.append(Problem(None, None, None, f"{display_path(target)} was not "
                                    "written: fix the above and run `new` again"))
            raise UserError(problems)
        try:
            os.link(draft, target)  # atomic, and fails instead of overwriting
        except FileExistsError:
            raise UserError.single("already exists: edit it, or pick another id",
                                   file=target) from None
    finally:
        draft.unlink(missing_ok=True)
    return CampaignCheck(target, check.campaign, [replace(p, file=target)
                                                  for p in check.problems])


def _as_argument(problem: Problem, draft: Path) -> Problem:
    """A problem of the draft as one of the argument that caused it (the CSV's own stay)."""
    if problem.file != draft:
        return problem
    return Problem(None, None, _NEW_ARGUMENTS.get(problem.field or "", problem.field),
                   problem.message)


# --------------------------------------------------------------------------------------------
# send


def _configure_send(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="the campaign file to send")
    parser.add_argument("--now", action="store_true",
                        help="ignore send_at and send now (the TTL counts from now)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and render the first messages; send nothing")
    parser.add_argument("--test", metavar="PHONE[,PHONE...]",
                        help="send the first valid row's message to these phones only (nothing "
                        "is counted, the campaign is not started)")
    parser.add_argument("--row", type=int, metavar="N",
                        help="with --test: render the row on CSV line N instead")


def cmd_send(args: argparse.Namespace) -> int:
    """Send one campaign in the foreground; 0 when every recipient is final, else 1."""
    config = _config(args)
    now = datetime.now(UTC)
    check = load_campaign(args.file, config, now)
    for problem in check.problems:
        if args.now and problem.field == "send_at" and not problem.is_error:
            continue  # "send time has passed" says nothing when --now replaces it
        print(problem.render(), file=sys.stderr)
    if check.campaign is None:
        return EXIT_INVALID
    campaign = check.campaign
    if campaign.repeat is not None:  # a series: `send` works on its next occurrence
        campaign = series_occurrence(campaign, args)
    elif campaign.trigger is not None:  # a trigger: on its next day's run (SPEC §13.2)
        campaign = trigger_day_run(campaign, args)
    if args.now:
        campaign = campaign.model_copy(update={"send_at": now.replace(microsecond=0)})
    # `--now` streams the audience into the send. Its reader is forked now, before aiohttp,
    # rich and structlog load and before `send` starts any thread (the journal's writer,
    # asyncio's): it starts with our imports done and reads while we go on. Unused, it is
    # killed.
    reader = None
    if args.now and not args.dry_run and args.test is None:
        reader = stream_reader.fork(StreamJob.of(campaign, config))
    try:
        return _send(args, config, campaign, reader, now)
    finally:
        if reader is not None:
            reader.close()


def _send(
    args: argparse.Namespace, config: Config, campaign: Campaign, reader: Reader | None,
    now: datetime,
) -> int:
    from scheduler import console
    from scheduler.oplog import configure_logging
    from scheduler.testsend import parse_phones

    if args.dry_run:
        print(console.dry_run(campaign, config, now))
        return EXIT_OK
    if args.row is not None and args.test is None:
        raise UserError.single("--row goes with --test: it picks the row a test send renders")
    configure_logging(config.log.level, "console", config.credentials.secrets())
    if args.test is not None:
        return console.run_test_send(config, campaign, parse_phones(args.test), args.row)
    try:
        return console.run_send(config, campaign, reader)
    except JournalBusy as exc:
        raise UserError.single(_busy(exc, config, now)) from None


def series_occurrence(series: Campaign, args: argparse.Namespace) -> Campaign:
    """The next occurrence of a series, for ``--dry-run`` and ``--test``; a series is sent
    by the daemon, occurrence by occurrence (SPEC §13.1), never by `send` itself."""
    if not (args.dry_run or args.test is not None):
        raise UserError.single(
            f"{args.file} is a series: the daemon (cascade-scheduler run) sends each of its "
            "occurrences; `send` takes one-off campaigns (use --dry-run or --test to see a "
            "series' next occurrence)")
    return series.occurrence(series.send_at)


def trigger_day_run(trigger: Campaign, args: argparse.Namespace) -> Campaign:
    """A trigger's next day run, for ``--dry-run`` and ``--test``; a trigger is sent by the
    daemon, day by day, each recipient at their own moment (SPEC §13.2), never by `send`."""
    if not (args.dry_run or args.test is not None):
        raise UserError.single(
            f"{args.file} is a trigger: the daemon (cascade-scheduler run) sends each day's "
            "run, each recipient at their own moment; `send` takes one-off campaigns (use "
            "--dry-run or --test to see the next day's run)")
    spec = trigger.trigger
    assert spec is not None
    return trigger.day_run(next(spec.days_from(trigger.send_at)))


def _busy(exc: JournalBusy, config: Config, now: datetime) -> str:
    """`send` refused because a daemon sends from the journal (SQLite or PostgreSQL alike):
    what to do instead, never "give it its own [paths].state" (that is for a second daemon)."""
    return (f"{exc.location} is in use by {exc.holder}, which sends from it: `send` cannot "
            "send as well. To send this campaign now, let the daemon do it: save the file in "
            f"its campaigns folder ({display_path(config.paths.campaigns)}) with send_at = "
            f"{utc_text(now)} (a send time passed starts at once, until send_at + ttl); or "
            "stop the daemon first")


# --------------------------------------------------------------------------------------------
# report and plan


def _configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--campaign", metavar="ID", help="only this campaign")
    listing = parser.add_mutually_exclusive_group()
    listing.add_argument("--status", type=_status, metavar="STATUS",
                         help="list the recipients in this outcome: " + ", ".join(LISTINGS)
                         + " (pending: no final outcome yet)")
    listing.add_argument("--resent", action="store_true",
                         help="list the recipients whose message was posted again after an "
                         "ambiguous outcome (a restart, a takeover, a timeout): each may have "
                         "received it twice")
    parser.add_argument("--phone", type=_phone, metavar="PHONE",
                        help="every row of this phone (+380501234567; spaces and dashes are "
                        "fine) in every campaign: its outcome, when, and its delivery status")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="table (default; at most 1,000 rows), json or csv (every row)")


def _status(value: str) -> Listing:
    try:
        return valid_status(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _phone(value: str) -> str:
    phone = normalise(value)
    if phone is None:
        raise argparse.ArgumentTypeError(
            f'"{value}" is not a phone number with its country code: write it like '
            "+380501234567")
    return phone


def cmd_report(args: argparse.Namespace) -> int:
    """Outcomes per campaign, or the recipients in one outcome (--status) or resent
    (--resent)."""
    config = _config(args)
    if not config.journal_location().exists:
        print(f"no journal at {config.paths.state} yet: nothing has been sent", file=sys.stderr)
        return EXIT_OK
    with JournalReader(open_journal(config.journal_location())) as journal:
        if args.campaign is not None and not any(  # a campaign, an occurrence, a series
                names(args.campaign, record.id) for record in journal.campaigns()):
            raise UserError.single(
                f'no campaign "{args.campaign}" in the journal: see `cascade-scheduler report`'
            )
        if args.phone is not None:
            reports = config.delivery_reports
            rows = [row for row in phone_rows(journal, args.phone, args.campaign,
                                              reports=reports.poll or reports.address is not None)
                    if args.status in (None, row["status"], row["delivery"])]
            write_rows(rows, PHONE_COLUMNS, args.format, sys.stdout, f"Rows of {args.phone}")
            if not rows:
                print(f"no row of {args.phone} in the journal", file=sys.stderr)
        elif args.resent:
            write_rows(resent_rows(journal, args.campaign), RECIPIENT_COLUMNS, args.format,
                       sys.stdout, "Recipients: resent (possible duplicates)",
                       total=listed_total(journal, "resent", args.campaign))
        elif args.status is None:
            write_summary(journal, args.campaign, args.format, sys.stdout,
                          delivery=config.delivery_reports.enabled,
                          account_of=journaled_account if config.accounts else None)
        else:
            total = listed_total(journal, args.status, args.campaign)
            recipients = recipient_rows(journal, args.status, args.campaign)
            write_rows(recipients, recipient_columns(args.status), args.format, sys.stdout,
                       f"Recipients: {args.status}", total=total)
    return EXIT_OK


def _configure_plan(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")


def cmd_plan(args: argparse.Namespace) -> int:
    """Every campaign: state, send time, audience, progress and ETA at the configured rate."""
    config = _config(args)
    rows = plan_rows(config, datetime.now(UTC))
    if (missing := no_journal_line(config)) is not None:
        print(missing, file=sys.stderr)
    if not args.json:
        rows = with_occurrences(rows)  # a row per occurrence of each series (SPEC §13.1)
    write_rows(rows, with_account(PLAN_COLUMNS, config.accounts or None),
               "json" if args.json else "table", sys.stdout, "Plan")
    return EXIT_OK


def _configure_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="JSON instead of tables")


def cmd_status(args: argparse.Namespace) -> int:
    """The journal's view now: daemons, series and unfinished campaigns; 3 when nobody
    leads."""
    config = _config(args)
    if not config.journal_location().exists:
        print(f"no journal at {config.paths.state} yet: no daemon has run", file=sys.stderr)
        return EXIT_NO_LEADER
    now = datetime.now(UTC)
    files = CampaignFiles(config, now)
    with JournalReader(open_journal(config.journal_location())) as journal:
        status = read_status(journal, now, files.run, series_of=files.series,
                             reports=config.delivery_reports.enabled,
                             account_of=journaled_account if config.accounts else None)
    if args.json:
        sys.stdout.write(orjson.dumps(status.as_json(), option=orjson.OPT_INDENT_2).decode()
                         + "\n")
    else:
        leader = status.leader or "none: nothing is being sent (start a daemon)"
        print(f"leader: {leader}")
        write_rows(status.daemons, DAEMON_COLUMNS, "table", sys.stdout, "Daemons")
        if status.series:
            write_rows(status.series, SERIES_COLUMNS, "table", sys.stdout, "Series")
        write_rows(status.campaigns, with_account(CAMPAIGN_COLUMNS, config.accounts or None),
                   "table", sys.stdout, "Campaigns not ended")
    return EXIT_OK if status.has_leader else EXIT_NO_LEADER


# --------------------------------------------------------------------------------------------
# run, sandbox, demo


def _configure_run(parser: argparse.ArgumentParser) -> None:
    del parser  # no options beyond --config


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon: schedule and send every campaign in the folder until SIGTERM."""
    # loaded here, not at the top: the other commands (`send` above all) start without the
    # daemon's modules (APScheduler, watchfiles, the status poller), ~50 ms sooner
    from scheduler.daemon import run_daemon
    from scheduler.oplog import configure_logging

    config = _config(args)
    configure_logging(config.log.level, config.log.format, config.credentials.secrets())
    return asyncio.run(run_daemon(config))


def _configure_sandbox(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=8080,
                        help="port (default: %(default)s; 0: any free port)")
    parser.add_argument("--api-key", action="append", default=[], metavar="KEY",
                        help="accept only this key; repeatable, one per account (default: "
                        "any non-empty key)")
    parser.add_argument("--api-keys-file", type=Path, metavar="FILE",
                        help="accept the keys in this file, one a line, read again when it "
                        "changes (revoke a key while a client sends; default: none)")
    parser.add_argument("--fail-rate", type=float, default=0.0,
                        help="share of requests answered with a 5xx, 0..1 (default: %(default)s)")
    parser.add_argument("--rate-limit", type=float,
                        help="requests/s before answering 429 (default: no limit)")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="milliseconds added to every request (default: %(default)s)")
    parser.add_argument("--reject-phone", action="append", default=[], metavar="PHONE",
                        help="answer 400 for this toPhone; repeatable (default: none)")
    parser.add_argument("--reject-rate", type=float, default=0.0,
                        help="share of phones answered 400 INVALID_PHONE, each phone always "
                        "the same way, 0..1 (default: %(default)s)")
    parser.add_argument("--drop-rate", type=float, default=0.0,
                        help="share of requests read and then hung up on with no answer "
                        "(default: %(default)s)")
    parser.add_argument("--omit-rate", type=float, default=0.0,
                        help="share of 200 answers that leave out one message's id "
                        "(default: %(default)s)")
    parser.add_argument("--record", type=Path, metavar="FILE",
                        help="append every accepted message to this JSONL file (default: "
                        "record nothing)")
    parser.add_argument("--seed", type=int,
                        help="make the injected faults reproducible (default: different "
                        "faults every run)")
    status = parser.add_argument_group(
        "status API", "GET /bat/message/{messageId}: each accepted message goes scheduled, "
        "processing, then delivered (on its channel), undeliverable or permanenterror")
    status.add_argument("--dlr-delay", type=float, default=5.0, metavar="SECONDS",
                        help="mean seconds from acceptance to a final status; each message "
                        "takes 0.5x to 1.5x of it (default: %(default)s)")
    status.add_argument("--undeliverable-rate", type=float,
                        default=SandboxOptions.undeliverable_rate,
                        help="share of messages no channel delivers, 0..1 (default: "
                        "%(default)s)")
    status.add_argument("--permanent-error-rate", type=float,
                        default=SandboxOptions.permanent_error_rate,
                        help="share of messages refused for good, 0..1 (default: %(default)s)")
    status.add_argument("--status-fail-rate", type=float, default=0.0,
                        help="share of status requests answered with a 5xx, 0..1 (default: "
                        "%(default)s)")
    status.add_argument("--status-rate-limit", type=float,
                        help="status requests/s before answering 429 (default: no limit)")
    push = parser.add_argument_group(
        "webhooks", "push each final status to a URL, as SMSBAT's delivery-report webhook does")
    push.add_argument("--dlr-url", metavar="URL",
                      help="POST reports here (e.g. a daemon's http://127.0.0.1:8088/"
                      "delivery-reports/TOKEN; default: push nothing)")
    push.add_argument("--dlr-duplicate-rate", type=float, default=0.0,
                      help="share of reports pushed twice (default: %(default)s)")
    push.add_argument("--dlr-reorder-rate", type=float, default=0.0,
                      help="share of messages whose older 'processing' report comes after the "
                      "final one (default: %(default)s)")
    push.add_argument("--dlr-missing-rate", type=float, default=0.0,
                      help="share of final reports never pushed (default: %(default)s)")


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f'"{value}" is not a port: use 0 to 65535 (0: any free)')
    return port


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Run the local Cascade API emulator until Ctrl-C or SIGTERM."""
    try:
        options = SandboxOptions(
            api_key=args.api_key[0] if args.api_key else None,
            api_keys=frozenset(args.api_key[1:]), api_keys_file=args.api_keys_file,
            fail_rate=args.fail_rate, rate_limit=args.rate_limit,
            latency_ms=args.latency_ms, reject_phones=frozenset(args.reject_phone),
            reject_rate=args.reject_rate,
            drop_rate=args.drop_rate, omit_rate=args.omit_rate, record=args.record,
            seed=args.seed, dlr_delay=args.dlr_delay, undeliverable_rate=args.undeliverable_rate,
            permanent_error_rate=args.permanent_error_rate,
            status_fail_rate=args.status_fail_rate, status_rate_limit=args.status_rate_limit,
            dlr_url=args.dlr_url, dlr_duplicate_rate=args.dlr_duplicate_rate,
            dlr_reorder_rate=args.dlr_reorder_rate, dlr_missing_rate=args.dlr_missing_rate,
        )
    except ValueError as exc:
        raise UserError.single(str(exc), field="sandbox") from None
    from scheduler import console

    return console.run_sandbox(options, args.host, args.port)


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, metavar="DIR",
                        help="where to create the demo workspace (default: a new temp folder)")


def cmd_demo(args: argparse.Namespace) -> int:
    """A fresh workspace, campaigns due in seconds, the embedded sandbox, the report."""
    from scheduler import console

    return console.run_demo(args.dir)


# --------------------------------------------------------------------------------------------
# journal


def _configure_journal(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    copy = actions.add_parser(
        "copy", help="copy the SQLite journal ([paths].state) into an empty PostgreSQL one",
        description="Copy the SQLite journal ([paths].state) into an empty PostgreSQL "
        "journal, then check every campaign on both sides. Stop the daemon first. The "
        "password comes from CASCADE_JOURNAL_PASSWORD, the journal-password credential or "
        "PGPASSFILE, never the URL.",
    )
    _add_config_option(copy, default=argparse.SUPPRESS)
    copy.add_argument("--to", required=True, metavar="URL",
                      help="the PostgreSQL journal, postgresql://USER@HOST:5432/DB")
    copy.set_defaults(journal_action=cmd_journal_copy)


def cmd_journal(args: argparse.Namespace) -> int:
    """`journal ACTION`: run the action chosen."""
    action: Handler = args.journal_action
    return action(args)


def cmd_journal_copy(args: argparse.Namespace) -> int:
    """`journal copy --to URL`: one line per campaign copied, then the summary."""
    config = _config(args)
    report = asyncio.run(copy_to_postgres(config.journal_location(), postgres_url(args.to)))
    print("\n".join(report.lines()))
    return EXIT_OK


COMMANDS: dict[str, Command] = {
    "check": Command(
        "validate the config and campaign files (default: the campaigns folder)",
        _configure_check, cmd_check,
    ),
    "new": Command(
        "write a new campaign file to start from", _configure_new, cmd_new,
    ),
    "send": Command(
        "send one campaign in the foreground, with a progress bar", _configure_send, cmd_send,
    ),
    "run": Command("run the daemon (for systemd)", _configure_run, cmd_run),
    "plan": Command(
        "every campaign: state, send time, recipients, progress, ETA", _configure_plan, cmd_plan,
    ),
    "report": Command(
        "outcomes per campaign from the journal; --status lists recipients",
        _configure_report, cmd_report,
    ),
    "status": Command(
        "the daemons (leader, standbys) and every unfinished campaign; exit 3 without a leader",
        _configure_status, cmd_status,
    ),
    "journal": Command(
        "journal maintenance: copy moves the SQLite journal into PostgreSQL",
        _configure_journal, cmd_journal,
    ),
    "sandbox": Command(
        "run the local Cascade API emulator", _configure_sandbox, cmd_sandbox,
    ),
    "demo": Command(
        "see it all work: example campaigns sent through the embedded sandbox",
        _configure_demo, cmd_demo,
    ),
}
