"""Credentials that change while the daemon runs: re-read on SIGHUP (the API key, after a 401)
and when a webhook comes with a token that is not ours (the webhook token was rotated).

The daemon's config is otherwise fixed at start; only its credentials are replaced here, and
every new secret is added to the delivery log's redaction before it is used.
"""

from __future__ import annotations

import os

from scheduler.config import SANDBOX, Config, Credentials, load_config, load_credentials
from scheduler.errors import UserError
from scheduler.oplog import get_logger
from scheduler.service import Runtime


class Rotation:
    """Holds the daemon's current config, and swaps in new credentials when they change."""

    def __init__(self, config: Config, runtime: Runtime) -> None:
        self.config = config
        self._runtime = runtime
        self.log = get_logger("daemon")

    def reload(self) -> None:
        """SIGHUP: re-read the config's credentials; an account's new API key (or the same
        one after a 401) lets that account's requests go again. The accounts themselves are
        the ones the daemon started with (a new ``[[accounts]]`` entry needs a restart)."""
        try:
            fresh = load_config(self.config.source)
        except UserError as exc:
            self.log.error("config_invalid", error=str(exc))
            return
        engine = self._runtime.engine
        old = self.config
        self._take_webhook_token(fresh.credentials)
        changed = [name for name in old.account_names
                   if fresh.account_headers(name) != old.account_headers(name)
                   or engine.refused_for(name) is not None]
        if not changed and fresh.credentials.headers() == old.credentials.headers():
            return
        credentials = fresh.credentials.model_copy(
            update={"webhook_token": self.config.credentials.webhook_token})
        self.config = self.config.model_copy(update={"credentials": credentials})
        self._runtime.log.add_secrets(credentials.secrets())
        for name in changed:
            # each account's own: a reload with one brand's new key resumes only its
            # campaigns; the embedded sandbox takes any key, its client keeps the one it had
            sandbox = self.config.account(name).base_url == SANDBOX
            engine.use_credentials(name, None if sandbox else self.config.account_headers(name))

    def webhook_token(self) -> str | None:
        """The webhook token requests must carry now."""
        token = self.config.credentials.webhook_token
        return None if token is None else token.get_secret_value()

    def refresh_webhook_token(self) -> bool:
        """A request came with a token that is not ours: maybe the credential was rotated.
        Re-read it (the webhook server asks at most every few seconds); True if it changed."""
        try:
            fresh = load_credentials(os.environ)
        except UserError as exc:
            self.log.error("config_invalid", error=str(exc))
            return False
        return self._take_webhook_token(fresh)

    def _take_webhook_token(self, fresh: Credentials) -> bool:
        """Use ``fresh``'s webhook token from now on, if it is another one (the old one is
        refused from then on); True if it changed."""
        token = fresh.webhook_token
        if token is None or token == self.config.credentials.webhook_token:
            return False
        credentials = self.config.credentials.model_copy(update={"webhook_token": token})
        self.config = self.config.model_copy(update={"credentials": credentials})
        self._runtime.log.add_secrets(credentials.secrets())
        self.log.info("webhook_token_changed")
        return True
