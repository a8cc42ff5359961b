"""`mlxm cache-prompt` + `generate --prompt-cache`: resuming from the file writes what the whole prompt in one run
writes; --max-kv-size bounds the cache; mistakes are one line."""

import mlxmodels
from app import cli

DOC, QUESTION = "The quick brown fox jumps over the lazy dog. " * 3, " What jumps?"


def cached(tmp_path, folder, *flags):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    out = tmp_path / "doc.cache"
    assert cli.main(["cache-prompt", "-m", str(folder), "-p", f"@{doc}", "-o", str(out), *flags]) == 0
    return out


def test_resumed_chat_equals_the_whole_prompt(tiny_folder, tiny, tmp_path, capsys):
    model, tok = tiny
    out = cached(tmp_path, tiny_folder)
    capsys.readouterr()
    assert cli.main(["generate", "-m", str(tiny_folder), "--prompt-cache", str(out), "-p", QUESTION,
                     "--max-tokens", "20"]) == 0
    ids = tok.apply_chat_template([{"role": "user", "content": DOC + QUESTION}], add_generation_prompt=True,
                                  tokenize=True)
    assert capsys.readouterr().out == mlxmodels.generate(model, tok, ids, max_tokens=20)


def test_resumed_raw_equals_the_whole_prompt(tiny_folder, tiny, tmp_path, capsys):
    model, tok = tiny
    out = cached(tmp_path, tiny_folder, "--raw")
    capsys.readouterr()
    assert cli.main(["generate", "-m", str(tiny_folder), "--prompt-cache", str(out), "--raw", "-p", QUESTION,
                     "--max-tokens", "20"]) == 0
    ids = tok.encode(DOC) + tok.encode(QUESTION, add_special_tokens=False)
    assert capsys.readouterr().out == mlxmodels.generate(model, tok, ids, max_tokens=20)


def test_max_kv_size_generates_with_a_bounded_cache(tiny_folder, tiny, capsys):
    model, tok = tiny
    assert cli.main(["generate", "-m", str(tiny_folder), "--raw", "-p", DOC, "--max-tokens", "20",
                     "--max-kv-size", "32"]) == 0
    ids = tok.encode(DOC)
    want = mlxmodels.generate(model, tok, ids, max_tokens=20, cache=model.make_cache(max_kv_size=32))
    assert capsys.readouterr().out == want and want != mlxmodels.generate(model, tok, ids, max_tokens=20)


def one_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mlxm: error:"), err
    assert all(n in err for n in needles), err


def test_mistakes_are_one_line(tiny_folder, tmp_path, capsys):
    junk = tmp_path / "junk.cache"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    for args, needles in [
        (["cache-prompt", "-p", f"@{tmp_path / 'missing.txt'}", "-o", str(tmp_path / "x")], ["missing.txt"]),
        (["generate", "-p", "hi", "--prompt-cache", str(tmp_path / "none.cache")], ["none.cache"]),
        (["generate", "-p", "hi", "--prompt-cache", str(junk)], ["junk.cache"]),
        (["generate", "-p", "hi", "--prompt-cache", str(junk), "--max-kv-size", "16"], ["--max-kv-size"]),
    ]:
        assert cli.main([args[0], "-m", str(tiny_folder), *args[1:]]) == 1
        one_line(capsys, *needles)


def test_chat_reuses_a_preloaded_prompt_cache(tiny_folder, tiny, tmp_path):
    from app.cache_prompt_cmd import load_for_chat
    from app.chat_session import ChatSession
    from app.chat_store import Chat, Sampling

    model, tok = tiny
    cache, tokens = load_for_chat(model, str(cached(tmp_path, tiny_folder)))
    session = ChatSession(model, tok, 256, Chat(settings=Sampling(max_tokens=16).to_dict()))
    session.preload(cache, tokens)
    session.add_user(DOC + QUESTION)
    turn = session.prepare()
    assert turn.reused == len(tokens) and len(turn.feed) == turn.prompt_len - len(tokens)
    list(session.reply(turn))
    ids = tok.apply_chat_template([{"role": "user", "content": DOC + QUESTION}], add_generation_prompt=True,
                                  tokenize=True)
    assert session.messages[-1]["content"] == mlxmodels.generate(model, tok, ids, max_tokens=16)


def test_chat_with_max_kv_size_keeps_the_cache_bounded(tiny):
    from app.chat_session import ChatSession
    from app.chat_store import Chat, Sampling

    model, tok = tiny
    session = ChatSession(model, tok, 256, Chat(settings=Sampling(max_tokens=16).to_dict()))
    session.cache_options["max_kv_size"] = 24
    for text in ("Hello there, how are you today?", "Tell me more about foxes, please."):
        session.add_user(text)
        list(session.reply(session.prepare()))
        assert session.cache[0].offset > 24 and session.cache[0].kept <= 24
