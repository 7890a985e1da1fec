"""Network families: search spaces with an exact cost model. Importing this registers the built-ins."""

from bort.families.base import Arch, Cost, Family, Space, family_names, get_family, parse_arch, register_family
from bort.families.bert import BertFamily, load_config
from bort.families.mlp import MLPFamily

__all__ = ["Arch", "BertFamily", "Cost", "Family", "MLPFamily", "Space", "family_names", "get_family",
           "load_config", "parse_arch", "register_family"]
