"""How much of Hugging Face `transformers` the gradient path analysis follows, and whether it is right there.

    python benchmarks/hf_coverage.py [--check] [--out hf-coverage.csv] [MODEL ...]

Needs `transformers` (with `huggingface_hub` and `safetensors`), which this project does not
depend on. Builds each architecture untrained from a tiny config (2 layers, 32 features, eager
attention), wrapped so that it returns one tensor (its logits, or its last hidden state), and
analyses it (`analyze_model`) on 8 token ids or a 3 x 32 x 32 image, then the model as it is, on
the input alone (every tensor of its output counts: the `direct_*` columns); with `--check` it also
compares every channel group's timestamps with the measured ones (`structure_check`). BLOOM's
custom autograd GELU is analysed with `trust_custom_backward` (the check measures its backward). Each model
runs in a process of its own (`timm_coverage.coverage_main`). Prints one row per model and writes
them as CSV.
"""

from __future__ import annotations

import time
from typing import Any

from timm_coverage import coverage_main

TOKENS, IMAGE = (8,), (3, 32, 32)
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TEXT = {"vocab_size": 100, "max_position_embeddings": 32}
EAGER = {"attn_implementation": "eager"}
CAUSAL = {"use_cache": False}
TRUSTED_BACKWARD = {"bloom"}  # its GELU is a custom autograd Function whose backward is GELU's derivative
# name: (model class, config class, config kwargs, output field, input, extra forward kwargs)
MODELS: dict[str, tuple[str, str, dict[str, Any], str, tuple[int, ...], dict[str, Any]]] = {
    "bert": ("BertForSequenceClassification", "BertConfig", {**TEXT, **TINY, **EAGER, "num_labels": 3},
             "logits", TOKENS, {}),
    "distilbert": ("DistilBertForSequenceClassification", "DistilBertConfig",
                   {**TEXT, **EAGER, "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "num_labels": 3},
                   "logits", TOKENS, {}),
    "albert": ("AlbertForSequenceClassification", "AlbertConfig",
               {**TEXT, **TINY, **EAGER, "embedding_size": 16, "num_labels": 3}, "logits", TOKENS, {}),
    "electra": ("ElectraForSequenceClassification", "ElectraConfig",
                {**TEXT, **TINY, **EAGER, "embedding_size": 16, "num_labels": 3}, "logits", TOKENS, {}),
    "deberta-v2": ("DebertaV2ForSequenceClassification", "DebertaV2Config", {**TEXT, **TINY, "num_labels": 3},
                   "logits", TOKENS, {}),
    "mpnet": ("MPNetForSequenceClassification", "MPNetConfig",
              {**TINY, "vocab_size": 100, "max_position_embeddings": 40, "num_labels": 3}, "logits", TOKENS, {}),
    "t5-encoder": ("T5EncoderModel", "T5Config",
                   {"vocab_size": 100, "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2},
                   "last_hidden_state", TOKENS, {}),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config",
             {**EAGER, "vocab_size": 100, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 2},
             "logits", TOKENS, CAUSAL),
    "llama": ("LlamaForCausalLM", "LlamaConfig", {**TEXT, **TINY, **EAGER, "num_key_value_heads": 1},
              "logits", TOKENS, CAUSAL),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", {**TEXT, **TINY, **EAGER, "num_key_value_heads": 1},
              "logits", TOKENS, CAUSAL),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", {**TEXT, **TINY, **EAGER, "num_key_value_heads": 1, "head_dim": 16},
              "logits", TOKENS, CAUSAL),
    "phi": ("PhiForCausalLM", "PhiConfig", {**TEXT, **TINY, **EAGER}, "logits", TOKENS, CAUSAL),
    "gpt-neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", {**TEXT, **TINY, **EAGER}, "logits", TOKENS, CAUSAL),
    "opt": ("OPTForCausalLM", "OPTConfig", {**TEXT, **EAGER, "hidden_size": 32, "num_hidden_layers": 2,
                                             "ffn_dim": 64, "num_attention_heads": 2, "word_embed_proj_dim": 32},
            "logits", TOKENS, CAUSAL),
    "falcon": ("FalconForCausalLM", "FalconConfig",
               {**EAGER, "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
               "logits", TOKENS, CAUSAL),
    "bloom": ("BloomForCausalLM", "BloomConfig",
              {**EAGER, "vocab_size": 100, "hidden_size": 32, "n_layer": 2, "n_head": 2}, "logits", TOKENS, CAUSAL),
    "vit": ("ViTForImageClassification", "ViTConfig", {**TINY, **EAGER, "image_size": 32, "patch_size": 8,
                                                       "num_labels": 3}, "logits", IMAGE, {}),
    "deit": ("DeiTForImageClassification", "DeiTConfig", {**TINY, **EAGER, "image_size": 32, "patch_size": 8,
                                                          "num_labels": 3}, "logits", IMAGE, {}),
    "beit": ("BeitForImageClassification", "BeitConfig",
             {**TINY, **EAGER, "image_size": 32, "patch_size": 8, "num_labels": 3, "use_relative_position_bias": True},
             "logits", IMAGE, {}),
    "dinov2": ("Dinov2ForImageClassification", "Dinov2Config", {**TINY, **EAGER, "image_size": 32, "patch_size": 8,
                                                                "num_labels": 3}, "logits", IMAGE, {}),
    "clip-vision": ("CLIPVisionModelWithProjection", "CLIPVisionConfig",
                    {**TINY, **EAGER, "image_size": 32, "patch_size": 8, "projection_dim": 16}, "image_embeds", IMAGE,
                    {}),
    "swin": ("SwinForImageClassification", "SwinConfig",
             {"image_size": 32, "patch_size": 2, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2],
              "window_size": 4, "num_labels": 3}, "logits", IMAGE, {}),
    "convnext": ("ConvNextForImageClassification", "ConvNextConfig",
                 {"num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 1], "num_labels": 3}, "logits", IMAGE, {}),
    "resnet": ("ResNetForImageClassification", "ResNetConfig",
               {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "num_labels": 3}, "logits", IMAGE, {}),
    "mobilevit": ("MobileViTForImageClassification", "MobileViTConfig", {"image_size": 32, "num_labels": 3},
                  "logits", IMAGE, {}),
    "segformer": ("SegformerForImageClassification", "SegformerConfig",
                  {"num_encoder_blocks": 2, "depths": [1, 1], "sr_ratios": [2, 1], "hidden_sizes": [8, 16],
                   "num_attention_heads": [1, 2], "patch_sizes": [7, 3], "strides": [4, 2], "num_labels": 3},
                  "logits", IMAGE, {}),
}


def _build(name: str) -> tuple[Any, tuple[int, ...], Any]:
    """The untrained model `name` wrapped to return one tensor, its input shape and dtype."""
    import torch
    import transformers

    model_class, config_class, config, field, shape, forward = MODELS[name]

    class OneOutput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return getattr(self.model(x, **forward), field)

    return OneOutput().eval(), shape, torch.long if shape == TOKENS else torch.float32


def _report(name: str, model: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    from gradpath_lib.analysis import analyze_model

    return analyze_model(model, shape, dtype, trust_custom_backward=name in TRUSTED_BACKWARD)


def _analysis(name: str) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    start = time.time()
    model, shape, dtype = _build(name)
    try:
        net = _report(name, model, shape, dtype).network
    except Exception as err:  # noqa: BLE001 - the message is the result
        return {"analysed": False, "error": str(err).split(";")[0][:200]}
    row = {"analysed": True, "trusted_custom_backward": name in TRUSTED_BACKWARD,
           "weighted_layers": net["n_weighted_layers"], "groups": net["n_groups"],
           "longest_shortest_path": net["longest_shortest_path"], "longest_path": net["longest_path"],
           "seconds": round(time.time() - start, 1)}
    try:
        return {**row, "direct_groups": _report(name, model.model, shape, dtype).network["n_groups"]}
    except Exception as err:  # noqa: BLE001
        return {**row, "direct_error": str(err).split(";")[0][:200]}


def _check(name: str) -> dict:
    import warnings

    from gradpath_lib.analysis.measured import structure_check

    warnings.filterwarnings("ignore")
    start = time.time()
    model, shape, dtype = _build(name)
    row = {"groups_agreeing": int(structure_check(model, shape, dtype, report=_report(name, model, shape, dtype))
                                  .agrees.sum())}
    try:
        direct = structure_check(model.model, shape, dtype, report=_report(name, model.model, shape, dtype))
        row["direct_groups_agreeing"] = int(direct.agrees.sum())
    except Exception:  # noqa: BLE001 - the analysis row already names why
        pass
    return row | {"check_seconds": round(time.time() - start, 1)}


if __name__ == "__main__":
    coverage_main(__doc__.split("\n\n")[0], list(MODELS), _analysis, _check, "hf-coverage.csv")
