"""Text a site controls is shown as sent, never as terminal commands or Markdown, and leaves without paths."""

from __future__ import annotations

from fedhaven.shared.text import markdown, printable, without_paths


def test_control_characters_are_shown_as_escapes_on_one_line():
    hostile = "ok\x1b[2J\x1b[31mall sites agreed\r\nround 9: done\u202etxt.exe\x07"
    out = printable(hostile)
    assert "\x1b" not in out and "\n" not in out and "\r" not in out and "\u202e" not in out and "\x07" not in out
    assert "\\x1b[2J" in out and "\\u202e" in out and "\\r\\n" in out
    assert printable("site-a: budget spent") == "site-a: budget spent"  # ordinary text is untouched


def test_long_text_is_cut_and_says_so():
    out = printable("x" * 10_000, limit=50)
    assert len(out) == 50 and out.endswith("...")


def test_markdown_shows_a_site_name_as_text():
    name = "a|b](http://evil)<img src=x>*bold*\n# heading"
    out = markdown(name)
    assert "|" not in out.replace("\\|", "") and "<" not in out.replace("\\<", "")
    assert "\n" not in out and "\\#" in out and "\\*bold\\*" in out


def test_paths_are_reduced_to_their_last_part():
    text = ("the ledger /srv/hospital-a/state/privacy-ledger.jsonl is damaged; see ~/fedhaven/site.toml "
            "and /var/lib/fedhaven/")
    out = without_paths(text)
    assert "/srv" not in out and "hospital-a" not in out and "~/fedhaven" not in out and "/var/lib" not in out
    assert "…/privacy-ledger.jsonl" in out and "…/site.toml" in out and "…/fedhaven" in out
    assert without_paths("noise 0.5 < 1.0 (site minimum); 3/4 sites") == "noise 0.5 < 1.0 (site minimum); 3/4 sites"
