"""Single-address ban elements written over nfnetlink (kfwguard.firewall.nlsets)
against a real kernel, inside a test namespace: the same result as nft's
``add element``/``delete element`` text, refusals as one transaction."""

from __future__ import annotations

import textwrap

from tests.integration.test_bans import run_in
from tests.netns import Lab

SETUP = """
from kfwguard.durations import MAX_BAN
from kfwguard.firewall.nft import NftError
def table(name="kfwtest", size=1000, netlink=True):
    t = BanTable(Nft(), name, size); t.replace([]); t.netlink = netlink
    return t
"""


def run(lab: Lab, code: str) -> dict[str, object]:
    return run_in(lab, SETUP + textwrap.dedent(code))


class TestNetlinkElements:
    def test_same_elements_as_nft_text(self, lab: Lab) -> None:
        """Adds of IPv4 and IPv6 addresses (text and objects) give the kernel
        the elements and timeouts nft's text gives, the longest ban the
        config allows included (one year: nft's text needed whole seconds for
        anything over 27.8 h; the kernel takes milliseconds)."""
        r = run(lab, """
            els = [Element("192.0.2.1", 100.0), Element(ip("2001:db8::7"), 200.0),
                   Element("::ffff:198.51.100.9", 300.0), Element("192.0.2.2", MAX_BAN)]
            a, b = table("kfwnl"), table("kfwtx", netlink=False)
            a.add(els); b.add(els)
            print(json.dumps(dict(nl=a.list(), tx=b.list(), still=a.netlink)))
        """)
        nl, tx = r["nl"], r["tx"]
        assert isinstance(nl, dict) and isinstance(tx, dict)
        assert set(nl) == set(tx) == {"192.0.2.1", "2001:db8::7", "::ffff:198.51.100.9",
                                       "192.0.2.2"}
        for k in nl:
            assert abs(nl[k] - tx[k]) <= 2.0, (k, nl[k], tx[k])
        assert nl["192.0.2.2"] > 365 * 86400 - 60
        assert r["still"] is True

    def test_readd_as_nft_refresh_sets_time_remove_tolerates_missing(self, lab: Lab) -> None:
        """Adding a present element does what nft's text does on this kernel
        (before Linux 6.10 it kept the old timeout, after it takes the new
        one); a refresh sets the new timeout either way, a shorter one too;
        removing an absent element is no error."""
        r = run(lab, """
            out = {}
            for name, nl in (("nl", True), ("tx", False)):
                t = table(netlink=nl)
                t.add([Element("192.0.2.5", 100.0)])
                t.add([Element("192.0.2.5", 5000.0)])
                out[name] = t.list()["192.0.2.5"]
                t.add([], [Element("192.0.2.5", 50.0)])
                out[name + "_refreshed"] = t.list()["192.0.2.5"]
                t.remove(["192.0.2.5", "192.0.2.77", "2001:db8::99"])
                out[name + "_left"] = t.list()
            print(json.dumps(out))
        """)
        assert abs(r["nl"] - r["tx"]) <= 2.0  # type: ignore[operator]
        assert 45 <= r["nl_refreshed"] <= 50  # type: ignore[operator]
        assert 45 <= r["tx_refreshed"] <= 50  # type: ignore[operator]
        assert r["nl_left"] == r["tx_left"] == {}

    def test_full_set_refuses_the_whole_batch_in_words(self, lab: Lab) -> None:
        """A batch one element too large for the set is refused whole (nothing
        of it in the kernel), with the refusal an operator can act on; the
        same add split in two lets the first part in."""
        r = run(lab, """
            t = table(size=10)  # the sentinel takes one place
            els = [Element(f"192.0.2.{i}", 600.0) for i in range(1, 11)]
            try:
                t.add(els); why = None
            except NftError as exc:
                why = t.refusal_text("192.0.2.1", exc)
            after = len(t.list())
            t.add(els[:9])
            print(json.dumps(dict(why=why, after=after, then=len(t.list()), nl=t.netlink)))
        """)
        assert r["after"] == 0 and r["then"] == 9 and r["nl"] is True
        assert "is full" in str(r["why"]) and "set_size = 10" in str(r["why"])

    def test_missing_table_and_bad_text_are_nft_errors(self, lab: Lab) -> None:
        """No table: NftError (the kernel sync rebuilds it), netlink kept. A
        string that is not an address goes to nft, which says why."""
        r = run(lab, """
            t = BanTable(Nft(), "kfwnone", 100)
            out = {}
            try:
                t.add([Element("192.0.2.1", 60.0)]); out["missing"] = None
            except NftError as exc:
                out["missing"] = str(exc)
            u = table()
            try:
                u.add([Element("192.0.2.300", 60.0)]); out["bad"] = None
            except NftError as exc:
                out["bad"] = str(exc)[:200]
            out["nl"] = [t.netlink, u.netlink]
            print(json.dumps(out))
        """)
        assert "No such file or directory" in str(r["missing"])
        assert r["bad"] is not None
        assert r["nl"] == [True, True]

    def test_cidrs_and_addresses_together_go_through_nft(self, lab: Lab) -> None:
        """A change with a CIDR piece among single addresses is one nft
        transaction, as before: both kinds end up in their sets."""
        r = run(lab, """
            t = table()
            t.update([], [Element("192.0.2.8", 60.0), Element("198.51.100.0/24", 60.0)])
            print(json.dumps(dict(left=sorted(t.list()))))
        """)
        assert r["left"] == ["192.0.2.8", "198.51.100.0/24"]

    def test_batch_of_hundreds_of_messages_answered_in_full(self, lab: Lab) -> None:
        """A batch of ~290 messages (600k addresses: the whole table at once
        after a refusal, say) gets every ack back (the kernel queues them all
        before one is read; a default receive buffer held ~230) and is in
        force; the same batch into a set too small for it is refused in
        words, by netlink itself: nft is not asked (an overflowed answer
        would have hidden the refusal and sent it all again as text)."""
        r = run(lab, """
            import ipaddress
            from bench.nlsets import SetQuery
            class NoNft:
                def run(self, script):
                    raise AssertionError("fell back to nft")
            els = [Element(str(ipaddress.IPv4Address(0x0A000000 + i)), 3600.0)
                   for i in range(600_000)]
            big = table("kfwbig", size=700_000)
            big.nft = NoNft()
            big.add(els)
            present = SetQuery("kfwbig").all_present(
                "ban_v4", [ipaddress.IPv4Address(e.target).packed for e in els])
            small = table("kfwsmall", size=300_000)
            small.nft = NoNft()
            try:
                small.add(els); why = None
            except NftError as exc:
                why = small.refusal_text("10.0.0.1", exc)
            print(json.dumps(dict(present=present, why=why, nl=[big.netlink, small.netlink])))
        """)
        assert r["present"] is True
        assert "is full" in str(r["why"])
        assert r["nl"] == [True, True]
