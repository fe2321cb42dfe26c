"""anna: compress a neural network to a size budget with the least loss of output quality.

```python
import anna
q = anna.quantize(pipe_or_module, data, budget=0.55)   # data: prompts for a pipeline, batches for a module
anna.save(q, "ckpt/")                                   # model.safetensors + plan.json
model = anna.load("ckpt/", into=fresh_pipe_or_module)   # the stock object, quantized in place
```
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("quantize", "save", "load", "Quantized", "QuantHandle", "GenerationSettings")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """The API is imported on first use, so `import anna` stays cheap (no torch until it is needed)."""
    if name in ("quantize", "save", "load", "Quantized"):
        from anna import api

        return getattr(api, name)
    if name == "QuantHandle":
        from anna.options.handle import QuantHandle

        return QuantHandle
    if name == "GenerationSettings":
        from anna.adapters.base import GenerationSettings

        return GenerationSettings
    raise AttributeError(f"module 'anna' has no attribute {name!r}")
