"""`mlxm convert --report TEXT`: perplexity and mean KL(float || setting) per setting, checked against an
independent NumPy computation from transformers' float logits and our quantized model's logits."""

import mlx.core as mx
import numpy as np
import pytest
import torch

import mlxmodels
from app.cli import main
from mlxmodels.tokenizer import load_tokenizer
from tests.oracle import build_hf, save_byte_tokenizer

CFG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, vocab_size=259, max_position_embeddings=128)
TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 + "Pack my box with five dozen liquor jugs! " * 3) * 2
CONTEXT, TOKENS = 64, 200


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference(hf, quantized, ids):
    """NumPy: (float perplexity, quantized perplexity, mean KL) over the same windows the report uses."""
    nll_f = nll_q = kl = count = 0.0
    for start in range(0, len(ids) - 1, CONTEXT):
        w = ids[start:start + CONTEXT]
        if len(w) < 2:
            continue
        x = np.array([w[:-1]])
        with torch.no_grad():
            lf = log_softmax(hf(torch.tensor(x)).logits.double().numpy()[0])
        lq = log_softmax(np.array(quantized(mx.array(x))[0]).astype(np.float64))
        y = np.array(w[1:])
        nll_f -= lf[np.arange(len(y)), y].sum()
        nll_q -= lq[np.arange(len(y)), y].sum()
        kl += (np.exp(lf) * (lf - lq)).sum()
        count += len(y)
    return np.exp(nll_f / count), np.exp(nll_q / count), kl / count, int(count)


def parse(stdout):
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].replace(".", "").isdigit():
            rows[cells[0]] = tuple(float(c) for c in cells[1:])
    return rows


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    hf = build_hf("llama", folder, **CFG)
    save_byte_tokenizer(folder)
    text = folder.parent / "text.txt"
    text.write_text(TEXT)
    return hf, folder, text


def test_report_table_values(model, tmp_path, capsys):
    hf, folder, text = model
    out = tmp_path / "out"
    code = main(["convert", str(folder), str(out), "-q", "--dtype", "float32", "--report", str(text),
                 "--report-settings", "8,4", "--report-context", str(CONTEXT), "--report-tokens", str(TOKENS)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    rows = parse(stdout)
    assert list(rows) == ["float (source, float32 compute)", "4-bit, group 64 (OUT)",
                          "8-bit, group 64 (in memory)", "4-bit, group 64 (in memory)"], stdout
    ids = load_tokenizer(folder).encode(TEXT)[:TOKENS + 1]
    ppl_f, ppl_q, kl, count = reference(hf, mlxmodels.load(out, dtype="float32")[0], ids)
    assert f"{count} tokens" in stdout and count == TOKENS + 1 - 4  # 4 windows; each first token is context
    f_bits, f_ppl, f_kl = rows["float (source, float32 compute)"]
    assert f_bits == 32.0 and f_kl == 0 and f_ppl == pytest.approx(ppl_f, rel=1e-3)
    q_bits, q_ppl, q_kl = rows["4-bit, group 64 (OUT)"]
    assert 4.5 < q_bits < 6.5
    assert q_ppl == pytest.approx(ppl_q, rel=1e-3) and q_kl == pytest.approx(kl, rel=1e-2, abs=2e-5)
    assert q_kl > 1e-3 and q_ppl != f_ppl
    # the in-memory 4-bit setting is exactly what the converter wrote; 8 bits cost less than 4
    assert rows["4-bit, group 64 (in memory)"] == pytest.approx(rows["4-bit, group 64 (OUT)"], rel=1e-4, abs=1e-5)
    assert rows["8-bit, group 64 (in memory)"][2] < q_kl / 10


def test_report_rejects_a_bad_setting_before_converting(model, tmp_path, capsys):
    _, folder, text = model
    code = main(["convert", str(folder), str(tmp_path / "out"), "--report", str(text), "--report-settings", "4,q9"])
    assert code == 1 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip() == ("mlxm: error: cannot read report setting 'q9'; use e.g. 4, 8, 3g32, "
                                               "mxfp4, or a recipe (edges_3_6, edges_4_6, mixed_2_6, mixed_3_4, "
                                               "mixed_3_6, mixed_4_6)")
