"""Alerts: message formats, URL secrecy, the durable outbox, delivery with
retries and aggregation, against real HTTP receivers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kfwguard.alerts.alertmanager import AlertmanagerActionConfig, AlertmanagerSender, label_name
from kfwguard.alerts.base import (
    AlertError,
    PermanentAlertError,
    SecretURL,
    describe_error,
    load_format,
    redact,
)
from kfwguard.alerts.events import (
    AlertEvent,
    BadPayload,
    Ban,
    BaselineAgrees,
    BaselineDiffers,
    Drift,
    Unban,
    from_payload,
    payload,
)
from kfwguard.alerts.outbox import AlertWorker, Outbox
from kfwguard.alerts.service import AlertService
from kfwguard.alerts.webhook import WebhookActionConfig, WebhookSender, summarise
from kfwguard.config import parse_config
from kfwguard.store import BanRow, Store
from tests.conftest import eventually
from tests.integration.operator_fixtures import Receiver

TOKEN = "T0KEN-abcdef123456"
NOW = 1_700_000_000.0


def row(target: str, jail: str = "sshd", seconds: float = 3600.0,
        reason: str = "5 failures in 600s (sshd/password)") -> BanRow:
    return BanRow(target, jail, reason, NOW, NOW + seconds, 1)


def event(kind: type[Ban] | type[Unban], r: BanRow, at: float = NOW) -> Ban | Unban:
    return kind(r.target, r.jail, r.reason, r.banned_at, r.expires_at, r.offence, "node-1",
                at, r.simulated)


def bans(n: int, jail: str = "sshd") -> list[AlertEvent]:
    return [event(Ban, row(f"192.0.2.{i + 1}", jail)) for i in range(n)]



@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    try:
        yield r
    finally:
        await r.stop()


def webhook(url: str, fmt: str = "slack", aggregate: float = 0.0) -> WebhookActionConfig:
    return WebhookActionConfig.model_validate(
        {"type": "webhook", "url": url, "format": fmt, "aggregate": aggregate, "timeout": 5})


class TestSummarise:
    def test_burst_is_one_line_per_jail(self) -> None:
        """37 bans in one jail read as one line: a count, the first ten, '… and 27 more'."""
        text = summarise(bans(37), load_format("slack"), "node-1")
        assert 1 == len(text.splitlines())
        assert "37 addresses banned in jail *sshd* on node-1 for 1h" in text
        assert "`192.0.2.10`" in text and "`192.0.2.11`" not in text
        assert text.endswith("… and 27 more — 5 failures in 600s (sshd/password)")

    def test_mixed_events_get_a_header(self) -> None:
        """Bans in two jails and an unban: a header with totals, then a line for each."""
        events = [*bans(2), *bans(1, "kubelet"),
                  event(Unban, row("198.51.100.1"))]
        lines = summarise(events, load_format("json"), "node-1").splitlines()
        assert [
            "kfwguard on node-1: 3 banned, 1 unbanned",
            "2 addresses banned in jail sshd on node-1 for 1h: 192.0.2.1, 192.0.2.2 "
            "(5 failures in 600s (sshd/password))",
            "1 address banned in jail kubelet on node-1 for 1h: 192.0.2.1 "
            "(5 failures in 600s (sshd/password))",
            "1 address unbanned in jail sshd on node-1: 198.51.100.1",
        ] == lines


class TestSecrets:
    def test_redact_removes_url_and_token(self) -> None:
        """The URL, its path and its token are removed, the host is kept."""
        url = f"https://chat.example/hooks/{TOKEN}?key=s3cr3tkey"
        text = f"Cannot connect to {url} (hooks/{TOKEN}) key=s3cr3tkey"
        out = redact(text, url)
        assert TOKEN not in out and "s3cr3tkey" not in out
        assert "<redacted>" in out

    def test_aiohttp_errors_are_redacted(self) -> None:
        """aiohttp's exceptions carry the URL; describe_error strips it."""
        url = f"http://127.0.0.1:9/hooks/{TOKEN}"
        exc = aiohttp.InvalidURL(url)
        assert TOKEN not in describe_error(exc, url)
        assert describe_error(exc, url).startswith("InvalidURL")

    def test_url_from_file_and_env(self, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """url_file is read (stripped) when needed; a missing env var is a retryable error."""
        f = tmp_path / "url"
        f.write_text(f"https://chat.example/hooks/{TOKEN}\n")
        secret = SecretURL(None, f, None)
        assert f"https://chat.example/hooks/{TOKEN}" == secret.get()
        assert TOKEN not in repr(secret)
        with pytest.raises(AlertError, match="KFW_TEST_URL is not set"):
            SecretURL(None, None, "KFW_TEST_URL").get()
        monkeypatch.setenv("KFW_TEST_URL", "http://x.example/h")
        assert "http://x.example/h" == SecretURL(None, None, "KFW_TEST_URL").get()


class TestWebhookSender:
    async def test_slack_message(self, receiver: Receiver) -> None:
        """The slack format posts {"text": ...} to the configured URL."""
        sender = WebhookSender("chat", webhook(receiver.url()), "node-1")
        try:
            await sender.send(bans(3))
        finally:
            await sender.close()
        [(path, body)] = receiver.posts
        assert f"/hooks/{TOKEN}" == path
        assert ["text"] == list(body)
        assert body["text"].startswith(":no_entry: 3 addresses banned in jail *sshd*")

    async def test_json_message_carries_every_event(self, receiver: Receiver) -> None:
        """The json format adds the node and every event, untruncated."""
        sender = WebhookSender("chat", webhook(receiver.url(), "json"), "node-1")
        try:
            await sender.send(bans(25))
        finally:
            await sender.close()
        body = receiver.posts[0][1]
        assert "node-1" == body["node"]
        assert 25 == len(body["events"])
        assert "… and 15 more" in body["text"]

    async def test_errors_retry_or_drop(self, receiver: Receiver) -> None:
        """5xx and 429 are retried; other 4xx are permanent."""
        receiver.statuses = [500, 429, 400]
        sender = WebhookSender("chat", webhook(receiver.url()), "node-1")
        try:
            for _ in range(2):
                with pytest.raises(AlertError) as exc:
                    await sender.send(bans(1))
                assert not isinstance(exc.value, PermanentAlertError)
            with pytest.raises(PermanentAlertError, match="HTTP 400"):
                await sender.send(bans(1))
        finally:
            await sender.close()

    async def test_unreachable_receiver_error_has_no_token(self) -> None:
        """Connection errors are retryable and never name the URL's secret."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        sender = WebhookSender("chat", webhook(f"http://127.0.0.1:{port}/hooks/{TOKEN}"), "n")
        try:
            with pytest.raises(AlertError) as exc:
                await sender.send(bans(1))
        finally:
            await sender.close()
        assert TOKEN not in str(exc.value)


class TestAlertmanagerSender:
    def cfg(self, url: str = "http://am.example:9093/",
            labels: dict[str, str] | None = None) -> AlertmanagerActionConfig:
        return AlertmanagerActionConfig.model_validate(
            {"type": "alertmanager", "url": url, "labels": labels or {}})

    def test_alert_for_ban(self) -> None:
        """One alert per ban: labels, annotations, startsAt = ban, endsAt = expiry."""
        s = AlertmanagerSender("am", self.cfg(labels={"severity": "warning",
                                                      "jail": "spoof", "team-x": "sec"}),
                               "node-1")
        [alert] = s.body([event(Ban, row("192.0.2.7"))])
        assert {"alertname": "KfwguardBan", "jail": "sshd", "node": "node-1",
                "address": "192.0.2.7", "severity": "warning", "team_x": "sec"} \
            == alert["labels"]
        assert "192.0.2.7 banned in jail sshd on node-1 for 1h" == \
            alert["annotations"]["summary"]
        assert "1" == alert["annotations"]["offence"]
        assert "2023-11-14T22:13:20.000Z" == alert["startsAt"]
        assert "2023-11-14T23:13:20.000Z" == alert["endsAt"]

    def test_unban_resolves_now(self) -> None:
        """An unban re-sends the alert with endsAt = the unban time; the last event wins."""
        s = AlertmanagerSender("am", self.cfg(), "node-1")
        events = [event(Ban, row("192.0.2.7")),
                  event(Unban, row("192.0.2.7"), NOW + 60)]
        [alert] = s.body(events)
        assert "2023-11-14T22:14:20.000Z" == alert["endsAt"]

    def test_label_names_made_valid(self) -> None:
        """Label names Alertmanager would refuse are rewritten, not sent."""
        assert ["team_x", "_1a", "ok_name"] == [label_name(n) for n in
                                                ("team-x", "1a", "ok_name")]

    async def test_posts_batch_to_v2_api(self, receiver: Receiver) -> None:
        """Many alerts go in one POST to <url>/api/v2/alerts."""
        s = AlertmanagerSender("am", self.cfg(receiver.url("/")), "node-1")
        try:
            await s.send(bans(40))
        finally:
            await s.close()
        [(path, body)] = receiver.posts
        assert "/api/v2/alerts" == path
        assert 40 == len(body)


class TestOutbox:
    def test_durable_across_reopen(self, tmp_path: Path) -> None:
        """Queued events sit in SQLite until done, across a restart."""
        store = Store.in_dir(tmp_path)
        box = Outbox(store, clock=lambda: NOW)
        box.put([("chat", e) for e in bans(3)])
        box.spool_now()
        store.close()
        store = Store.in_dir(tmp_path)
        box = Outbox(store, clock=lambda: NOW)
        due = box.due("chat", NOW, 100)
        assert ["192.0.2.1", "192.0.2.2", "192.0.2.3"] == [r.payload["target"] for r in due]
        box.retry("chat", [due[0].id], NOW + 60, "HTTP 500")
        box.done("chat", [due[1].id])
        assert ["192.0.2.3"] == [r.payload["target"] for r in box.due("chat", NOW, 100)]
        assert 2 == box.size("chat")
        store.close()

    def test_memory_without_store(self) -> None:
        """Without a state DB the queue is in memory, bounded: the oldest go first."""
        box = Outbox(None, clock=lambda: NOW, max_memory=5)
        box.put([("chat", e) for e in bans(8)])
        box.spool_now()
        due = box.due("chat", NOW, 100)
        assert ["192.0.2.4", "192.0.2.5", "192.0.2.6", "192.0.2.7", "192.0.2.8"] == \
            [r.payload["target"] for r in due]
        assert 3 == box.dropped
        box.retry("chat", [due[0].id], NOW + 60, "x")
        box.done("chat", [due[1].id])
        assert 3 == len(box.due("chat", NOW, 100))
        assert 4 == box.size("chat")

    def test_falls_back_to_memory_when_store_fails(self, tmp_path: Path) -> None:
        """A store that cannot be written does not lose the events."""
        store = Store.in_dir(tmp_path)
        box = Outbox(store, clock=lambda: NOW)
        store.close()  # every query now fails
        box.put([("chat", e) for e in bans(2)])
        box.spool_now()
        assert 2 == len(box.due("chat", NOW, 100))


class TestAlertWorker:
    async def run_worker(self, worker: AlertWorker,
                         until: Callable[[], bool]) -> None:
        task = asyncio.create_task(worker.run())
        try:
            await eventually(until)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await worker.sender.close()

    async def test_burst_becomes_one_message(self, receiver: Receiver) -> None:
        """All events queued within the aggregate window are sent as ONE message."""
        box = Outbox(None)
        worker = AlertWorker(WebhookSender("chat", webhook(receiver.url()), "node-1"), box,
                             aggregate=0.3)
        box.put([("chat", e) for e in bans(20)])
        box.spool_now()
        box.put([("chat", e) for e in bans(37)[20:]])
        box.spool_now()
        await self.run_worker(worker, lambda: box.size("chat") == 0)
        assert 1 == len(receiver.posts)
        assert "37 addresses banned" in receiver.posts[0][1]["text"]
        assert (37, 1) == (worker.sent, worker.messages)

    async def test_failing_receiver_is_retried(self, receiver: Receiver) -> None:
        """Failed deliveries are retried with backoff until the receiver takes them."""
        receiver.statuses = [500, 503]
        box = Outbox(None)
        worker = AlertWorker(WebhookSender("chat", webhook(receiver.url()), "node-1"), box,
                             backoff_base=0.01)
        box.put([("chat", e) for e in bans(2)])
        box.spool_now()
        # The receiver records the POST before the worker has read the answer:
        # wait for the outbox to be cleared too.
        await self.run_worker(worker, lambda: bool(receiver.posts) and not box.size("chat"))
        assert 2 == worker.failures
        assert 0 == box.size("chat")

    async def test_receiver_down_then_up(self, tmp_path: Path) -> None:
        """Events queued while the receiver is down are delivered once it is back."""
        down = await Receiver().start()
        port = down.port
        await down.stop()
        store = Store.in_dir(tmp_path)
        box = Outbox(store)
        worker = AlertWorker(
            WebhookSender("chat", webhook(f"http://127.0.0.1:{port}/hooks/{TOKEN}"), "n"),
            box, backoff_base=0.05, backoff_cap=0.2)
        box.put([("chat", e) for e in bans(3)])
        box.spool_now()
        task = asyncio.create_task(worker.run())
        up = Receiver()
        try:
            await eventually(lambda: worker.failures >= 2)
            assert worker.last_error is not None and TOKEN not in worker.last_error
            assert 3 == box.size("chat")
            up.port = port
            await up.start()
            await eventually(lambda: box.size("chat") == 0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await worker.sender.close()
            await up.stop()
            store.close()
        assert 3 == len(up.posts[0][1]["text"].split(", "))

    async def test_refused_message_dropped(self, receiver: Receiver) -> None:
        """A message the receiver refuses (400) is dropped and counted, not retried forever."""
        receiver.statuses = [400]
        box = Outbox(None)
        worker = AlertWorker(WebhookSender("chat", webhook(receiver.url()), "node-1"), box)
        box.put([("chat", e) for e in bans(2)])
        box.spool_now()
        await self.run_worker(worker, lambda: box.size("chat") == 0)
        assert (1, 2, []) == (worker.failures, worker.dropped, receiver.posts)

    def test_backoff_doubles_to_cap(self) -> None:
        """Backoff is exponential from the base and capped."""
        w = AlertWorker(WebhookSender("c", webhook("http://x.example/h"), "n"), Outbox(None),
                        backoff_base=1.0, backoff_cap=300.0)
        assert [1.0, 2.0, 4.0, 256.0, 300.0, 300.0] == [w.backoff(n) for n in
                                                        (0, 1, 2, 8, 9, 100)]


class TestAlertService:
    def service(self) -> AlertService:
        cfg = parse_config("""
sources: [{name: auth, type: file, path: /dev/null}]
actions:
  chat: {type: webhook, url: "http://chat.example/h"}
  am: {type: alertmanager, url: "http://127.0.0.1:9093"}
jails:
  - {name: sshd, source: auth, filter: sshd, actions: [chat]}
  - {name: quiet, source: auth, filter: sshd}
node_name: node-7
""")
        return AlertService(cfg, None, clock=lambda: NOW)

    def queued(self, svc: AlertService) -> list[tuple[str, str, str]]:
        svc.outbox.spool_now()
        out = []
        for a in ("chat", "am"):
            for r in svc.outbox.due(a, NOW + 1, 100):
                ev = from_payload(r.payload)
                out.append((a, ev.kind, ev.table if isinstance(ev, Drift) else ev.target))
        return out

    def test_routing(self) -> None:
        """Jails alert their own actions; manual bans go to every action; silent jails none."""
        svc = self.service()
        svc.on_ban([row("192.0.2.1", "sshd"), row("192.0.2.2", "quiet"),
                    row("192.0.2.3", "manual")])
        assert [("chat", "ban", "192.0.2.1"), ("chat", "ban", "192.0.2.3"),
                ("am", "ban", "192.0.2.3")] == self.queued(svc)
        assert "node-7" == svc.outbox.due("chat", NOW + 1, 1)[0].payload["node"]

    def test_expiry_not_alerted(self) -> None:
        """An early unban is queued; a ban that simply expired is not."""
        svc = self.service()
        svc.on_unban([row("192.0.2.1", "sshd"), row("192.0.2.2", "sshd", seconds=-1)])
        assert [("chat", "unban", "192.0.2.1")] == self.queued(svc)


    async def test_reload_right_after_a_ban_ends(self) -> None:
        """A reload while a worker's wake fires (a ban queued just before) ends:
        the cancel Python 3.11's wait_for can lose is made again."""
        svc = self.service()
        await svc.start()
        try:
            for i in range(20):  # the race is narrow: give it many chances
                svc.on_ban([row("192.0.2.1", "sshd")])
                # A new node name: every worker restarts.
                renamed = svc.cfg.model_copy(update={"node_name": f"node-{i}"})
                await asyncio.wait_for(svc.reload(renamed), 10)
        finally:
            await asyncio.wait_for(svc.stop(), 10)

    async def test_reload_restarts_only_changed_actions(self) -> None:
        """A reload restarts the worker of a changed action only: an unchanged
        action's worker runs on, the same one, with its counters."""
        svc = self.service()
        await svc.start()
        try:
            chat, am = svc.workers["chat"], svc.workers["am"]
            chat.sent = am.sent = 3
            actions = {**svc.cfg.actions,
                       "am": svc.cfg.actions["am"].model_copy(
                           update={"url": "http://127.0.0.1:9094"})}
            await asyncio.wait_for(svc.reload(svc.cfg.model_copy(update={"actions": actions})),
                                   10)
            assert svc.workers["chat"] is chat and svc.workers["am"] is not am
            assert (3, 3) == (svc.workers["chat"].sent, svc.workers["am"].sent)
            assert "http://127.0.0.1:9094" == str(svc.cfg.actions["am"].url)
        finally:
            await asyncio.wait_for(svc.stop(), 10)

    def test_drift_goes_to_every_action(self) -> None:
        """A healed baseline drift is queued for every configured action."""
        svc = self.service()
        svc.on_drift("kfwguard_baseline", "chain input was flushed")
        assert [("chat", "drift", "kfwguard_baseline"),
                ("am", "drift", "kfwguard_baseline")] == self.queued(svc)


class TestSimulatedMarking:
    def test_simulated_ban_marked_in_chat_and_alertmanager(self) -> None:
        """An observe-mode ban is marked in the event, the chat line and as an
        Alertmanager label and summary; an enforced one is not."""
        sim = event(Ban, row("192.0.2.9")._replace(simulated=True))
        real = event(Ban, row("192.0.2.8"))
        assert (True, False) == (sim.simulated, real.simulated)
        lines = summarise([sim, real], load_format("slack"), "node-1").splitlines()
        [sim_line] = [x for x in lines if "192.0.2.9" in x]
        [real_line] = [x for x in lines if "192.0.2.8" in x]
        assert sim_line.startswith("[simulated, not enforced] ")
        assert "simulated" not in real_line
        am = AlertmanagerSender("am", AlertmanagerActionConfig.model_validate(
            {"type": "alertmanager", "url": "http://am.example"}), "node-1")
        a_sim, a_real = am.body([sim, real])
        assert ("true", None) == (a_sim["labels"].get("simulated"),
                                  a_real["labels"].get("simulated"))
        assert a_sim["annotations"]["summary"].startswith("[simulated, not enforced]")


class TestDriftMessages:
    def test_chat_and_alertmanager_render_drift(self) -> None:
        """Drift renders as its own chat line and as a KfwguardBaselineDrift alert
        naming the table and what had changed."""
        ev = Drift("kfwguard_baseline", "rule edited in chain input", "node-1", NOW)
        text = summarise([ev], load_format("slack"), "node-1")
        assert ":warning: baseline table *`kfwguard_baseline`* on node-1: " \
               "rule edited in chain input" == text
        am = AlertmanagerSender("am", AlertmanagerActionConfig.model_validate(
            {"type": "alertmanager", "url": "http://am.example"}), "node-1")
        [alert] = am.body([ev])
        assert ("KfwguardBaselineDrift", "kfwguard_baseline") == \
            (alert["labels"]["alertname"], alert["labels"]["address"])
        assert "rule edited in chain input" in alert["annotations"]["summary"]


    def test_drift_and_failure_in_one_message_both_shown(self) -> None:
        """A healed drift and a failure to keep the baseline in force that land in one
        message (a loaded node, or the aggregate window) are two lines: the failure is
        not folded into the drift's line, where only the most common reason shows."""
        healed = Drift("kfwguard_baseline", "it had drifted (table replaced) and was put back",
                       "node-1", NOW)
        failing = Drift("kfwguard_baseline", "cannot keep the baseline in force: NftError: "
                        "Operation not permitted", "node-1", NOW)
        for fmt in ("slack", "json"):
            text = summarise([healed, failing, healed], load_format(fmt), "node-1")
            lines = text.splitlines()
            assert 2 == sum("kfwguard_baseline" in x for x in lines), text
            assert "table replaced" in text and "cannot keep the baseline in force" in text


class TestTypedEvents:
    def test_payload_round_trip(self) -> None:
        """Every event kind comes back from its stored payload as the same typed event."""
        events: list[AlertEvent] = [*bans(1), event(Unban, row("192.0.2.5")),
                                    Drift("kfwguard_baseline", "chain flushed", "node-1", NOW),
                                    BaselineDiffers("node-b", "differs", "node-1", NOW),
                                    BaselineAgrees("node-b", "agrees", "node-1", NOW)]
        assert events == [from_payload(payload(e)) for e in events]

    def test_drift_queued_by_an_older_version_is_read(self) -> None:
        """A drift payload stored as the old fake ban (target = the table) is read as Drift."""
        old = {"event": "drift", "target": "kfwguard_baseline", "jail": "baseline",
               "reason": "rule edited", "banned_at": NOW, "expires_at": NOW + 900,
               "offence": 1, "node": "node-1", "at": NOW}
        assert Drift("kfwguard_baseline", "rule edited", "node-1", NOW) == from_payload(old)

    @pytest.mark.parametrize("damage", [{"banned_at": "soon"}, {"offence": None},
                                        {"target": 7}, {"simulated": "yes"}, {"jail": None}])
    def test_damaged_payload_is_refused(self, damage: dict[str, Any]) -> None:
        """A stored ban whose fields have the wrong types is BadPayload, not an event
        that breaks the sender later."""
        with pytest.raises(BadPayload):
            from_payload({**payload(bans(1)[0]), **damage})

    async def test_unreadable_payload_dropped_and_counted(self, tmp_path: Path,
                                                          receiver: Receiver) -> None:
        """A stored event this version cannot read (an unknown kind) is dropped and
        counted; the readable ones beside it are delivered."""
        store = Store.in_dir(tmp_path)
        try:
            box = Outbox(store)
            store.outbox_add([("chat", {"event": "from-the-future", "x": 1})], time.time())
            box.put([("chat", e) for e in bans(2)])
            box.spool_now()
            worker = AlertWorker(WebhookSender("chat", webhook(receiver.url()), "node-1"), box)
            task = asyncio.create_task(worker.run())
            try:
                await eventually(lambda: box.size("chat") == 0)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await worker.sender.close()
        finally:
            store.close()
        assert (1, 2) == (worker.dropped, worker.sent)
        assert "2 addresses banned" in receiver.posts[0][1]["text"]


class TestClusterBaselineMessages:
    def test_chat_and_alertmanager_render_the_cluster_baseline(self) -> None:
        """A node whose baseline is not the cluster's is one chat line naming it and a
        KfwguardClusterBaselineDiffers alert (address = that node); its agreement
        resolves the alert at once."""
        differs = BaselineDiffers("node-b", "policy differs from 2 of 3 nodes", "node-a", NOW)
        agrees = BaselineAgrees("node-b", "agrees again", "node-a", NOW + 60)
        assert ":warning: node *`node-b`* runs a baseline that is not the cluster's (seen " \
               "from node-1): policy differs from 2 of 3 nodes" == \
            summarise([differs], load_format("slack"), "node-1")
        am = AlertmanagerSender("am", AlertmanagerActionConfig.model_validate(
            {"type": "alertmanager", "url": "http://am.example"}), "node-1")
        [fire] = am.body([differs])
        assert {"alertname": "KfwguardClusterBaselineDiffers", "jail": "cluster",
                "node": "node-a", "address": "node-b"} == fire["labels"]
        assert ("2023-11-14T22:13:20.000Z", "2023-11-15T22:13:20.000Z") == \
            (fire["startsAt"], fire["endsAt"])
        [resolve] = am.body([differs, agrees])
        assert "2023-11-14T22:14:20.000Z" == resolve["endsAt"]

    def test_goes_to_every_action(self) -> None:
        """The cluster baseline alert is queued for every configured action, typed."""
        svc = TestAlertService().service()
        svc.on_cluster_baseline("node-b", True, "policy differs")
        svc.outbox.spool_now()
        queued = [from_payload(r.payload) for a in ("chat", "am")
                  for r in svc.outbox.due(a, NOW + 1, 100)]
        assert [BaselineDiffers("node-b", "policy differs", "node-7", NOW)] * 2 == queued
