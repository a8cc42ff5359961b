"""Chat templates: Hugging Face's Jinja2 dialect, rendered in a sandbox.

A template comes from a model folder we do not trust, so it runs in Jinja2's
ImmutableSandboxedEnvironment (no escapes through dunder attributes, no mutation of the
objects we pass in) with a time and size budget on top (template_budget: a template that
loops forever or builds gigabytes stops within seconds). Everything else matches
transformers' environment (trim_blocks, lstrip_blocks, loop controls, `raise_exception`,
`strftime_now`, a `tojson` that keeps non-ASCII, `{% generation %}` blocks), so a prompt
renders here exactly as it does there. Any failure is one line naming the template's file.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols

from mlxmodels import template_budget
from mlxmodels.template_budget import BudgetExceeded
from mlxmodels.template_sandbox import BudgetedSandbox, bounded_json

MAX_SOURCE = 256 << 10  # characters of template source: real ones are under 30 KB; 256 KB compile in ~1.5 s

# Meta's Llama 3 Instruct template, for models whose tokenizer comes only as tiktoken files.
LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks.

    transformers tracks those spans; for inference only the body matters, so render it as is.
    """

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class TemplateRaised(jinja2.TemplateError):
    """The template's own `raise_exception(message)`: it refuses these messages."""


def _raise_exception(message):
    raise TemplateRaised(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters and non-ASCII; templates expect plain JSON (as json.dumps).
    return bounded_json(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                        sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


_ENV = BudgetedSandbox(
    trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols], filters={"tojson": _tojson},
    globals={"raise_exception": _raise_exception, "strftime_now": _strftime_now},
)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


class TemplateFailed(ValueError):
    """A chat template that did not render; the message is one line naming its file, line and what happened."""


def render(source: str, origin: str = "the chat template", /, **context) -> str:
    """Render template `source` with `context` within the budget (template_budget); `origin` names the template
    (its file) in a TemplateFailed when it does not render."""
    if len(source) > MAX_SOURCE:
        raise TemplateFailed(f"{origin}: the chat template is {len(source):,} characters long; chat templates are "
                             f"at most {MAX_SOURCE:,}")
    try:
        with template_budget.scope():  # compiling folds constant parts, calling filters: within a budget too
            template = _compile(source)
        with template_budget.scope() as budget:  # a budget of its own: the same whether compiled now or cached
            parts, size = [], 0
            for part in template.generate(**context):
                size += len(part)
                if size > template_budget.MAX_SIZE:
                    raise BudgetExceeded(f"its output passed {template_budget.MAX_SIZE:,} characters")
                budget.tick()
                parts.append(part)
    except Exception as e:  # syntax errors, raise_exception(), the sandbox, the budget, type errors, ...
        raise TemplateFailed(f"{origin}: {_describe(e)}") from None
    return "".join(parts)


def _describe(e: Exception) -> str:
    line = getattr(e, "lineno", None) if isinstance(e, jinja2.TemplateSyntaxError) else _template_line(e)
    at = f" at line {line}" if line else ""
    if isinstance(e, TemplateRaised):
        what = f"the chat template refused{at}: {e.message}"
    elif isinstance(e, BudgetExceeded):
        what = f"the chat template was stopped{at}: {e.message}"
    else:
        what = f"the chat template failed{at}: {type(e).__name__}: {getattr(e, 'message', None) or e}"
    what = " ".join(str(what).split())  # one line, whatever the message held
    return what if len(what) <= 400 else what[:400] + " ..."


def _template_line(e: Exception) -> int | None:
    """The template line where `e` was raised: Jinja gives the template's frames its file name and line numbers."""
    line, tb = None, e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
