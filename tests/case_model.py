"""One of the family test cases (tests/families/test_families.py CASES) built as a tiny checkpoint and loaded."""

import mlxmodels
from tests.families.test_families import CASES
from tests.oracle import build_hf


def load_case(name: str, folder):
    """-> (model, tokenizer, folder) of the tiny `name` checkpoint written into folder."""
    model_type, config, _ = CASES[name]
    build_hf(model_type, folder, **config)
    return (*mlxmodels.load(folder), folder)
