"""Models: load a pipeline from a spec, find what can be edited, encode prompts."""

from concept_edit.models.loading import ModelInfo, ModelLoadError, load_pipeline, model_info
from concept_edit.models.prompts import (
    concept_token_positions,
    encode_prompts,
    last_token_index,
    tokenize,
)
from concept_edit.models.targets import (
    ROLES,
    CrossAttentionLayer,
    cross_attention_layers,
    get_parameter,
    parameters_by_role,
)

__all__ = [
    "ROLES",
    "CrossAttentionLayer",
    "ModelInfo",
    "ModelLoadError",
    "concept_token_positions",
    "cross_attention_layers",
    "encode_prompts",
    "get_parameter",
    "last_token_index",
    "load_pipeline",
    "model_info",
    "parameters_by_role",
    "tokenize",
]
