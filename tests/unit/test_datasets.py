"""The data sets that ship in Debian packages read cleanly."""

from __future__ import annotations

from semsearch.datasets import fortunes


def test_double_encoded_fortunes_are_repaired():
    corpus = fortunes()
    lawyers = [t for t in corpus.texts if t.startswith("Here") and "about lawyers" in t]
    assert lawyers, "the fortunes package no longer holds the quote this test reads"
    assert lawyers[0].startswith("Here\u2019s the thing about lawyers: they don\u2019t write to communicate.")
    assert not any("\u00c3\u00a2" in t or "\u00c2\u0080" in t for t in corpus.texts), "mojibake left"
