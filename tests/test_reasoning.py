"""The reasoning splitter: markers split across tokens, replies without an end marker, prompts that end inside the
reasoning, and the stream wrapper over stream_generate's responses."""

import itertools
import random

import pytest

from mlxmodels.generate import GenerationResponse
from mlxmodels.reasoning import (THINK, Markers, Split, Splitter, markers_for, split_stream, split_text,
                                 starts_inside)

QWEN3 = "<think>\nLet me add.\n2 + 2 = 4\n</think>\n\nIt is **4**."


def feed_all(pieces, markers=THINK, inside=False):
    s = Splitter(markers, inside)
    out = [s.feed(p) for p in pieces] + [s.finish()]
    return s, out


def test_a_qwen3_reply_splits_into_reasoning_and_answer():
    assert split_text(QWEN3) == Split("Let me add.\n2 + 2 = 4", "It is **4**.")


def test_every_way_of_cutting_the_text_gives_the_same_split():
    """Markers, newlines and the answer's start cut at every point (and randomly into many pieces) split alike."""
    texts = [QWEN3, "  <think>a</think>b", "<think></think>\n\nanswer", "<think>\n\n</think>\n\n", "plain answer",
             "<thinking is not a marker", "<think>a\n</thin\nk>b</think>c", "\n<thi", "<think>x</think>\n\n<think>y"]
    rng = random.Random(0)
    for text in texts:
        whole = split_text(text)
        for i, j in itertools.combinations(range(len(text) + 1), 2):
            s, _ = feed_all([text[:i], text[i:j], text[j:]])
            assert (s.reasoning, s.answer) == (whole.reasoning, whole.answer), (text, i, j)
        for _ in range(50):
            cuts = sorted(rng.sample(range(len(text) + 1), rng.randint(0, len(text))))
            pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
            s, out = feed_all(pieces)
            assert "".join(o.reasoning for o in out) == whole.reasoning
            assert "".join(o.answer for o in out) == whole.answer


def test_a_marker_split_across_tokens_is_held_until_complete():
    s = Splitter()
    assert s.feed("<") == Split() and s.feed("thi") == Split() and s.thinking is False
    assert s.feed("nk>") == Split() and s.thinking
    assert s.feed("hmm") == Split("hmm")
    assert s.feed("</") == Split() and s.feed("thi") == Split()  # maybe the end marker: held back
    assert s.feed("s is text") == Split("</this is text")  # it was not
    assert s.feed("\n</think") == Split() and s.thinking
    assert s.feed(">") == Split() and not s.thinking  # the newline before the marker is dropped
    assert s.feed("\n\nDone") == Split("", "Done")
    assert s.finish() == Split()
    assert (s.reasoning, s.answer) == ("hmm</this is text", "Done")


def test_token_count_includes_the_markers_and_the_pieces_before_the_start_marker_completed():
    s, _ = feed_all(["<", "think", ">", "a", "b", "</think>", "\n\n", "x", "y"])
    assert s.reasoning_tokens == 6
    s, _ = feed_all(["Hel", "lo"])
    assert s.reasoning_tokens == 0 and s.answer == "Hello"
    s, _ = feed_all(["<th", "e end>"])  # looked like a marker, was not
    assert s.reasoning_tokens == 0 and s.answer == "<the end>"


def test_no_end_marker_keeps_everything_as_reasoning():
    s, out = feed_all(["<think>", "\nstill ", "thinking", "\n</thi"])
    assert (s.reasoning, s.answer) == ("still thinking\n</thi", "") and s.thinking
    assert out[-1] == Split("\n</thi")  # at the end a partial marker is text after all


def test_prompt_already_inside_the_reasoning():
    prompt = "<｜User｜>2+2?<｜Assistant｜><think>\n"
    assert starts_inside(prompt) and not starts_inside(prompt + "\n\n</think>\n\n") and not starts_inside("Hi")
    s, _ = feed_all(["Sum", " it.", "</think>", "4"], inside=True)
    assert (s.reasoning, s.answer, s.reasoning_tokens) == ("Sum it.", "4", 3)
    # inside, a start marker is text of the reasoning, not a new block
    assert split_text("a<think>b</think>c", inside=True) == Split("a<think>b", "c")


def test_a_start_marker_counts_only_at_the_start_of_the_reply():
    assert split_text("Use <think> tags like <think>this</think>.") == Split(
        "", "Use <think> tags like <think>this</think>.")


def test_other_markers():
    magistral = Markers("[THINK]", "[/THINK]")
    assert split_text("[THINK]hm[/THINK]ok", magistral) == Split("hm", "ok")
    assert split_text("<think>hm</think>ok", magistral) == Split("", "<think>hm</think>ok")


class FakeTokenizer:
    def __init__(self, vocab=(), chat_template=None):
        self.vocab, self.chat_template = set(vocab), chat_template

    def token_to_id(self, token):
        return 7 if token in self.vocab else None


def test_markers_come_from_the_vocabulary_or_the_template():
    assert markers_for(FakeTokenizer()) == THINK
    assert markers_for(FakeTokenizer({"[THINK]", "[/THINK]"})) == Markers("[THINK]", "[/THINK]")
    seed = FakeTokenizer(chat_template="{{ '<seed:think>' }}..{{ '</seed:think>' }}")
    assert markers_for(seed) == Markers("<seed:think>", "</seed:think>")
    assert markers_for(FakeTokenizer({"[THINK]"})) == THINK  # half a pair is no pair


def responses(pieces):
    for i, text in enumerate(pieces):
        yield GenerationResponse(text=text, token=i, generation_tokens=i + 1,
                                 finish_reason="length" if i == len(pieces) - 1 else None)


def test_split_stream_keeps_the_responses_fields_and_flushes_at_the_end():
    out = list(split_stream(responses(["<think>", "a", "</thi"])))
    assert [r.text for r in out] == ["<think>", "a", "</thi"] and [r.token for r in out] == [0, 1, 2]
    assert isinstance(out[0], GenerationResponse) and out[-1].finish_reason == "length"
    assert [(r.reasoning, r.answer, r.thinking, r.reasoning_tokens) for r in out] == [
        ("", "", True, 1), ("a", "", True, 2), ("</thi", "", True, 3)]


def test_closing_split_stream_closes_the_generation():
    closed = []

    def gen():
        try:
            yield from responses(["a", "b", "c"])
        finally:
            closed.append(True)

    stream = split_stream(gen())
    assert next(stream).answer == "a"
    stream.close()
    assert closed == [True]


@pytest.mark.parametrize("text", ["", "\n", "<think>", "</think>"])
def test_degenerate_replies(text):
    whole = split_text(text)
    s, _ = feed_all(list(text))
    assert (s.reasoning, s.answer) == (whole.reasoning, whole.answer)


def test_a_splitter_for_a_prompt_takes_the_tokenizers_markers_and_where_the_prompt_ends():
    tok = FakeTokenizer({"[THINK]", "[/THINK]"})
    s = Splitter.for_prompt(tok, "[INST]hi[/INST][THINK]\n")
    assert s.markers.start == "[THINK]" and s.thinking
    assert not Splitter.for_prompt(FakeTokenizer(), "<|assistant|>").thinking
