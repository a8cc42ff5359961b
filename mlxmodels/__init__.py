"""mlxmodels: the modern open-weights decoder family on MLX."""

from . import blas  # noqa: F401  (first: a fast BLAS must be loaded before mlx.core on Linux)
from . import kernel_cache  # noqa: F401  (before mlx.core too: where MLX may load compiled kernels from)

from .generate import generate, stream_generate  # noqa: F401  (rebinds the name `generate` to the function)
from .load import load  # noqa: F401
from .prompt_cache import load_prompt_cache, save_prompt_cache  # noqa: F401
