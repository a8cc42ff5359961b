"""The quantized paged cache (kv_bits=4|8): through whole models (dense, sliding window with softcap, chunked, MLA,
learned positions) 8-bit logits stay within TOL8 of the float paged cache's and 4-bit within a KL bound on a fixed
prompt set; decode, a speculative step and a rollback equal one quantized prefill (each row is quantized alone, so
the math is the same); the paged pool equals the contiguous quantized cache (dense and MLA); batched rows equal each
sequence alone; prefix caching reuses quantized blocks and copy on
write copies codes, scales and biases; options that cannot apply are refused naming them; BatchGenerator and the
serve engine take kv_bits/kv_group_size (greedy batched == each prompt alone over a quantized pool), as does
`mlxm serve`'s parser."""

import mlx.core as mx
import numpy as np
import pytest

from app import cli
from mlxmodels.batch import BatchGenerator
from mlxmodels.generate import generate_step
from mlxmodels.row_sampling import SamplingParams
from mlxmodels.config import HFConfig
from mlxmodels.decoder import Decoder
from mlxmodels.families import get_adapter
from mlxmodels.serve import Engine
from tests.parts.test_paged_cache import FAMILIES, SIZES, model, run  # noqa: F401  (model: the fixture)

GROUP = 32  # the tiny models' head dim (MLA rows: 32 + 32)
TOL8 = 0.05  # max |logit difference| of 8-bit KV against float KV (measured 0.011-0.030; logits span 4-8)
KL4 = 5e-3  # mean KL(float || 4-bit) of the next-token distributions over the prompt set (measured 0.9e-3-3.8e-3)
# ... but a key computed in another batch shape differs in its last float bit, which now and then moves a value
# across a rounding boundary of its quantization: one code step, visible in the logits of the positions that see it
FLIP = {8: 2e-3, 4: 3e-2}
PROMPTS = [np.random.default_rng(10 + i).integers(0, 128, size=n) for i, n in enumerate([12, 25, 40])]


def paged(model, bits, num_blocks=48, block_size=4, **options):
    return model.make_cache(paged=True, num_blocks=num_blocks, block_size=block_size, kv_bits=bits,
                            kv_group_size=GROUP, **options)


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def assert_same_math(got, want, bits):
    """Within one quantization step's reach (FLIP) at every position. Not bit-equal: a key computed in a many-row
    matmul and in a one-row one may differ in its last bit (BLAS picks other kernels; with OpenBLAS a gpt2 run had
    43% of positions off by ~1e-3), and a code on a rounding boundary then flips. A wrong position, mask or
    rollback moves the logits by far more than FLIP."""
    diff = np.abs(np.asarray(got) - np.asarray(want)).max(axis=-1).reshape(-1)  # per position
    assert diff.max() < FLIP[bits], diff.max()


def test_8bit_logits_close_to_float(model):
    want = run(model, paged(model, None), SIZES)
    got = run(model, paged(model, 8), SIZES)
    assert np.abs(got - want).max() < TOL8
    assert np.abs(got - want).max() > 0, "the cache must really be quantized"


def test_4bit_kl_on_prompt_set(model):
    kls = []
    for ids in PROMPTS:
        split = [len(ids) - 4] + [1] * 4
        p, q = (log_softmax(run(model, paged(model, bits), split, ids)[0].astype(np.float64)) for bits in (None, 4))
        kls.append((np.exp(p) * (p - q)).sum(-1).mean())
    assert 0 < np.mean(kls) < KL4


@pytest.mark.parametrize("bits", [4, 8])
def test_decode_and_rollback_equal_prefill(model, bits):
    """Cached decode, a 3-token step and a rolled-back speculative step give the one-pass quantized prefill's."""
    ids = np.random.default_rng(1).integers(0, 128, size=30)
    want = run(model, paged(model, bits), [30], ids)
    cache = paged(model, bits)
    got = [run(model, cache, [20] + [1] * 5 + [3], ids[:28])]
    run(model, cache, [2], np.array([5, 6]))  # rejected draft tokens, forgotten below
    assert [c.trim(2) for c in cache] == [2] * len(cache)
    got.append(run(model, cache, [1, 1], ids[28:]))
    assert_same_math(np.concatenate(got, axis=1), want, bits)


@pytest.mark.parametrize("family", ["llama", "deepseek_v3"])
@pytest.mark.parametrize("bits", [4, 8])
def test_paged_equals_contiguous_quantized(family, bits):
    """Both store each row's codes alone (a KV head's key or value; MLA's [latent | rope key]) with the same group
    size, so the pool's blocks and the contiguous cache hold the same codes and attend alike, decode included (the
    pool through the paged kernels' entry points, the contiguous cache by dequantize-then-attend)."""
    spec = get_adapter(family).spec(HFConfig(dict(FAMILIES[family], model_type=family)))
    mx.random.seed(len(family))
    model = Decoder(spec)
    contiguous = model.make_cache(kv_bits=bits, kv_group_size=GROUP)
    want = run(model, contiguous, SIZES)
    got = run(model, paged(model, bits), SIZES)
    assert_same_math(got, want, bits)
    float_kv = run(model, model.make_cache(), SIZES)
    assert np.abs(want - float_kv).max() > FLIP[bits], "both must really be quantized, not float alike"


def test_batched_equals_alone(model):
    """Three sequences at different positions decode together; each row equals its sequence run alone."""
    lengths, steps = [5, 17, 11], 4
    streams = [np.random.default_rng(i).integers(0, 128, size=n + steps) for i, n in enumerate(lengths)]
    alone = [run(model, paged(model, 8), [n] + [1] * steps, ids)[0, n:] for n, ids in zip(lengths, streams)]
    cache = paged(model, 8)
    pool = cache.pool
    sids = [pool.active[0], pool.add_sequence(), pool.add_sequence()]
    for sid, n, ids in zip(sids, lengths, streams):
        pool.active = [sid]
        model(mx.array(ids[None, :n]), cache=cache)
    pool.active = sids
    got = []
    for t in range(steps):
        y = mx.array([[int(ids[n + t])] for n, ids in zip(lengths, streams)])
        got.append(np.array(model(y, cache=cache))[:, 0])
    assert_same_math(np.stack(got, axis=1), np.stack(alone), 8)


def test_prefix_reuse_and_copy_on_write(model):
    """A second prompt claims the first's quantized blocks and gives a cold run's logits; a fork written into a
    shared block gets codes, scales and biases copied (else its earlier rows would read back as zeros)."""
    prompt = PROMPTS[2][:30]
    cold = run(model, paged(model, 8), [28, 2], prompt)[:, 28:]  # the shapes the claiming sequence runs
    cache = paged(model, 8, prefix_cache=True)
    pool = cache.pool
    first = pool.active[0]
    run(model, cache, [30], prompt)
    pool.commit_tokens(first, prompt.tolist())
    second = pool.add_sequence()
    n = pool.claim_prefix(second, prompt.tolist())
    assert n == 28  # 7 full blocks of 4; the last token is prefilled
    pool.active = [second]
    assert_same_math(run(model, cache, [2], prompt[n:]), cold, 8)

    # fork at 30 tokens (block 7 half full, shared), then both write into it
    pool.active = [first]
    child = pool.fork(first)
    tails = {first: [7, 8], child: [9, 10]}
    for sid, tail in tails.items():
        pool.active = [sid]
        got = run(model, cache, [1, 1], np.array(tail))
        want = run(model, paged(model, 8), [30, 1, 1], np.concatenate([prompt, tail]))[:, 30:]
        assert_same_math(got, want, 8)


def test_quantized_blocks_are_smaller(model):
    float_cache, cache = paged(model, None), paged(model, 8)
    run(model, float_cache, [9])
    run(model, cache, [9])
    # per float32 row of D: D bytes of 8-bit codes, and a float32 scale and bias per group of 32 (a quarter of 4 D)
    assert sum(c.nbytes for c in cache) * 32 == sum(c.nbytes for c in float_cache) * 10


def test_options_refused_naming_them(model):
    with pytest.raises(ValueError, match="kv_bits"):
        paged(model, 3)
    with pytest.raises(ValueError, match="kv_group_size"):
        model.make_cache(paged=True, kv_bits=8, kv_group_size=48)
    with pytest.raises(ValueError, match="kv_group_size=128 does not divide .* use kv_group_size="):
        model.make_cache(paged=True, kv_bits=4, kv_group_size=128)


def test_batch_generator_over_a_quantized_pool(model):
    """Greedy continuous batching over an 8-bit pool gives each prompt's tokens decoded alone over one."""
    alone = [[t for t, _ in generate_step(model, p, paged(model, 8), max_tokens=6)] for p in PROMPTS]
    gen = BatchGenerator(model, num_blocks=48, block_size=4, max_batch=3, kv_bits=8, kv_group_size=GROUP)
    uids = [gen.add(p.tolist(), 6) for p in PROMPTS]
    tokens = {}
    for responses in gen:
        for r in responses:
            tokens.setdefault(r.uid, []).append(r.token)
    assert [tokens[u] for u in uids] == alone
    assert type(gen.cache[0]).__name__.startswith("Quantized")


def test_engine_takes_kv_bits(model):
    with pytest.raises(ValueError, match="kv_group_size=128"):
        Engine(model, num_blocks=16, kv_bits=8, kv_group_size=128)  # refused before a thread starts
    engine = Engine(model, max_batch=2, num_blocks=48, block_size=4, kv_bits=4, kv_group_size=GROUP)
    engine.start()
    try:
        events = list(engine.submit(PROMPTS[0].tolist(), SamplingParams(5, temperature=0.0)))
    finally:
        engine.close()
    want = [t for t, _ in generate_step(model, PROMPTS[0], paged(model, 4), max_tokens=5)]
    assert [e.token for e in events if e.token != -1] == want


def test_serve_parser_flags(capsys):
    args = cli.parser().parse_args(["serve", "--kv-bits", "8", "--kv-group-size", "32"])
    assert (args.kv_bits, args.kv_group_size) == (8, 32)
    assert cli.parser().parse_args(["serve"]).kv_bits is None
    for bad in (["--kv-bits", "3"], ["--kv-group-size", "48"]):
        with pytest.raises(SystemExit) as e:
            cli.parser().parse_args(["serve", *bad])
        assert e.value.code == 2 and bad[0] in capsys.readouterr().err
