"""WikiNER tagged sentences: reader, errors, vocabularies, split, synthetic data, statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edbatch_jax.zoo.data.tags import (
    NUM_TAGS,
    UNK_TOKEN,
    WIKINER_TAGS,
    Sentence,
    TagVocabulary,
    WordVocabulary,
    format_tagged,
    parse_tagged,
    read_tagged,
    split_sentences,
    synthetic_tagged,
    tagged_stats,
    word_tag,
)

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "tags" / "dev.txt"
needs_data = pytest.mark.skipif(not DEV.exists(), reason="WikiNER data not present")


@pytest.fixture(scope="module")
def dev():
    return read_tagged(DEV)


# ----------------------------------------------------------------------------- real data
@needs_data
def test_real_file_statistics(dev):
    stats = tagged_stats(dev)
    assert stats["num_sentences"] == 1696
    assert stats["num_tokens"] == 39007
    assert stats["num_word_types"] == 8504
    assert (stats["min_length"], stats["max_length"], stats["median_length"]) == (1, 144, 20.0)
    assert stats["tag_counts"].tolist() == [32576, 1634, 1447, 1958, 1392]
    assert stats["majority_tag"] == 0 and 0.83 < stats["majority_fraction"] < 0.84
    first = dev[0]
    assert first.words[:3] == ("010", "is", "the")
    assert [WIKINER_TAGS[t] for t in first.tags[:3]] == ["I-MISC", "O", "O"]
    assert first.tags.dtype == np.int32 and not first.tags.flags.writeable


@needs_data
def test_real_file_round_trips_and_limit(dev, tmp_path):
    assert parse_tagged(format_tagged(dev)) == dev
    assert read_tagged(DEV, limit=5) == dev[:5]
    assert read_tagged(DEV, limit=0) == []
    copy = tmp_path / "copy.txt"
    copy.write_text(format_tagged(dev[:50]), encoding="utf-8")
    assert read_tagged(copy) == dev[:50]


@needs_data
def test_split_of_the_real_file(dev):
    train, held = split_sentences(dev)
    assert (len(train), len(held)) == (1357, 339)
    assert sorted(map(id, train + held)) == sorted(map(id, dev))  # disjoint, and together all of dev
    # order is kept inside each part
    pos = {id(s): k for k, s in enumerate(dev)}
    assert [pos[id(s)] for s in held] == sorted(pos[id(s)] for s in held)
    assert split_sentences(dev, seed=0)[1] == held
    assert split_sentences(dev, seed=1)[1] != held
    vocab = WordVocabulary.build(train)
    unknown = np.mean(np.concatenate([vocab.encode(s) for s in held]) == 0)
    assert 0.05 < unknown < 0.3  # held-out words missing from the train vocabulary


# ----------------------------------------------------------------------------- reader errors
@pytest.mark.parametrize(
    "text, message",
    [
        ("a|O b|O\nc|O dO e|O\n", r"src\.txt:2: token 2 'dO' \(column 5\): expected WORD\|TAG, there is no '\|'"),
        ("a|O\n\n|O\n", r"src\.txt:3: token 1 '\|O' \(column 1\): empty word before '\|'"),
        ("a|O b|B-PER\n", r"src\.txt:1: token 2 'b\|B-PER' \(column 5\): unknown tag 'B-PER'; the tags are \['O'"),
        ("a|O b|\n", r"src\.txt:1: token 2 'b\|' .*unknown tag ''"),
    ],
)
def test_parse_errors_name_source_line_and_token(text, message):
    with pytest.raises(ValueError, match=message):
        parse_tagged(text, source="src.txt")


def test_read_errors_name_the_path_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("x|O y|O\n\n  \nz|O w|I-XYZ\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{bad}:4: token 2 'w\|I-XYZ'.*unknown tag 'I-XYZ'"):
        read_tagged(bad)
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("a|O\ncaf\u00e9|O\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{binary}:2: not UTF-8"):
        read_tagged(binary)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_tagged(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="limit"):
        read_tagged(bad, limit=-1)


def test_parse_details():
    text = "a|b|O  x|I-PER\t\n\r\nlast|I-MISC"  # '|' inside a word, tabs, CR, no final newline
    sents = parse_tagged(text)
    assert [s.words for s in sents] == [("a|b", "x"), ("last",)]
    assert [s.tags.tolist() for s in sents] == [[0, 1], [4]]
    custom = TagVocabulary(["N", "V"])
    assert parse_tagged("run|V dog|N", tags=custom)[0].tags.tolist() == [1, 0]
    assert format_tagged(parse_tagged("run|V dog|N", tags=custom), tags=custom) == "run|V dog|N\n"


def test_sentence_validation():
    s = Sentence(["a", "b"], [0, 3])
    assert len(s) == 2 and s == Sentence(("a", "b"), np.array([0, 3])) and hash(s) == hash(Sentence(["a", "b"], [0, 3]))
    with pytest.raises(ValueError, match="at least one word"):
        Sentence([], [])
    with pytest.raises(ValueError, match="2 words but 1 tags"):
        Sentence(["a", "b"], [0])
    with pytest.raises(ValueError, match="word 1 has tag -1"):
        Sentence(["a", "b"], [0, -1])
    with pytest.raises(ValueError, match="without whitespace"):
        Sentence(["a b"], [0])
    with pytest.raises(ValueError, match="without whitespace"):
        Sentence([""], [0])


# ----------------------------------------------------------------------------- vocabularies
def test_vocabularies():
    sents = [Sentence(["b", "a", "b"], [0, 0, 1]), Sentence(["c", "a", "b"], [2, 0, 0])]
    vocab = WordVocabulary.build(sents)
    assert vocab.id_to_token == (UNK_TOKEN, "b", "a", "c")  # by frequency, ties alphabetically
    assert vocab.encode(Sentence(["a", "zzz"], [0, 0])).tolist() == [2, 0]
    assert vocab.lookup("zzz") == 0 and "a" in vocab and len(vocab) == 4
    assert WordVocabulary.build(sents, max_size=2).id_to_token == (UNK_TOKEN, "b")
    assert WordVocabulary.build(sents, min_count=2).id_to_token == (UNK_TOKEN, "b", "a")
    with pytest.raises(ValueError, match="max_size"):
        WordVocabulary.build(sents, max_size=0)
    tags = TagVocabulary()
    assert tags.names == WIKINER_TAGS and len(tags) == NUM_TAGS == 5
    assert tags.lookup("I-ORG") == 3 and tags.name(4) == "I-MISC"
    with pytest.raises(KeyError, match="unknown tag 'B-LOC'"):
        tags.lookup("B-LOC")
    with pytest.raises(ValueError, match="distinct"):
        TagVocabulary(["O", "O"])


def test_split_arguments():
    sents = synthetic_tagged(10, seed=0)
    assert [len(p) for p in split_sentences(sents, 0.0)] == [10, 0]
    assert [len(p) for p in split_sentences(sents, 0.25)] == [8, 2]  # round(2.5) == 2
    with pytest.raises(ValueError, match="held_out_fraction"):
        split_sentences(sents, 1.0)


# ----------------------------------------------------------------------------- synthetic data
def test_synthetic_matches_the_real_statistics():
    sents = synthetic_tagged(1696, seed=0)
    stats = tagged_stats(sents)
    assert abs(stats["mean_length"] - 23.0) < 1.0
    assert abs(stats["median_length"] - 20) <= 2
    assert stats["min_length"] >= 1 and stats["max_length"] <= 144
    assert 7500 < stats["num_word_types"] < 9800  # dev: 8504
    real = np.array([32576, 1634, 1447, 1958, 1392]) / 39007
    np.testing.assert_allclose(stats["tag_fractions"], real, atol=0.01)
    # tags are learnable: they follow a fixed function of the word
    ids = np.array([int(w[1:]) for s in sents for w in s.words])
    tags = np.concatenate([s.tags for s in sents])
    agree = np.mean(word_tag(ids) == tags)
    assert agree > 0.93
    assert np.all(word_tag(np.arange(25)) == 0)  # the most frequent words are O


def test_synthetic_is_deterministic_and_validates_arguments():
    a, b = synthetic_tagged(20, seed=3), synthetic_tagged(20, seed=3)
    assert a == b and a != synthetic_tagged(20, seed=4)
    assert max(len(s) for s in synthetic_tagged(200, seed=1, max_length=7)) <= 7
    noiseless = synthetic_tagged(50, seed=2, tag_noise=0.0, vocab_size=300)
    ids = np.array([int(w[1:]) for s in noiseless for w in s.words])
    assert np.array_equal(word_tag(ids, vocab_size=300), np.concatenate([s.tags for s in noiseless]))
    assert synthetic_tagged(0) == []
    for kwargs, msg in [
        ({"num": -1}, "num"),
        ({"num": 1, "tag_noise": 2.0}, "tag_noise"),
        ({"num": 1, "max_length": 0}, "max_length"),
        ({"num": 1, "vocab_size": 0}, "vocab_size"),
    ]:
        with pytest.raises(ValueError, match=msg):
            synthetic_tagged(**kwargs)
    with pytest.raises(ValueError, match="word ids"):
        word_tag(np.array([20000]))
    with pytest.raises(ValueError, match="at least one"):
        tagged_stats([])
