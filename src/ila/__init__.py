"""ila: find the layers of an LLM that matter for alignment (ILA, arXiv 2410.17875).

The method is described in docs/method.md. Stage 1 fine-tunes LoRA until training is
epsilon-stable, stage 2 learns a relaxed binary mask over each unit's LoRA update under
a sparsity budget, and the mask ranks the units; stage 3 tunes only the units that matter.

Importing this package is cheap: heavy modules (torch, transformers) are imported by the
submodules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
