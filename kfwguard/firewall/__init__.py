"""Everything that talks to nftables: the ban table and the baseline policy."""
