"""Hostile chat templates (issue 11, item 4): a template that loops for ever or builds gigabytes stops within a
couple of seconds in bounded memory, with one line naming its file, the template line and what happened; real
templates render exactly as transformers renders them.

The attacks run in one child process with an address-space limit: should a guard regress, the child gets a
MemoryError or is stopped by its timeout instead of taking the test machine down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlxmodels import chat_template
from mlxmodels.template_budget import MAX_SIZE, TIME_LIMIT_S
from mlxmodels.tokenizer import TokenizerError, load_tokenizer
from tests.app.tiny import TEMPLATE, build_tiny, save_ascii_tokenizer
from tests.hostile.cli import ROOT, mlxm, assert_refused

BIG = "{% set s = 'x' * 1000000 %}"  # a million characters, within the limits; the attacks multiply it
NEST = "".join(f"{{% set l{i + 1} = [l{i}, l{i}, l{i}, l{i}, l{i}, l{i}, l{i}, l{i}, l{i}, l{i}] %}}" for i in range(8))
LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
STOPPED = "the chat template was stopped"
TOO_BIG = "would build"  # refused before the operation runs
# name -> (template, what the one line must say)
ATTACKS = {
    "string product": ("{{ 'x' * 10**10 }}", TOO_BIG),
    "list product": ("{{ [0] * 10000000000 }}", TOO_BIG),
    "huge range": ("{{ range(10**10) | join }}", "Range too big"),
    "loops of 10^10 steps": (LOOPS, "time limit"),
    "loops over a variable": ("{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% for k in r %}"
                              "{% endfor %}{% endfor %}{% endfor %}", "time limit"),
    "recursive loop": ("{% for x in range(100000) recursive %}{% if loop.depth < 4 %}{{ loop(range(100000)) }}"
                       "{% endif %}{% endfor %}", "time limit"),
    "lipsum paragraphs": ("{{ lipsum(10**8) }}", "at most 100,000"),
    "lipsum words": ("{{ lipsum(5, min=10**9 - 1, max=10**9) }}", TOO_BIG),
    "nested tojson": ("{% set l0 = [1] %}" + NEST + "{{ l8 | tojson }}", "characters long"),
    "nested print": ("{% set l0 = ['xxxxxxxxxx'] %}" + NEST + "{{ l8 }}", "characters long"),
    "tojson indent": ("{{ [[[[1]]]] | tojson(indent=10**10) }}", "indent"),
    "doubling with ~": ("{% set ns = namespace(x='a') %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}"
                        "{% endfor %}", "characters long"),
    "doubling with +": ("{% set ns = namespace(x=['a']) %}{% for i in range(64) %}{% set ns.x = ns.x + ns.x %}"
                        "{% endfor %}", "the result of the + operator"),
    "center filter": ("{{ 'x' | center(10**10) }}", TOO_BIG),
    "str.ljust": ("{{ 'x'.ljust(10**10) }}", TOO_BIG),
    "method through attr": ("{{ ('x' | attr('rjust'))(10**10) }}", TOO_BIG),
    "str.format width": ("{{ '{:>10000000000}'.format(1) }}", TOO_BIG),
    "printf width": ("{{ '%10000000000d' % 1 }}", TOO_BIG),
    "printf star": ("{{ '%*d' % (10**10, 1) }}", TOO_BIG),
    "format filter": ("{{ '%10000000000s' | format('x') }}", TOO_BIG),
    "power": ("{{ 10 ** 10000000 }}", "bits"),
    "repeated squaring": ("{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
                          "{% endfor %}", "bits"),
    "str.replace": (BIG + "{{ s.replace('x', s) }}", TOO_BIG),
    "replace filter": (BIG + "{{ s | replace('', s) }}", TOO_BIG),
    "str.translate": (BIG + "{{ s.translate({120: s}) }}", TOO_BIG),
    "str.expandtabs": ("{{ ('\t' * 1000000).expandtabs(100000) }}", TOO_BIG),
    "int.to_bytes": ("{{ (1).to_bytes(10**10, 'big') }}", TOO_BIG),
    "join of one value": (BIG + "{{ range(100000) | map(attribute='no', default=s) | join }}", TOO_BIG),
    "join separator": ("{{ range(100000) | join('x' * 1000000) }}", TOO_BIG),
    "batch of one value": (BIG + "{% for b in range(100000) | map(attribute='no', default=s) | batch(100000) %}"
                           "{% endfor %}", "characters long"),
    "dict.fromkeys": (BIG + "{{ {}.fromkeys(range(100000), s) }}", "characters long"),
    "set block in a loop": (BIG + "{% set y %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endset %}",
                            "wrote more than"),
    "macro output": (BIG + "{% macro m() %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endmacro %}{{ m() }}",
                     "wrote more than"),
    "output": (BIG + "{% for i in range(100000) %}{{ s }}{% endfor %}", "output passed"),
    "many medium values": ("{% for i in range(100000) %}{% set t = 'x' * 4000000 %}{% endfor %}", "in all"),
    "round precision": ("{{ 10 | round(-10**8) }}", "digits"),
    "batch fill": ("{{ [1] | batch(10**10, 'x') | list }}", "at most 100,000"),
    "slice count": ("{{ [1] | slice(10**10) | list }}", "at most 100,000"),
    "sum of lists": ("{{ range(100000) | map('list') | sum(start=[]) }}", "numbers only"),
    "indent width": ("{{ ('x\\n' * 1000000) | indent(1000) }}", TOO_BIG),
    "wordwrap input": ("{{ ('x ' * 4000000) | wordwrap(1) }}", "at most"),
    "split into entries": ("{{ ('x' * 8000000).split('x') | unique | list | length }}", "entries"),
    "macro recursion": ("{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}", "RecursionError"),
}


def _render_attacks() -> None:
    """In the child: render each {name: template} read on stdin; one JSON line per attack."""
    import resource

    if sys.platform.startswith("linux"):  # whatever slips through raises MemoryError past 1.5 GB more
        vm = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 29), resource.getrlimit(resource.RLIMIT_AS)[1]))
    for name, source in json.load(sys.stdin).items():
        tic = time.monotonic()
        try:
            chat_template.render(source, "evil/chat_template.jinja", messages=[])
            message = None
        except chat_template.TemplateFailed as e:
            message = str(e)
        print(json.dumps({"name": name, "seconds": time.monotonic() - tic, "message": message}), flush=True)


@pytest.fixture(scope="module")
def attacked():
    """name -> (seconds, message) of every attack, rendered one after another in one child process."""
    code = "from tests.hostile.test_templates import _render_attacks; _render_attacks()"
    try:
        out = subprocess.run([sys.executable, "-c", code], input=json.dumps({k: v[0] for k, v in ATTACKS.items()}),
                             capture_output=True, text=True, cwd=ROOT, timeout=120).stdout
    except subprocess.TimeoutExpired as e:  # the attacks that finished still count
        out = (e.stdout or b"").decode()
    return {r["name"]: (r["seconds"], r["message"]) for r in map(json.loads, out.splitlines())}


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_stops_in_one_line(attacked, name):
    assert name in attacked, f"{name}: the child died or hung before it finished"
    seconds, message = attacked[name]
    assert message is not None, f"{name}: rendered without an error"
    assert message.startswith("evil/chat_template.jinja: the chat template "), message
    assert "\n" not in message and len(message) < 500 and "MemoryError" not in message
    assert ATTACKS[name][1] in message, message
    assert "at line 1" in message or "output passed" in message, message
    assert seconds < TIME_LIMIT_S + 1.5, f"{name}: {seconds:.1f} s"


# ---------------------------------------------------------------- real templates render as transformers renders them

FEATURES = """{#- macros, recursion, namespaces, loops with else and filters: what the budget hooks into #}
{%- macro render(v, depth=0) -%}
  {%- if v is mapping -%}{ {%- for k, x in v | dictsort -%}{{ k }}: {{ render(x, depth + 1) }}
    {%- if not loop.last %}, {% endif %}{%- endfor -%} }
  {%- elif v is iterable and v is not string -%}[{{ v | map('string') | join(', ') }}]
  {%- else -%}{{ v }}{%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(n=0, roles=[]) -%}
{%- for m in messages -%}
  {%- set ns.n = ns.n + m.content | length -%}{%- set ns.roles = ns.roles + [m.role] -%}
  {%- set header %}<|{{ m.role | upper }}|>{% endset -%}
  {{ header }}{{ m.content | trim | replace('\\n', ' ') }}{% if loop.last %} ({{ loop.length }}){% endif %}
{% else %}(no messages)
{%- endfor -%}
{%- for group in messages | groupby('role') %}{{ group.grouper }}={{ group.list | length }} {% endfor -%}
{{ ns.n }} {{ ns.roles | unique | list | tojson }} {{ '%-6s|%3d' % ('ab', 7) }} {{ '{:>4}'.format('z') }}
{{ render(tools) }} {{ tools | tojson(indent=2) if tools else '' }} {{ 'x' * 3 ~ [1, 2] | sum ~ (2 ** 10) }}
{%- for row in range(7) | batch(3, 0) %}{{ row }}{% endfor %}{{ range(5) | slice(2) | list }}
{%- filter center(20) %}{{ 'mid' }}{% endfilter %}{{ 'a,b'.split(',') | reverse | join }}{{ lipsum(1, false, 3, 4) | length > 0 }}"""
LONG_CHAT = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i}: " + "word " * 200} for i in range(400)]


def _templates():
    from tests.test_tokenizer import CHATML_TEMPLATE, LLAMA3_LIKE_TEMPLATE

    default = Path(chat_template.__file__).parent / "assets" / "default" / "chat_template.jinja"
    return {"features": FEATURES, "llama3-like": LLAMA3_LIKE_TEMPLATE, "chatml": CHATML_TEMPLATE,
            "builtin llama3": chat_template.LLAMA3_TEMPLATE, "tiny": TEMPLATE,
            **({"default model": default.read_text()} if default.is_file() else {})}


@pytest.mark.parametrize("name", list(_templates()))
def test_real_templates_render_as_transformers_does(name):
    from transformers.utils.chat_template_utils import render_jinja_template

    from tests.test_tokenizer import MESSAGES, TOOLS

    source = _templates()[name]
    for messages, tools in ((MESSAGES, None), (MESSAGES, TOOLS), (LONG_CHAT, TOOLS), ([], None)):
        context = dict(add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
        try:
            expected = render_jinja_template([messages], tools=tools, chat_template=source, **context)[0][0]
        except Exception as e:  # the template refuses these messages: then ours refuses them too
            with pytest.raises(chat_template.TemplateFailed, match=type(e).__name__ if name == "features" else ""):
                chat_template.render(source, name, messages=messages, tools=tools, documents=None, **context)
            continue
        tic = time.perf_counter()
        assert chat_template.render(source, name, messages=messages, tools=tools, documents=None, **context) == expected
        assert time.perf_counter() - tic < 1.0  # far inside the budget, even for a 400-turn chat


def test_a_large_legitimate_prompt_fits():
    """A megabyte-sized chat and a long document render: the limits are far above real prompts."""
    document = "paragraph of a long pasted document. " * 100_000  # 3.7 MB, about a million tokens
    text = chat_template.render(chat_template.LLAMA3_TEMPLATE, messages=[{"role": "user", "content": document}],
                                add_generation_prompt=True, bos_token="<s>")
    assert len(text) > len(document)
    assert len(text) < MAX_SIZE


# ---------------------------------------------------------------- the one line: which file, which line, what


def test_errors_name_the_line_and_stay_one_line():
    def failure(source, **context):
        with pytest.raises(chat_template.TemplateFailed) as e:
            chat_template.render(source, "f.jinja", messages=[], **context)
        return str(e.value)

    assert failure("a\nb\n{% for %}") == ("f.jinja: the chat template failed at line 3: TemplateSyntaxError: "
                                          "Expected an expression, got 'end of statement block'")
    assert failure("\n\n{{ raise_exception('no\n\nsystem   role') }}") == \
        "f.jinja: the chat template refused at line 3: no system role"
    long = failure("{{ raise_exception('x' * 100000) }}")
    assert len(long) < 500 and long.endswith("...")
    assert failure("\n{{ 1 + 'a' }}").startswith("f.jinja: the chat template failed at line 2: TypeError: ")
    assert "unsafe" in failure("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    too_long = failure("x" * (chat_template.MAX_SOURCE + 1))
    assert too_long.startswith("f.jinja: the chat template is 262,145 characters long")


@pytest.mark.parametrize("where", ["chat_template.jinja", "chat_template.json", "tokenizer_config.json"])
def test_tokenizer_names_the_template_file(tmp_path, where):
    evil = "{% for i in range(2) %}{% endfor %}\n{{ 'x' * 10**10 }}"
    save_ascii_tokenizer(tmp_path, chat_template=evil if where == "tokenizer_config.json" else TEMPLATE)
    if where == "chat_template.jinja":
        (tmp_path / where).write_text(evil)
    elif where == "chat_template.json":
        (tmp_path / where).write_text(json.dumps({"chat_template": evil}))
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "hi"}])
    assert str(e.value).startswith(f"{tmp_path / where}: the chat template was stopped at line 2: the * operator ")


def test_generate_with_a_hostile_template(tmp_path):
    """End to end: `mlxm generate --chat` stops the template, prints one line naming it, exits 1."""
    folder = build_tiny(tmp_path / "model")
    (folder / "chat_template.jinja").write_text("{# a loop of 10^10 steps #}\n" + LOOPS)
    run = mlxm(["generate", "-m", folder, "--chat", "-p", "hi", "--max-tokens", "2"], timeout=60)
    line = assert_refused(run, f"{folder / 'chat_template.jinja'}: ", "stopped at line 2", "time limit", within=20)
    assert run.stdout == ""
    assert line.startswith("mlxm: error: ")
