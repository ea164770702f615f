"""The shipped filters on real logs other projects wrote (bench/reallogs.py)."""

from __future__ import annotations

import pytest

from bench.reallogs import Score, measure

ROWS = measure()

# Lines we count where the other tool's expectation says "no": each a decision
# written down in tests/data/reallogs/README.md.
DECIDED_FALSE_POSITIVES = {
    # A PAM failure whose session then ends without sshd's own line: we count
    # it when the session ends; fail2ban never counts a PAM line in normal mode.
    ("fail2ban sshd", "normal", "rhost=192.0.2.112  user=root"),
    ("fail2ban sshd", "aggressive", "rhost=192.0.2.112  user=root"),
    # Aggressive mode: a valid user's failed keys, in a session that never logs
    # in, count; fail2ban counts the same attempts on the later "Too many" line.
    ("fail2ban sshd", "aggressive", "Failed publickey for git from 192.0.2.111 port 57910 "
                                    "ssh2: ECDSA"),
    ("fail2ban sshd", "aggressive", "Failed publickey for git from 192.0.2.111 port 57910 "
                                    "ssh2: RSA"),
}


class TestRealLogs:
    @pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r[0]}-{r[2]}")
    def test_no_wrong_host(self, row: tuple[str, str, str, Score]) -> None:
        """No real line is ever counted against an address other than the one its
        writer put there (or the one sshd's format guarantees, where we disagree)."""
        score = row[3]
        assert 0 == score.wrong_host, [w for w in score.wrong if "wrong host" in w]

    def test_false_positives_are_only_the_decided_ones(self) -> None:
        """Across every corpus and mode, the lines counted against the other tools'
        expectation are exactly the documented decisions."""
        found = set()
        for corpus, _, mode, score in ROWS:
            for w in score.wrong:
                if w.startswith("false positive"):
                    match = [d for d in DECIDED_FALSE_POSITIVES
                             if d[0] == corpus and d[1] == mode and d[2] in w]
                    assert match, f"{corpus} [{mode}]: {w}"
                    found.add(match[0])
                elif "got match" in w or "expected" in w:
                    pytest.fail(f"{corpus} [{mode}]: {w}")
        assert DECIDED_FALSE_POSITIVES == found

    def test_cluster_lines_never_count(self) -> None:
        """The real kubelet and etcd lines (the kubelet's own certificate problem,
        misconfigured in-cluster clients, peers) count nothing by default."""
        rows = [r for r in ROWS if r[1] in ("kubelet", "etcd")]
        assert rows and all(0 == r[3].false_pos and [] == r[3].wrong for r in rows)

    def test_recall_of_attack_lines_in_normal_mode(self) -> None:
        """Every CrowdSec brute-force line is read, and most of fail2ban's normal-mode
        lines (the rest: no address on the line, host names, pre-7.4 formats)."""
        recall = {(r[0], r[2]): r[3] for r in ROWS}
        crowdsec = recall[("CrowdSec hub ssh-bf", "normal")]
        assert crowdsec.expected == crowdsec.counted
        f2b = recall[("fail2ban sshd", "normal")]
        assert f2b.counted >= 44
