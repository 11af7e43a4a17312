"""Language and vocabulary adaptation (issue 19): extend a model's vocabulary or swap its tokenizer, and
initialise the new embedding rows (WECHSEL, mean, random, FOCUS-style overlap copying); measure language
similarity from a multilingual model (mPLM-Sim); fine-tune translation through language-aware neurons (LANDeRMT).

Entry points: ``extend_vocabulary``, ``swap_tokenizer``, ``wechsel_mapping``, ``read_dictionary``;
``language_similarity`` / ``rank_correlation`` / ``select_source`` (``lmlab.adapt.mplm_sim``);
``awareness_scores`` / ``classify_neurons`` / ``NeuronRouter`` (``lmlab.adapt.landermt``);
``extended_languages`` / ``tree_distance`` (``lmlab.adapt.language_family``); dynamic tokenization:
``batch_merges`` / ``EmbeddingHypernet`` / ``dynamic_logits`` / ``dynamic_nll`` / ``train_hypernet``
(``lmlab.adapt.dynamic_tokenization``); the ``adapt-vocab`` recipe: ``AdaptVocabRecipe`` / ``load_recipe``.
"""

from lmlab.adapt.batch_merges import DynamicBatch, batch_merges
from lmlab.adapt.dictionary import read_dictionary
from lmlab.adapt.dynamic_tokenization import (
    DynamicTokenizationConfig,
    EmbeddingHypernet,
    dynamic_logits,
    dynamic_nll,
    train_hypernet,
)
from lmlab.adapt.extend import extend_vocabulary
from lmlab.adapt.landermt import LandermtConfig, LanguageNeurons, NeuronRouter, awareness_scores, classify_neurons
from lmlab.adapt.language_family import extended_languages, tree_distance
from lmlab.adapt.recipe import AdaptVocabRecipe, load_recipe
from lmlab.adapt.mplm_sim import SimilarityResult, language_similarity, rank_correlation, select_source
from lmlab.adapt.resize import RowMapping, apply_row_mapping
from lmlab.adapt.swap import swap_tokenizer
from lmlab.adapt.wechsel import WechselConfig, wechsel_mapping

__all__ = ["AdaptVocabRecipe", "DynamicBatch", "DynamicTokenizationConfig", "EmbeddingHypernet", "LandermtConfig",
           "LanguageNeurons", "NeuronRouter", "RowMapping", "SimilarityResult", "WechselConfig",
           "apply_row_mapping", "awareness_scores", "batch_merges", "classify_neurons", "dynamic_logits",
           "dynamic_nll", "extend_vocabulary", "extended_languages", "language_similarity", "load_recipe",
           "rank_correlation", "read_dictionary", "select_source", "swap_tokenizer", "train_hypernet",
           "tree_distance", "wechsel_mapping"]
