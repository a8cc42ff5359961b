"""--kv-bits (with --max-kv-size, --quantized-kv-start) in generate, chat and cache-prompt: generate writes what the API writes over
a quantized cache (and differs from float KV at 4 bits); options that cannot apply are one line and exit 1, values
argparse refuses exit 2."""

import pytest

import mlxmodels
from app import cli
from tests.app.tiny import build_tiny

PROMPT = "The quick brown fox jumps over the lazy dog. " * 3


@pytest.fixture(scope="module")
def wide_folder(tmp_path_factory):
    """The tiny Llama with a head dim of 32, the least kv_group_size takes."""
    return build_tiny(tmp_path_factory.mktemp("wide"), hidden_size=64, num_attention_heads=2, num_key_value_heads=1)


def test_generate_uses_a_quantized_cache(wide_folder, capsys):
    model, tok = mlxmodels.load(wide_folder)
    assert cli.main(["generate", "-m", str(wide_folder), "--raw", "-p", PROMPT, "--max-tokens", "20",
                     "--kv-bits", "4", "--kv-group-size", "32"]) == 0
    ids = tok.encode(PROMPT)
    want = mlxmodels.generate(model, tok, ids, max_tokens=20, cache=model.make_cache(kv_bits=4, kv_group_size=32))
    assert capsys.readouterr().out == want and want != mlxmodels.generate(model, tok, ids, max_tokens=20)


def test_bounded_and_late_quantized_cache(wide_folder, capsys):
    """--max-kv-size and --quantized-kv-start with --kv-bits: the API's text over make_cache with the same options."""
    model, tok = mlxmodels.load(wide_folder)
    assert cli.main(["generate", "-m", str(wide_folder), "--raw", "-p", PROMPT, "--max-tokens", "20", "--kv-bits", "4",
                     "--kv-group-size", "32", "--max-kv-size", "16", "--quantized-kv-start", "24"]) == 0
    cache = model.make_cache(kv_bits=4, kv_group_size=32, max_kv_size=16, quantized_kv_start=24)
    assert capsys.readouterr().out == mlxmodels.generate(model, tok, tok.encode(PROMPT), max_tokens=20, cache=cache)
    assert all(c.quantized for c in cache) and cache[0].offset > 24


def test_cache_prompt_saves_a_quantized_cache(wide_folder, tmp_path, capsys):
    """cache-prompt --kv-bits writes the quantized cache that generate --prompt-cache resumes from (its text is the
    API's over the same cache), and the file says its quantization."""
    from mlxmodels.generate import prefill

    model, tok = mlxmodels.load(wide_folder)
    out, question = tmp_path / "doc.cache", " What jumps?"
    assert cli.main(["cache-prompt", "-m", str(wide_folder), "--raw", "-p", PROMPT, "-o", str(out), "--kv-bits", "4",
                     "--kv-group-size", "32", "--quantized-kv-start", "8"]) == 0
    assert mlxmodels.load_prompt_cache(out, model)[1]["quantization"] == {"bits": "4", "group_size": "32"}
    capsys.readouterr()
    assert cli.main(["generate", "-m", str(wide_folder), "--raw", "--prompt-cache", str(out), "-p", question,
                     "--max-tokens", "20"]) == 0
    cache = model.make_cache(kv_bits=4, kv_group_size=32, quantized_kv_start=8)
    prefill(model, tok.encode(PROMPT), cache)
    want = mlxmodels.generate(model, tok, tok.encode(question, add_special_tokens=False), max_tokens=20, cache=cache)
    assert capsys.readouterr().out == want


def test_mistakes_are_one_line(wide_folder, capsys):
    for flags, needle in [(["--kv-bits", "8"], "kv_group_size=64"),
                          (["--quantized-kv-start", "16"], "--kv-bits")]:
        assert cli.main(["generate", "-m", str(wide_folder), "-p", "hi", *flags]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize("command", [["generate", "-p", "hi"], ["chat"]])
def test_parser_values(command, capsys):
    args = cli.parser().parse_args([*command, "--kv-bits", "8", "--kv-group-size", "32"])
    assert (args.kv_bits, args.kv_group_size) == (8, 32)
    assert cli.parser().parse_args(command).kv_bits is None
    with pytest.raises(SystemExit) as e:
        cli.parser().parse_args([*command, "--kv-bits", "3"])
    assert e.value.code == 2 and "--kv-bits" in capsys.readouterr().err
    assert cli.parser().parse_args([*command, "--quantized-kv-start", "100"]).quantized_kv_start == 100
    with pytest.raises(SystemExit) as e:
        cli.parser().parse_args([*command, "--quantized-kv-start", "-1"])
    assert e.value.code == 2 and "--quantized-kv-start" in capsys.readouterr().err
