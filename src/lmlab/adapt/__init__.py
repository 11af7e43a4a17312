"""Language and vocabulary adaptation (issue 19): extend a model's vocabulary or swap its tokenizer, and
initialise the new embedding rows (WECHSEL, mean, random, FOCUS-style overlap copying).

Entry points: ``extend_vocabulary``, ``swap_tokenizer``, ``wechsel_mapping``, ``read_dictionary``.
"""

from lmlab.adapt.dictionary import read_dictionary
from lmlab.adapt.extend import extend_vocabulary
from lmlab.adapt.resize import RowMapping, apply_row_mapping
from lmlab.adapt.swap import swap_tokenizer
from lmlab.adapt.wechsel import WechselConfig, wechsel_mapping

__all__ = ["RowMapping", "WechselConfig", "apply_row_mapping", "extend_vocabulary", "read_dictionary",
           "swap_tokenizer", "wechsel_mapping"]
