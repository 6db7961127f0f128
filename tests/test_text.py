"""The package's one sentence splitter and the options its callers use."""

from __future__ import annotations

from personalign.text import SENTENCE_OPENERS, split_sentences


def test_default_split_on_end_marks_and_lines() -> None:
    assert split_sentences("I love jazz. can you help?  Sure!\n\nNext line \n") == [
        "I love jazz.",
        "can you help?",
        "Sure!",
        "Next line",
    ]
    assert split_sentences("") == [] and split_sentences(" \n\n ") == []


def test_opens_keeps_abbreviations_together() -> None:
    text = "I eat fish, e.g. salmon. Tea? (Green) Yes. [link]"
    assert split_sentences(text) == [
        "I eat fish, e.g.",
        "salmon.",
        "Tea?",
        "(Green) Yes.",
        "[link]",
    ]
    assert split_sentences(text, opens=SENTENCE_OPENERS) == [
        "I eat fish, e.g. salmon.",
        "Tea?",
        "(Green) Yes. [link]",
    ]
    assert split_sentences(text, opens=SENTENCE_OPENERS + r"\[")[-2:] == ["(Green) Yes.", "[link]"]


def test_lines_ends_and_strip() -> None:
    assert split_sentences("one\ntwo. Three", lines=False) == ["one\ntwo.", "Three"]
    assert split_sentences("好的。然后！OK", ends=".!?。！？") == ["好的。然后！OK"]
    assert split_sentences("好的。 然后！ OK", ends=".!?。！？") == ["好的。", "然后！", "OK"]
    assert split_sentences("- first.\n* second\n--", strip=" -*•\t") == ["first.", "second"]
