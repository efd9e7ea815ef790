"""Language model and projector <-> the LLaVA family's `language_model`, `lm_head` and `multi_modal_projector`.

LLaVA-style models keep the LLM's base model (`model.language_model`, built with `AutoModel.from_config`) apart
from the output head (`lm_head`). Modules are moved, not copied, in both directions: an export or import of
a large LLM needs no second copy of its weights. Tied embeddings stay tied because the head is the same module.

The LLaVA projector is always Linear -> activation -> Linear, which is our `mlp2x_gelu` with exact GELU.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from mllm.connectors import Connector, MLPConnector
from mllm.interop import ExportError

PROJECTOR_NAMES = {"fc1": "linear_1", "fc2": "linear_2"}


def text_parts(llm: PreTrainedModel) -> tuple[nn.Module, nn.Module]:
    """(base model, output head) of a causal LM, refusing heads a LLaVA `lm_head` (bias-free Linear) is not."""
    head = llm.get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise ExportError(f"the LLM's output head {type(head).__name__} is not a bias-free Linear like LLaVA's lm_head")
    return llm.base_model, head


def attach_text(target: nn.Module, llm: PreTrainedModel) -> None:
    """Put `llm`'s base model and head into a LLaVA-family model (sharing them)."""
    base, head = text_parts(llm)
    expected = type(target.model.language_model)
    if type(base) is not expected:
        raise ExportError(f"the LLM's base model is {type(base).__name__}, but LLaVA builds {expected.__name__} "
                          "from its config")
    target.model.language_model = base
    target.lm_head = head


def detach_text(source: nn.Module, text_config: PretrainedConfig) -> PreTrainedModel:
    """A causal LM made of a LLaVA-family model's language model and head (sharing them)."""
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(text_config)
    base_name = llm.base_model_prefix
    head_name = next(name for name, module in llm.named_children() if module is llm.get_output_embeddings())
    setattr(llm, base_name, source.model.language_model)
    setattr(llm, head_name, source.lm_head)
    on_meta = [name for name, t in (*llm.named_parameters(), *llm.named_buffers()) if t.is_meta]
    if on_meta:
        raise ExportError(f"{type(llm).__name__} has parts beyond its base model and head: {', '.join(on_meta)}")
    if text_config.tie_word_embeddings:
        llm.tie_weights()
    return llm


def projector_state(connector_name: str, connector: Connector) -> dict[str, torch.Tensor]:
    """LLaVA `multi_modal_projector` weights of our connector, or an ExportError saying why there are none."""
    if connector_name != "mlp2x_gelu" or not isinstance(connector, MLPConnector):
        raise ExportError(f"connector {connector_name!r} has no LLaVA projector counterpart: LLaVA's projector is "
                          "always Linear -> GELU -> Linear on every patch (our 'mlp2x_gelu')")
    if connector.act.approximate != "none":
        raise ExportError("the connector uses tanh-approximate GELU; LLaVA's 'gelu' is exact")
    state = connector.state_dict()
    extra = sorted(k for k in state if k.split(".")[0] not in PROJECTOR_NAMES)
    if extra:
        raise ExportError(f"the connector has parameters a LLaVA projector lacks: {', '.join(extra)}")
    return {f"{PROJECTOR_NAMES[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in state.items()}


def projector_to_connector(projector: nn.Module, act: str, connector: Connector) -> None:
    """Load a LLaVA projector into a freshly built `mlp2x_gelu` connector."""
    if act != "gelu" or not isinstance(connector, MLPConnector) or projector.linear_1.bias is None:
        raise ExportError(f"a LLaVA projector with activation {act!r} and biases={projector.linear_1.bias is not None}"
                          " has no mllm connector counterpart (need exact 'gelu' with biases: mlp2x_gelu)")
    inverse = {v: k for k, v in PROJECTOR_NAMES.items()}
    state = {f"{inverse[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in projector.state_dict().items()}
    connector.load_state_dict(state, strict=True)
