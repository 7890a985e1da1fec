"""Network families: search spaces with an exact cost model. Importing this registers the built-ins."""

from bort.families.base import Arch, Cost, Family, Space, family_names, get_family, parse_arch, register_family
from bort.families.bert import BertFamily
from bort.families.mlp import MLPFamily


def resolve_family(family: str | Family = "bert", source=None) -> Family:
    """A family instance: `bert` takes its shape from `source` (default: the embedded MiniLM)."""
    options = {"source": source} if family == "bert" else {}
    return get_family(family, **options) if isinstance(family, str) else family


__all__ = ["Arch", "BertFamily", "Cost", "Family", "MLPFamily", "Space", "family_names", "get_family", "parse_arch",
           "register_family", "resolve_family"]
