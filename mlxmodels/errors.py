"""The user-facing error every reader and loader raises (one floor below all of them, so none imports another
just for it)."""


class ModelError(ValueError):
    """A user-facing problem with a model folder; the message says what is wrong and what to do."""


class ContextError(ModelError):
    """More tokens than a model can place: past its learned positions (GPT-2's table has no row for them)."""
