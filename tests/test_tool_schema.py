"""Python functions as tools: tool_schema builds the schema transformers' get_json_schema builds, without transformers,
and apply_chat_template(tools=[function]) renders what transformers renders for a real template.

transformers is the oracle here only; mlxmodels must not import it (checked in a fresh interpreter).
"""
# ruff: noqa: UP006, UP007, UP045, PYI016, PYI041, PYI061, PLW0211  (the old typing spellings are cases under test)

import enum
import random
import subprocess
import sys
import typing
from typing import Any, Literal, Optional, Union

import pytest

from mlxmodels import tool_schema
from mlxmodels.tokenizer import TokenizerError, load_tokenizer
from tests.oracle import save_byte_tokenizer
from tests.test_chat_templates import LLAMA3, QWEN, TEMPLATES

transformers_utils = pytest.importorskip("transformers.utils.chat_template_utils")
REFUSED = (ValueError, TypeError, NameError, transformers_utils.TypeHintParsingException,
           transformers_utils.DocstringParsingException)  # how transformers refuses a function


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


def get_weather(city: str, unit: str = "celsius", days: int = 1) -> str:
    """Current weather in a city.

    Looks it up in the forecast.

    Args:
        city: The city, e.g. "Köln"
        unit: The unit (choices: ["celsius", "fahrenheit"])
        days: How many days
            to forecast, today included

    Returns:
        The forecast as text.
    """


def scalars(a: int, b: float, c: str, d: bool, e: None, f: Any):
    """Every scalar.

    Args:
        a (int): an int
        b (float): a float
        c: a str
        d: a bool
        e: nothing
        f: anything
    """


def optionals(x: Optional[int], y: int | None = None, z: Union[int, str] = 0, w: Union[int, str, None] = None,
              v: Optional[list[str]] = None, u: Union[int, list[int]] = 0, t: Union[float, int, float] = 1):
    """Optional and Union.

    Args:
        x: maybe an int
        y: maybe an int, PEP 604
        z: int or str
        w: int, str or null
        v: maybe strings
        u: an int or ints
        t: numbers
    """


def containers(a: list[str], b: list, c: dict, d: dict[str, int], e: tuple[int, str], f: tuple,
               g: typing.List[float], h: typing.Dict[str, list[bool]], i: list[dict[str, Any]]) -> dict[str, int]:
    """Containers.

    Args:
        a: strings
        b: a list
        c: an object
        d: str -> int
        e: a pair
        f: a tuple
        g: floats, old style
        h: lists of flags by name
        i: records
    """


def choices(mode: Literal["fast", "slow"], n: Literal[1, 2, 3], mixed: Literal["a", 1, True, None],
            color: Color, level: Level = Level.LOW, pick: str = "x", opt: Optional[Literal["on", "off"]] = None):
    """Enums of every kind

    Args:
        mode: how fast
        n: how many
        mixed: a mix
        color: a color
        level: a level
        pick: one of them (Choices: [" x ", "y", 3])
        opt: maybe a switch
    """


def returns_none(query: str) -> None:
    """Search.

    Args:
        query: What to search for.
    Raises:
        ValueError: never
    """


def no_return_doc(query: str) -> list[str]:
    """Search and list.

    Args:
      query:
        What to search for,
        over two lines.
    """


def custom_return(query: str) -> Color.__class__:
    """A return hint with no schema is left out.

    Args:
        query: the query
    """


def no_params() -> int:
    """Takes nothing."""


def nested_args(config: dict, verbose: bool = False):
    """Args with nested entries.

    Args:
        config: the settings:
            depth: how deep
            width: how wide
        verbose: talk more
    """


class Toolbox:
    def lookup(self, key: str, exact: bool = True) -> Optional[str]:
        """Look a key up.

        Args:
            key: the key
            exact: match exactly
        Returns:
            The value, or None.
        """

    @classmethod
    def make(cls, size: int):
        """Make one.

        Args:
            size: how big
        """

    @staticmethod
    def helper(self, x: int):
        """`self` without a hint is skipped, even here.

        Args:
            x: a number
        """


GOOD = [get_weather, scalars, optionals, containers, choices, returns_none, no_return_doc, custom_return, no_params,
        nested_args, Toolbox().lookup, Toolbox.make, Toolbox.helper, Toolbox.lookup]


@pytest.mark.parametrize("func", GOOD, ids=lambda f: f.__qualname__)
def test_schema_as_transformers(func):
    assert tool_schema.function_schema(func) == transformers_utils.get_json_schema(func)


def test_schema_details():
    schema = tool_schema.function_schema(get_weather)["function"]
    assert schema["description"] == "Current weather in a city.\n\nLooks it up in the forecast."
    assert schema["parameters"]["required"] == ["city"]
    assert schema["parameters"]["properties"]["unit"] == {
        "type": "string", "enum": ["celsius", "fahrenheit"], "description": "The unit"}
    assert schema["parameters"]["properties"]["days"]["description"] == "How many days to forecast, today included"
    assert schema["return"] == {"type": "string", "description": "The forecast as text."}


def no_doc(x: int):
    pass


def undocumented_arg(x: int, y: int):
    """Adds.

    Args:
        x: the first
    """


def unhinted(x, y: int):
    """Adds.

    Args:
        x: the first
        y: the second
    """


def custom_type(x: Toolbox):
    """Uses a toolbox.

    Args:
        x: the box
    """


def one_tuple(x: tuple[int]):
    """One.

    Args:
        x: a one-tuple
    """


def open_tuple(x: tuple[int, ...]):
    """Any length.

    Args:
        x: numbers
    """


def bad_literal(x: Literal[b"raw"]):
    """Bytes.

    Args:
        x: raw
    """


def bad_forward_ref(x: "Missing"):  # noqa: F821
    """Unresolvable.

    Args:
        x: something
    """


def bad_choices(x: str):
    """Broken choices.

    Args:
        x: one of (choices: [a, b])
    """


def abstract_generic(x: typing.Sequence[str]):
    """Sequence.

    Args:
        x: strings
    """


class Empty(enum.Enum):
    pass


def empty_enum(x: Empty):
    """Nothing.

    Args:
        x: never
    """


@pytest.mark.parametrize("func, match", [
    (no_doc, "'no_doc' has no docstring"),
    (undocumented_arg, "'undocumented_arg'.*no description for the parameter 'y'"),
    (unhinted, "'unhinted'.*parameter 'x' has no type hint"),
    (custom_type, "'custom_type'.*parameter 'x'.*Toolbox.*no JSON schema"),
    (one_tuple, "'one_tuple'.*tuple of one element"),
    (open_tuple, "'open_tuple'.*'...'"),
    (bad_literal, "'bad_literal'.*not all JSON scalars"),
    (bad_forward_ref, "'bad_forward_ref'.*type hints cannot be resolved.*Missing"),
    (bad_choices, "'bad_choices'.*choices.*not JSON"),
    (abstract_generic, "'abstract_generic'.*no JSON schema"),
    (empty_enum, "'empty_enum'.*no members"),
    (lambda x: x, "'<lambda>' has no docstring"),
])
def test_what_transformers_refuses_is_one_clear_error(func, match):
    with pytest.raises(REFUSED):
        transformers_utils.get_json_schema(func)
    with pytest.raises(tool_schema.ToolSchemaInvalid, match=match):
        tool_schema.function_schema(func)


PIECES = ["Args:", "Returns:", "Raises:", "Note:", "x:", "y (int):", "z(str, optional):", "  x:", "    y:", "\tz:",
          "word", "two words", "e.g. a: b", "(choices: [\"a\", \"b\"])", "(choices: [1, 2]) ", "", " ", "\n", "\n\n",
          "\n  ", "\n    ", "Args:\n", "\nArgs:\n", "\nReturns:\n", "MyArgs:", "x: Returns: y", "ünï: cödé"]


def test_docstring_parsing_as_transformers():
    """Random Google-ish docstrings, edge cases included (empty entries, deeper-indented entries, markers mid-line,
    duplicate names): every section parsed as transformers parses it."""
    rng = random.Random(0)
    for _ in range(3000):
        doc = "".join(rng.choice(PIECES) + rng.choice(["", " ", "\n", "\n    ", "\n  "])
                      for _ in range(rng.randint(1, 14))).strip()
        theirs = transformers_utils.parse_google_format_docstring(doc)
        assert tool_schema.parse_docstring(doc) == theirs, repr(doc)


# ------------------------------------------------------------------ through apply_chat_template


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from transformers import AutoTokenizer

    out = {}
    for name, specials in {"Qwen3-0.6B.jinja": QWEN, "Llama-3.1-8B-Instruct.jinja": LLAMA3}.items():
        folder = tmp_path_factory.mktemp(name.removesuffix(".jinja"))
        fast = save_byte_tokenizer(folder)
        fast.add_special_tokens({k: v for k, v in specials.items() if v is not None})
        fast.chat_template = (TEMPLATES / name).read_text(encoding="utf-8")
        fast.save_pretrained(folder)
        out[name] = (load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder)))
    return out


CHAT = [{"role": "user", "content": "Weather in Köln?"}]


@pytest.mark.parametrize("name", ["Qwen3-0.6B.jinja", "Llama-3.1-8B-Instruct.jinja"])
def test_function_tools_render_as_transformers(tokenizers, name):
    ours, theirs = tokenizers[name]
    tools = [get_weather, tool_schema.function_schema(scalars), choices, Toolbox().lookup, containers]
    expected = theirs.apply_chat_template(CHAT, tools=tools, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(CHAT, tools=tools) == expected
    assert "get_weather" in expected and "fahrenheit" in expected


@pytest.mark.parametrize("tools, match", [
    ([get_weather, no_doc], r"tools\[1\]: tool function 'no_doc' has no docstring"),
    ([unhinted], r"tools\[0\]: .*'x' has no type hint"),
    ([print], "JSON schemas .* or of Python functions"),
    ([Toolbox], "JSON schemas"),
])
def test_unusable_function_tools_are_one_clear_error(tokenizers, tools, match):
    ours, theirs = tokenizers["Qwen3-0.6B.jinja"]
    with pytest.raises(REFUSED):
        theirs.apply_chat_template(CHAT, tools=tools, tokenize=False)
    with pytest.raises(TokenizerError, match=match):
        ours.apply_chat_template(CHAT, tools=tools)


def test_mlxmodels_does_not_import_transformers():
    code = ("import sys, mlxmodels.tokenizer, mlxmodels.tool_schema, mlxmodels.chat_messages; "
            "sys.exit('transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
