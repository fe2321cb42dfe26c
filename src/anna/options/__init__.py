"""The bag of options. Concrete options live in their own modules and register themselves by name."""

from anna.options.registry import DEFAULT_BAG, FP16, Option, Storage, get_option, option_names, parse_bag, register_option

__all__ = ["DEFAULT_BAG", "FP16", "Option", "Storage", "get_option", "option_names", "parse_bag", "register_option"]
