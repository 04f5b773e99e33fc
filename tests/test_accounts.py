"""Several accounts (issue 29, SPEC §13.3): ``[[accounts]]`` in the config, ``account`` in a
campaign file, each account's key on each of its requests, its own rate limit, and one
account's refused key stopping only its campaigns.

Everything goes through the real sandbox on loopback, which records which key sent each
message (`scheduler.sandbox.key_id`, never the key itself)."""

from __future__ import annotations

import asyncio
import bisect
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from scheduler.campaign import Campaign, utc_text
from scheduler.checking import check_paths
from scheduler.config import Config, load_config
from scheduler.delivery_log import DeliveryLog
from scheduler.dlr import Deliveries, Poller, PollSettings, StatusClient
from scheduler.errors import ConfigError
from scheduler.loader import load_campaign
from scheduler.metrics import Metrics
from scheduler.planning import plan_rows
from scheduler.sandbox import key_id
from scheduler.service import open_engine
from tests.conftest import StartSandbox
from tests.helpers import read_jsonl, run_cli, write_audience, write_campaign

KEY_A, KEY_B = "key-of-brand-a-1111", "key-of-brand-b-2222"
ENV = {"CASCADE_API_KEY_BRAND_A": KEY_A, "CASCADE_API_KEY_BRAND_B": KEY_B}


def accounts_config(
    root: Path, base_url: str, *accounts: dict[str, Any], sending: str = "batch_size = 10\n",
    extra: str = "",
) -> Path:
    """``root/config.toml`` with ``[[accounts]]`` entries (written in the given order)."""
    lines = ["[api]", f'base_url = "{base_url}"', "timeout = 10", "", "[sending]", sending,
             "[paths]", 'campaigns = "campaigns"', 'state = "state/journal.sqlite3"',
             'delivery_log = "logs/delivery.jsonl"', ""]
    for account in accounts:
        lines.append("[[accounts]]")
        lines += [f"{key} = {value!r}".replace("'", '"') for key, value in account.items()]
        lines.append("")
    (root / "campaigns").mkdir(parents=True, exist_ok=True)
    path = root / "config.toml"
    path.write_text("\n".join(lines) + extra, "utf-8")
    return path


def two_accounts(root: Path, base_url: str, rate_a: float = 50, rate_b: float = 50) -> Path:
    return accounts_config(root, base_url,
                           {"name": "brand-a", "requests_per_second": rate_a},
                           {"name": "brand-b", "requests_per_second": rate_b})


def campaign_for(
    config: Config, name: str, count: int, *, account: str | None, start: int = 0,
    kind: str = "transaction",
) -> Campaign:
    """A campaign file ``name`` of ``count`` recipients for ``account`` (None: the line is
    left out), loaded with ``config``."""
    folder = config.paths.campaigns
    write_audience(folder / f"{name}.csv", count, start=start)
    extra = "" if account is None else f'account = "{account}"\n'
    now = datetime.now(UTC)
    file = write_campaign(folder, name, f"{name}.csv", send_at=now, type=kind, extra=extra)
    check = load_campaign(file, config, now)
    assert check.campaign is not None, [p.render() for p in check.problems]
    return check.campaign


def errors_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env or {})
    return [p.render() for p in caught.value.problems]


def keys_by_campaign(record: Path) -> dict[str, Counter[str]]:
    """For each campaign (the tracking id's prefix), how many messages each key sent."""
    found: dict[str, Counter[str]] = {}
    for line in read_jsonl(record):
        campaign = line["trackinId"].rsplit("-", 1)[0]
        found.setdefault(campaign, Counter())[line["key"]] += 1
    return found


def busiest_window(times: list[float], span: float) -> int:
    """The most of ``times`` that fall in any window [t, t + span)."""
    ordered = sorted(times)
    return max(bisect.bisect_left(ordered, t + span) - i for i, t in enumerate(ordered))


# ----------------------------------------------------------------------------------- config


def test_without_accounts_nothing_changes(tmp_path: Path) -> None:
    """No ``[[accounts]]``: ``[api]``/``[sending]`` are the account "default", its key is
    still CASCADE_API_KEY, and a campaign needs no ``account``."""
    path = accounts_config(tmp_path, "https://restapi.smsbat.com",
                           sending="requests_per_second = 30\nconcurrency = 3\n")
    config = load_config(path, {"CASCADE_API_KEY": "plain-key"})
    (account,) = config.account_list()
    assert (account.name, account.requests_per_second, account.concurrency,
            account.base_url) == ("default", 30, 3, "https://restapi.smsbat.com")
    assert config.default_account == "default"
    assert config.key_source("default") == ("CASCADE_API_KEY", "api-key")
    assert config.account_headers("default")["X-Authorization-Key"] == "plain-key"
    assert campaign_for(config, "plain", 3, account=None).account == "default"


def test_each_account_reads_its_own_key_from_the_environment_or_a_credential_file(
    tmp_path: Path,
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api-key-brand-b").write_text(KEY_B + "\n")
    path = accounts_config(
        tmp_path, "https://restapi.smsbat.com",
        {"name": "brand-a", "requests_per_second": 20, "concurrency": 4},
        {"name": "brand-b", "requests_per_second": 80, "base_url": "https://b.example.com"})
    config = load_config(path, {"CASCADE_API_KEY_BRAND_A": KEY_A,
                                "CREDENTIALS_DIRECTORY": str(credentials)})
    a, b = config.account_list()
    assert (a.name, a.requests_per_second, a.concurrency, a.base_url) == (
        "brand-a", 20, 4, "https://restapi.smsbat.com")
    assert (b.name, b.requests_per_second, b.concurrency, b.base_url) == (
        "brand-b", 80, None, "https://b.example.com")
    assert config.account_headers("brand-a")["X-Authorization-Key"] == KEY_A
    assert config.account_headers("brand-b")["X-Authorization-Key"] == KEY_B
    assert config.sending_for("brand-b").requests_per_second == 80
    assert {KEY_A, KEY_B} <= set(config.credentials.secrets())  # redacted from every log
    assert KEY_A not in repr(config) and KEY_B not in repr(config)
    config.require_credentials()  # both have a key


def test_an_account_called_default_keeps_the_plain_key(tmp_path: Path) -> None:
    """A config that grew ``[[accounts]]`` with one called "default" keeps CASCADE_API_KEY."""
    path = accounts_config(tmp_path, "https://restapi.smsbat.com",
                           {"name": "default", "requests_per_second": 20},
                           {"name": "brand-b", "requests_per_second": 20})
    config = load_config(path, {"CASCADE_API_KEY": "plain-key", **ENV})
    assert config.account_headers("default")["X-Authorization-Key"] == "plain-key"
    assert config.default_account == "default"


def test_account_mistakes_are_located(tmp_path: Path) -> None:
    path = accounts_config(tmp_path, "sandbox",
                           {"name": "brand-a", "requests_per_second": 20},
                           {"name": "Brand B", "requests_per_second": 20},
                           {"name": "brand-a", "requests_per_second": 5})
    assert errors_of(path) == [
        f'{path}:18: accounts.1.name: "Brand B" is not an account name (lower-case letters, '
        'digits, "-" and "_", at most 40, starting with a letter or digit: it names the '
        'api-key-NAME credential): write "brand-b"']
    path = accounts_config(tmp_path, "sandbox",
                           {"name": "brand-a", "requests_per_second": 20},
                           {"name": "brand_a", "requests_per_second": 20},
                           {"name": "brand-a", "requests_per_second": 5},
                           sending="batch_size = 10\nrequests_per_second = 40\n")
    assert errors_of(path) == [
        f'{path}:19: accounts.1.name: accounts "brand-a" and "brand_a" would both read their '
        "key from CASCADE_API_KEY_BRAND_A: rename one",
        f'{path}:23: accounts.2.name: account "brand-a" is configured twice (first at line '
        "15): give each its own name",
        f"{path}:7: sending.requests_per_second: with [[accounts]], each account has its own "
        "requests_per_second: write it in each [[accounts]] entry and remove it from [sending]",
    ]
    path = accounts_config(tmp_path, "sandbox", {"name": "brand-a"})
    assert errors_of(path) == [
        f"{path}:13: accounts.0.requests_per_second: required key is missing"]


def test_a_cap_naming_an_unknown_account_is_located_with_a_did_you_mean(tmp_path: Path) -> None:
    """``accounts`` in ``[[policy.caps]]`` names configured accounts: another name is an error
    at its line, with the closest name or the list of them."""
    caps = ('[policy]\n[[policy.caps]]\ntypes = ["promo"]\nmax = 1\ndays = 1\n'
            'accounts = ["brand-a"]\n\n[[policy.caps]]\ntypes = ["promo"]\nmax = 2\n'
            'days = 7\naccounts = ["brand-a", "brand_b", "agency"]\n')
    path = accounts_config(tmp_path, "sandbox", {"name": "brand-a", "requests_per_second": 5},
                           {"name": "brand-b", "requests_per_second": 5}, extra=caps)
    assert errors_of(path) == [
        f'{path}:31: policy.caps.1.accounts: unknown account "brand_b" (no [[accounts]] entry '
        'has that name): did you mean "brand-b"?',
        f'{path}:31: policy.caps.1.accounts: unknown account "agency" (no [[accounts]] entry '
        'has that name): the accounts are "brand-a", "brand-b"',
    ]
    single = accounts_config(tmp_path / "single", "sandbox",
                             extra=caps.replace('"brand_b", "agency"', '"default"'))
    assert errors_of(single) == [
        f'{single}:{line}: policy.caps.{index}.accounts: unknown account "brand-a": without '
        '[[accounts]] the one account is "default"' for index, line in ((0, 17), (1, 23))]
    fine = accounts_config(tmp_path / "fine", "sandbox",
                           {"name": "brand-a", "requests_per_second": 5},
                           {"name": "brand-b", "requests_per_second": 5},
                           extra=caps.replace('"brand_b", "agency"', '"brand-b"'))
    assert [cap.accounts for cap in load_config(fine, {}).policy.caps] == [
        ("brand-a",), ("brand-a", "brand-b")]


def test_a_real_account_without_its_key_stops_the_daemon_naming_where_it_is_read(
    tmp_path: Path,
) -> None:
    config = load_config(two_accounts(tmp_path, "https://restapi.smsbat.com"),
                         {"CASCADE_API_KEY_BRAND_A": KEY_A})
    with pytest.raises(ConfigError) as caught:
        config.require_credentials()
    assert str(caught.value).endswith(
        'accounts: account "brand-b" has no API key: set CASCADE_API_KEY_BRAND_B (or '
        "LoadCredential= api-key-brand-b in the systemd unit)")


# --------------------------------------------------------------------------- campaign / check


def test_a_campaign_names_its_account_with_a_did_you_mean(tmp_path: Path) -> None:
    config = load_config(two_accounts(tmp_path, "sandbox"), ENV)
    assert campaign_for(config, "for-b", 2, account="brand-b").account == "brand-b"
    folder = config.paths.campaigns
    write_audience(folder / "x.csv", 2)
    now = datetime.now(UTC)
    typo = write_campaign(folder, "typo", "x.csv", send_at=now, extra='account = "brand-bb"\n')
    assert [p.render() for p in load_campaign(typo, config, now).errors] == [
        f'{typo}:7: account: unknown account "brand-bb": did you mean "brand-b"? (the '
        'config\'s accounts are "brand-a", "brand-b")']
    unnamed = write_campaign(folder, "unnamed", "x.csv", send_at=now)
    assert [p.render() for p in load_campaign(unnamed, config, now).errors] == [
        f'{unnamed}: account: the config has several accounts ("brand-a", "brand-b") and '
        'none called "default": choose one, like account = "brand-a"']


def test_check_strict_names_the_missing_key_of_a_campaigns_account(tmp_path: Path) -> None:
    """On the daemon's machine (``--strict``), a campaign whose account has no key is an
    error naming the variable and the credential file, never a key."""
    config = load_config(two_accounts(tmp_path, "https://restapi.smsbat.com"),
                         {"CASCADE_API_KEY_BRAND_A": KEY_A})
    folder = config.paths.campaigns
    write_audience(folder / "x.csv", 2)
    now = datetime.now(UTC)
    fine = write_campaign(folder, "fine", "x.csv", send_at=now, extra='account = "brand-a"\n')
    keyless = write_campaign(folder, "keyless", "x.csv", send_at=now,
                             extra='account = "brand-b"\n')
    report = check_paths([fine, keyless], config, now, strict=True)
    problems = {c.file: [p.render() for p in c.problems if p.is_error] for c in report.checks}
    assert problems[fine] == []
    assert problems[keyless] == [
        f'{keyless}:7: account: account "brand-b" has no API key here: set '
        "CASCADE_API_KEY_BRAND_B, or put the key in api-key-brand-b in $CREDENTIALS_DIRECTORY "
        "(LoadCredential= in the systemd unit)"]
    assert not report.ok
    assert KEY_A not in str(problems)
    # a marketer's check (not --strict) is not told about the operator's keys
    assert check_paths([keyless], config, now).ok


# ------------------------------------------------------------------------------ the engine


async def test_each_campaigns_requests_carry_its_accounts_key(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """Two accounts on one sandbox that knows both keys: each campaign's messages all went
    with its own account's key, sent at the same time through one engine."""
    record = tmp_path / "record.jsonl"
    sandbox = await start_sandbox(api_keys=frozenset({KEY_A, KEY_B}), record=record)
    config = load_config(two_accounts(tmp_path, sandbox.base_url), ENV)
    first = campaign_for(config, "first", 120, account="brand-a")
    second = campaign_for(config, "second", 80, account="brand-b", start=500)
    async with open_engine(config) as engine:
        assert set(engine.dispatchers) == {"brand-a", "brand-b"}
        states = await asyncio.gather(*(engine.run_campaign(c) for c in (first, second)))
    assert states == ["done", "done"]
    assert keys_by_campaign(record) == {"first": Counter({key_id(KEY_A): 120}),
                                        "second": Counter({key_id(KEY_B): 80})}


async def test_a_started_campaign_keeps_the_account_it_was_planned_for(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """An edit of a started campaign is ignored (SPEC §7), its account too: planned for
    brand-a and then edited to brand-b, every request still goes with brand-a's key."""
    record = tmp_path / "record.jsonl"
    sandbox = await start_sandbox(api_keys=frozenset({KEY_A, KEY_B}), record=record)
    config = load_config(two_accounts(tmp_path, sandbox.base_url), ENV)
    planned = campaign_for(config, "first", 60, account="brand-a")
    async with open_engine(config) as engine:
        prepared = await engine.prepare(planned)
        edited = planned.model_copy(update={"account": "brand-b"})
        assert await engine.run_campaign(edited, prepared=prepared) == "done"
    assert keys_by_campaign(record) == {"first": Counter({key_id(KEY_A): 60})}


async def test_each_account_holds_its_own_rate_in_any_second(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """brand-a at 5 requests/s and brand-b at 12, both sending one-message requests at once:
    counted per key from the sandbox's record, no window holds more than the account's own
    limit (0.8 s windows: the sandbox stamps a request when its process gets to it, as in
    test_ratelimit), while together they go faster than either alone may."""
    record = tmp_path / "record.jsonl"
    sandbox = await start_sandbox(api_keys=frozenset({KEY_A, KEY_B}), record=record)
    config = load_config(accounts_config(
        tmp_path, sandbox.base_url, {"name": "brand-a", "requests_per_second": 5},
        {"name": "brand-b", "requests_per_second": 12, "concurrency": 8},
        sending="batch_size = 1\n"), ENV)
    slow = campaign_for(config, "slow", 15, account="brand-a")
    fast = campaign_for(config, "fast", 36, account="brand-b", start=500)
    async with open_engine(config) as engine:
        assert await asyncio.gather(engine.run_campaign(slow), engine.run_campaign(fast)) == [
            "done", "done"]
    stamps: dict[str, list[float]] = {}
    for line in read_jsonl(record):
        moment = datetime.fromisoformat(line["ts"].replace("Z", "+00:00")).timestamp()
        stamps.setdefault(line["key"], []).append(moment)
    assert len(stamps[key_id(KEY_A)]) == 15 and len(stamps[key_id(KEY_B)]) == 36
    assert busiest_window(stamps[key_id(KEY_A)], 0.8) <= 5
    assert busiest_window(stamps[key_id(KEY_B)], 0.8) <= 12
    # the limits are not shared: both accounts' requests together exceed brand-a's alone
    both = stamps[key_id(KEY_A)] + stamps[key_id(KEY_B)]
    assert busiest_window(both, 1.0) > 5


async def test_a_refused_key_stops_only_its_accounts_campaigns(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """brand-b's key is revoked: its campaign fails (nothing marked), brand-a's promo and
    transactional campaigns finish; new credentials for brand-b alone resume it."""
    record = tmp_path / "record.jsonl"
    sandbox = await start_sandbox(api_keys=frozenset({KEY_A}), record=record)
    config = load_config(two_accounts(tmp_path, sandbox.base_url), ENV)
    a_first = campaign_for(config, "a-first", 60, account="brand-a")
    a_promo = campaign_for(config, "a-promo", 60, account="brand-a", start=100, kind="promo")
    b_only = campaign_for(config, "b-only", 70, account="brand-b", start=500)
    async with open_engine(config) as engine:
        states = await asyncio.gather(*(engine.run_campaign(c)
                                        for c in (a_first, a_promo, b_only)))
        assert states == ["done", "done", "failed"]
        assert engine.refused_for("brand-a") is None
        refused = engine.refused_for("brand-b")
        assert refused is not None and "CASCADE_API_KEY_BRAND_B" in str(refused)
        assert 'account "brand-b"' in str(refused) and KEY_B not in str(refused)
        sandbox.api_keys.add("brand-b-new-key")
        engine.use_credentials("brand-b", {"X-Authorization-Key": "brand-b-new-key"})
        assert await engine.run_campaign(b_only) == "done"
    keys = keys_by_campaign(record)
    assert keys["a-first"] == Counter({key_id(KEY_A): 60})
    assert keys["a-promo"] == Counter({key_id(KEY_A): 60})
    assert keys["b-only"] == Counter({key_id("brand-b-new-key"): 70})
    assert sandbox.requests_by_key[key_id(KEY_B)] >= 1  # it was tried, and refused


async def test_transactional_goes_first_within_each_account(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """Priority lanes hold per account: a transactional campaign of brand-a sent with
    brand-a's promo goes out whole with no promo batch between its first and last (one
    request at a time; first come, first served, they would alternate), while brand-b's
    promo sends beside them on its own limits."""
    record = tmp_path / "record.jsonl"
    sandbox = await start_sandbox(api_keys=frozenset({KEY_A, KEY_B}), record=record,
                                  latency_ms=20)
    config = load_config(accounts_config(
        tmp_path, sandbox.base_url, {"name": "brand-a", "requests_per_second": 50,
                                     "concurrency": 1},
        {"name": "brand-b", "requests_per_second": 50, "concurrency": 1},
        sending="batch_size = 5\n"), ENV)
    promo = campaign_for(config, "promo", 400, account="brand-a", kind="promo")
    urgent = campaign_for(config, "urgent", 100, account="brand-a", start=1000)
    other = campaign_for(config, "other", 50, account="brand-b", start=2000, kind="promo")
    async with open_engine(config) as engine:
        promo_task = asyncio.create_task(engine.run_campaign(promo))
        other_task = asyncio.create_task(engine.run_campaign(other))
        assert await engine.run_campaign(urgent) == "done"
        assert await promo_task == "done" and await other_task == "done"
    order = [line["trackinId"].rsplit("-", 1)[0] for line in read_jsonl(record)]
    first, last = order.index("urgent"), len(order) - 1 - order[::-1].index("urgent")
    between = Counter(order[first:last + 1])
    assert between["urgent"] == 100 and between["promo"] == 0, between  # no promo jumped in


# ------------------------------------------------------------------- plan, report, status


def test_plan_report_and_status_show_each_campaigns_account(tmp_path: Path) -> None:
    """``plan`` gives each campaign its account and its ETA at that account's own rate (not a
    rate shared with the other's campaigns); ``report`` and ``status`` name the account of
    each campaign the journal has. A config of one account shows no account column."""
    path = accounts_config(tmp_path, "sandbox", {"name": "brand-a", "requests_per_second": 1},
                           {"name": "brand-b", "requests_per_second": 10},
                           sending="batch_size = 10\n")
    config = load_config(path, {})
    sent = campaign_for(config, "sent-a", 5, account="brand-a")
    asyncio.run(_send(config, sent))
    folder = config.paths.campaigns
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    for cid, account, start in (("slow-a", "brand-a", 100), ("fast-b", "brand-b", 300)):
        write_audience(folder / f"{cid}.csv", 100, start=start)
        write_campaign(folder, cid, f"{cid}.csv", send_at=later,
                       extra=f'account = "{account}"\n')

    plan = {row["campaign"]: row for row in orjson.loads(
        run_ok(["plan", "--json", "--config", str(path)]))}
    assert {cid: row["account"] for cid, row in plan.items()} == {
        "sent-a": "brand-a", "slow-a": "brand-a", "fast-b": "brand-b"}
    # 100 messages: brand-a at 10 messages/s, brand-b at 100/s, each on its own
    assert plan["slow-a"]["eta"] == utc_text(later + timedelta(seconds=10))
    assert plan["fast-b"]["eta"] == utc_text(later + timedelta(seconds=1))

    report = orjson.loads(run_ok(["report", "--format", "json", "--config", str(path)]))
    assert [(row["campaign"], row["account"], row["sent"]) for row in report] == [
        ("sent-a", "brand-a", 5)]
    assert "account" in run_ok(["report", "--config", str(path)])

    asyncio.run(_prepare(config, load_campaign(folder / "fast-b.toml", config,
                                               datetime.now(UTC)).campaign))
    status = orjson.loads(run_ok(["status", "--json", "--config", str(path)]))
    assert [(row["campaign"], row["account"]) for row in status["campaigns"]] == [
        ("fast-b", "brand-b")]

    single = tmp_path / "single"
    one = accounts_config(single, "sandbox")
    campaign_for(load_config(one, {}), "only", 3, account=None)
    assert all("account" not in row for row in orjson.loads(
        run_ok(["plan", "--json", "--config", str(one)])))


def test_report_status_and_plan_show_the_account_kept_when_the_campaign_was_planned(
    tmp_path: Path,
) -> None:
    """The journal keeps each campaign's account (schema 10): once a sent campaign's file
    is edited to name another account, or removed, ``report`` and ``plan`` still show the
    account it was sent through, and ``status`` the one a planned campaign was planned for."""
    path = two_accounts(tmp_path, "sandbox")
    config = load_config(path, {})
    edited = campaign_for(config, "edited", 5, account="brand-a")
    removed = campaign_for(config, "removed", 5, account="brand-b", start=100)
    asyncio.run(_send(config, edited))
    asyncio.run(_send(config, removed))
    folder = config.paths.campaigns
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    write_audience(folder / "waiting.csv", 5, start=200)
    write_campaign(folder, "waiting", "waiting.csv", send_at=later,
                   extra='account = "brand-a"\n')
    asyncio.run(_prepare(config, load_campaign(folder / "waiting.toml", config,
                                               datetime.now(UTC)).campaign))
    for cid in ("edited", "waiting"):
        file = folder / f"{cid}.toml"
        file.write_text(file.read_text("utf-8").replace('"brand-a"', '"brand-b"'), "utf-8")
    (folder / "removed.toml").unlink()

    report = orjson.loads(run_ok(["report", "--format", "json", "--config", str(path)]))
    assert {row["campaign"]: row["account"] for row in report} == {
        "edited": "brand-a", "removed": "brand-b", "waiting": "brand-a"}
    status = orjson.loads(run_ok(["status", "--json", "--config", str(path)]))
    assert [(row["campaign"], row["account"]) for row in status["campaigns"]] == [
        ("waiting", "brand-a")]
    plan = {row["campaign"]: row["account"] for row in orjson.loads(
        run_ok(["plan", "--json", "--config", str(path)]))}
    assert (plan["edited"], plan["removed"]) == ("brand-a", "brand-b")


async def _send(config: Config, campaign: Campaign) -> None:
    async with open_engine(config) as engine:
        assert await engine.run_campaign(campaign) == "done"


async def _prepare(config: Config, campaign: Campaign | None) -> None:
    assert campaign is not None
    async with open_engine(config) as engine:
        await engine.prepare(campaign)


def run_ok(args: list[str]) -> str:
    done = run_cli(args)
    assert done.returncode in (0, 3), done.stderr  # status: 3 when no daemon leads
    return done.stdout


def test_the_example_configs_accounts_load_once_uncommented(tmp_path: Path) -> None:
    """config.example.toml's commented ``[[accounts]]``, uncommented as its comment says
    (the [sending] rate removed), is a valid config of two accounts."""
    example = (Path(__file__).resolve().parent.parent / "config.example.toml").read_text()
    lines = []
    for line in example.splitlines():
        if line.startswith("requests_per_second"):
            continue  # [sending]'s: each account has its own
        if line.startswith(("# [[accounts]]", "# name", "# requests_per_second",
                            "# concurrency = 8", "# base_url")):
            line = line.removeprefix("# ")
        lines.append(line)
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    config = load_config(path, {})
    assert [(a.name, a.requests_per_second, a.concurrency) for a in config.account_list()] == [
        ("brand-a", 50, None), ("brand-b", 100, 8)]


async def test_one_accounts_silent_api_never_holds_the_others_requests(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """brand-a's API takes every request and never answers (its two connections stay open,
    waiting): brand-b's campaign is sent whole meanwhile, through its own pool and workers,
    while brand-a's requests are still unanswered."""
    record = tmp_path / "record.jsonl"
    sandbox = await start_sandbox(api_keys=frozenset({KEY_A, KEY_B}), record=record)
    held: list[asyncio.StreamWriter] = []
    arrived = asyncio.Event()
    hung_up = [0]  # brand-a's connections the client gave up on (a timeout)

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        arrived.set()
        await reader.read()  # until the client hangs up
        hung_up[0] += 1

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        config = load_config(accounts_config(
            tmp_path, sandbox.base_url,
            {"name": "brand-a", "requests_per_second": 50, "concurrency": 2,
             "base_url": f"http://127.0.0.1:{port}"},
            {"name": "brand-b", "requests_per_second": 50, "concurrency": 2}), ENV)
        stuck = campaign_for(config, "stuck", 40, account="brand-a")
        going = campaign_for(config, "going", 60, account="brand-b", start=500)
        async with open_engine(config) as engine:
            record_a = await engine.prepare(stuck)
            run_a = engine.open_run(stuck, record_a)
            waiting = asyncio.create_task(engine.drive(run_a))
            await arrived.wait()
            assert await engine.run_campaign(going) == "done"
            assert not waiting.done()  # brand-a's requests still wait for an answer
            assert hung_up == [0]  # ... none timed out: brand-b never waited for them
            run_a.halt()
            for writer in held:  # hang up: its requests end (unanswered), the run stops
                writer.close()
            await waiting
    finally:
        silent.close()
        for writer in held:
            writer.close()
    assert keys_by_campaign(record) == {"going": Counter({key_id(KEY_B): 60})}


async def test_frequency_caps_count_per_phone_across_accounts(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """A cap of one promo a day: brand-b's promo to the phones brand-a's promo just reached
    skips them (frequency_cap); caps are the recipient's, whoever's account sends."""
    sandbox = await start_sandbox(api_keys=frozenset({KEY_A, KEY_B}))
    config = load_config(accounts_config(
        tmp_path, sandbox.base_url, {"name": "brand-a", "requests_per_second": 50},
        {"name": "brand-b", "requests_per_second": 50},
        extra='[policy]\n[[policy.caps]]\ntypes = ["promo"]\nmax = 1\ndays = 1\n'), ENV)
    first = campaign_for(config, "first-promo", 8, account="brand-a", kind="promo")
    second = campaign_for(config, "second-promo", 8, account="brand-b", kind="promo")
    async with open_engine(config) as engine:
        assert await engine.run_campaign(first) == "done"
        assert await engine.run_campaign(second) == "done"
        counts = await engine.journal.counts("second-promo")
    assert counts.get("sent", 0) == 0 and counts.get("skipped", 0) == 8
    assert len(sandbox.accepted) == 8


async def test_a_cap_naming_an_account_counts_and_stops_only_that_accounts_campaigns(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """A cap of one promo a day that names brand-a: brand-b's promo does not count towards
    it (brand-a's first promo still reaches the phones, and ``plan`` forecasts no skip before
    it), brand-a's does (its second promo skips them, as ``plan`` forecast), and brand-b's
    campaigns are never capped by it."""
    sandbox = await start_sandbox(api_keys=frozenset({KEY_A, KEY_B}))
    config = load_config(accounts_config(
        tmp_path, sandbox.base_url, {"name": "brand-a", "requests_per_second": 50},
        {"name": "brand-b", "requests_per_second": 50},
        extra='[policy]\n[[policy.caps]]\ntypes = ["promo"]\nmax = 1\ndays = 1\n'
              'accounts = ["brand-a"]\n'), ENV)
    later = datetime.now(UTC) + timedelta(hours=1)
    folder = config.paths.campaigns
    write_audience(folder / "planned-a.csv", 8)
    write_campaign(folder, "planned-a", "planned-a.csv", send_at=later, type="promo",
                   extra='account = "brand-a"\n')

    def capped_in_plan() -> int:
        rows = {row["campaign"]: row for row in plan_rows(config, datetime.now(UTC))}
        return int(rows["planned-a"]["capped"])

    async with open_engine(config) as engine:
        for name, account in (("b-first", "brand-b"), ("a-first", "brand-a")):
            campaign = campaign_for(config, name, 8, account=account, kind="promo")
            assert await engine.run_campaign(campaign) == "done"
            assert (await engine.journal.counts(name)).get("sent", 0) == 8
            # brand-b's sends leave the forecast at none; brand-a's reach the cap
            assert await asyncio.to_thread(capped_in_plan) == (8 if account == "brand-a" else 0)
        a_second = campaign_for(config, "a-second", 8, account="brand-a", kind="promo")
        b_second = campaign_for(config, "b-second", 8, account="brand-b", kind="promo")
        assert await engine.run_campaign(a_second) == "done"
        assert await engine.run_campaign(b_second) == "done"
        counts = {name: await engine.journal.counts(name) for name in ("a-second", "b-second")}
    assert counts["a-second"].get("sent", 0) == 0 and counts["a-second"]["skipped"] == 8
    assert counts["b-second"]["sent"] == 8 and counts["b-second"].get("skipped", 0) == 0
    assert len(sandbox.accepted) == 24


async def test_delivery_statuses_are_asked_with_each_campaigns_account_key(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """With several keys the sandbox shows each account only its own messages (404 to
    another's key, as the real API does): the poller asks about each campaign's messages with
    its account's key, so both campaigns' statuses come."""
    sandbox = await start_sandbox(api_keys=frozenset({KEY_A, KEY_B}), dlr_delay=0,
                                  undeliverable_rate=0, permanent_error_rate=0)
    config = load_config(two_accounts(tmp_path, sandbox.base_url), ENV)
    first = campaign_for(config, "first", 30, account="brand-a")
    second = campaign_for(config, "second", 20, account="brand-b", start=500)
    accounts = {"first": "brand-a", "second": "brand-b"}
    log = DeliveryLog(tmp_path / "status-log.jsonl", phones="masked")

    async def credentials_of(campaign_id: str) -> dict[str, str]:
        return config.account_headers(accounts[campaign_id])

    try:
        async with open_engine(config) as engine:
            for campaign in (first, second):
                assert await engine.run_campaign(campaign) == "done"
            journal = engine.journal
            while await journal.index_messages(first_poll=0):
                pass
            async with StatusClient(sandbox.base_url, lambda: config.account_headers("brand-a"),
                                    timeout=5) as client:
                poller = Poller(journal, client, Deliveries(journal, log, Metrics()),
                                PollSettings(rate=1000),
                                credentials_of=credentials_of)
                while await poller.round() == 0:
                    pass
    finally:
        log.close()
    statuses = Counter((line["campaign"], line["status"])
                       for line in read_jsonl(tmp_path / "status-log.jsonl")
                       if line.get("event") == "delivery")
    assert statuses == Counter({("first", "delivered"): 30, ("second", "delivered"): 20})
