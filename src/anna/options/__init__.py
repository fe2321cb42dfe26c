"""The bag of options. Concrete options live in their own modules and register themselves by name.

`anna.options.apply.apply` quantizes a component as a plan says; it is not imported here (it needs the plan module,
which itself needs the registry).
"""

from anna.options.registry import (
    DEFAULT_BAG,
    FP16,
    Option,
    QuantOption,
    get_option,
    option_names,
    parse_bag,
    quant_option,
    register_option,
)
from anna.units import Storage

__all__ = [
    "DEFAULT_BAG",
    "FP16",
    "Option",
    "QuantOption",
    "Storage",
    "get_option",
    "option_names",
    "parse_bag",
    "quant_option",
    "register_option",
]
