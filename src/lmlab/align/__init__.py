"""Preference alignment: preference data, DPO, reward models (Bradley–Terry, HaF-RM), best-of-N and rejection
sampling, InfAlign's calibrate-and-transform rewards, SPIN.

Every objective here is a small class on the one Trainer (``lmlab.train``), registered by name
(``dpo``, ``reward``, ``haf_rm``), so it composes with LoRA, HFT and the forgetting regularisers.
"""
