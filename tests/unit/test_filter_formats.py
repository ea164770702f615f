"""A filter format is one module: its spec model (``format: Literal[tag]``,
unknown keys refused) whose ``build`` compiles it, registered with
``@register_format``. The loader picks the model by the file's ``format:``
without a list of formats of its own; this module defines a format of its own
and the loader takes it."""

from __future__ import annotations

from typing import Literal

import pytest

from kfwguard.matching import FilterError, parse_filter
from kfwguard.matching.spec import Lines, Networks, formats, register_format
from kfwguard.matching.textfilter import TextFilter, TextFilterSpec
from kfwguard.model import Record

NOW = 1_800_000_000.0


@register_format
class SshdOnlySpec(TextFilterSpec):
    """A text filter whose lines must carry sshd's syslog tag: a format made
    of an existing one, to show the registry, not to ship."""

    format: Literal["sshd-only"]  # type: ignore[assignment]

    def build(self, name: str, path: str, lines: Lines, accelerate: bool = True,
              networks: Networks | None = None, mode: str | None = None) -> TextFilter:
        spec = TextFilterSpec(description=self.description, prefix=["syslog"],
                              programs=["sshd"], rules=self.rules)
        return TextFilter(name, spec, path, lines, accelerate, networks, mode)


FILTER = """
format: sshd-only
rules:
  - name: failed
    regex: '^Failed password for \\S+ from <HOST> port \\d+ ssh2$'
"""


def rec(line: str) -> Record:
    return Record(line, NOW, "0")


class TestFormats:
    def test_builtin_formats_are_registered(self) -> None:
        """text and json are found through the registry, text first."""
        assert ["text", "json"] == list(formats())[:2]

    def test_a_format_in_one_module_is_loaded_by_its_tag(self) -> None:
        """A file saying ``format: sshd-only`` is validated by this module's model
        and compiled by its build."""
        flt = parse_filter(FILTER, "mine")
        line = "Nov 26 04:57:45 h {}[1]: Failed password for root from 203.0.113.5 port 2 ssh2"
        hit = flt.match(rec(line.format("sshd")), NOW)
        assert hit is not None and "203.0.113.5" == str(hit.host)
        assert flt.match(rec(line.format("logger")), NOW) is None

    def test_its_unknown_keys_and_the_unknown_tags_are_refused(self) -> None:
        """Unknown keys are refused by the new model; an unknown tag names every
        registered format."""
        with pytest.raises(FilterError, match="line 2: colour: unknown key"):
            parse_filter("format: sshd-only\ncolour: red\n" + FILTER.split("\n", 2)[2], "x")
        with pytest.raises(FilterError, match="'text' or 'json' or 'sshd-only', not 'xml'"):
            parse_filter("format: xml\nrules: []\n", "x")

    def test_a_second_model_for_a_taken_tag_is_refused(self) -> None:
        """Two formats cannot claim one tag."""
        class Impostor(TextFilterSpec):
            format: Literal["text"] = "text"

        with pytest.raises(ValueError, match="'text' is already TextFilterSpec"):
            register_format(Impostor)
