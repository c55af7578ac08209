"""Why transformers is pinned where it is, and that the installed packages are the pinned ones.

transformers 5.6.0's FlashAttention-2 integration passes ``s_aux=s_aux.to(query.dtype)`` with ``s_aux``
None by default, so every FA2 call of a model without attention sinks (Qwen2-VL) raises AttributeError
(LLaMA-Factory issue 10610, transformers issue 45588). flash-attn has no CPU build: the kernel is
replaced by plain PyTorch attention, and the integration's own argument handling runs for real.
"""

import re
from importlib.metadata import version

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2VLTextConfig
from transformers.integrations import flash_attention
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLAttention, Qwen2VLRotaryEmbedding

from conftest import REPO

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16  # grouped-query attention, as in Qwen2-VL


def pinned_versions() -> dict[str, str]:
    lines = (REPO / "requirements/lock.txt").read_text(encoding="utf-8").splitlines()
    pins = (re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip()) for line in lines)
    return {pin[1].lower().replace("_", "-"): pin[2] for pin in pins if pin}


@pytest.mark.parametrize("package", ["transformers", "llamafactory", "peft"])
def test_the_installed_training_stack_is_the_pinned_one(package):
    assert version(package) == pinned_versions()[package], f"{package} drifted from requirements/lock.txt"


@pytest.fixture
def kernel_calls(monkeypatch) -> list[dict]:
    """Replace the flash-attn kernel call with causal SDPA; return the arguments of each call."""
    calls = []

    def sdpa_kernel(query, key, value, attention_mask, query_length, is_causal, **kwargs):
        calls.append({"attention_mask": attention_mask, "query_length": query_length, "is_causal": is_causal, **kwargs})
        assert attention_mask is None and kwargs.get("dropout", 0.0) == 0.0
        # FA2 takes and returns (batch, sequence, heads, head_dim); SDPA works on (batch, heads, sequence, head_dim).
        output = F.scaled_dot_product_attention(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            is_causal=is_causal,
            scale=kwargs.get("softmax_scale"),
            enable_gqa=True,
        )
        return output.transpose(1, 2)

    monkeypatch.setattr(flash_attention, "_flash_attention_forward", sdpa_kernel)
    return calls


def text_attention(implementation: str) -> Qwen2VLAttention:
    config = Qwen2VLTextConfig(
        hidden_size=HEADS * HEAD_DIM,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=32,
        num_hidden_layers=1,
        vocab_size=16,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 2, 2]},
    )
    config._attn_implementation = implementation
    torch.manual_seed(0)
    return Qwen2VLAttention(config, layer_idx=0).eval()


def causal_sdpa(query, key, value, scale):
    """Causal SDPA on (batch, heads, sequence, head_dim), key/value heads repeated, as FA2 returns it."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale).transpose(1, 2)


def test_the_pinned_flash_attention_integration_takes_qwen2_vl_s_call_without_attention_sinks(kernel_calls):
    module = text_attention("flash_attention_2")
    generator = torch.Generator().manual_seed(1)
    batch, length = 2, 7
    query = torch.randn(batch, HEADS, length, HEAD_DIM, generator=generator)
    key, value = torch.randn(2, batch, KV_HEADS, length, HEAD_DIM, generator=generator)

    assert ALL_ATTENTION_FUNCTIONS["flash_attention_2"] is flash_attention.flash_attention_forward
    # Qwen2VLAttention.forward's call: no attention mask without padding, no s_aux.
    output, weights = ALL_ATTENTION_FUNCTIONS["flash_attention_2"](
        module,
        query,
        key,
        value,
        None,
        dropout=0.0,
        scaling=module.scaling,
        sliding_window=module.sliding_window,
        position_ids=None,
    )

    assert len(kernel_calls) == 1, "the integration reached the (replaced) kernel"
    call = kernel_calls[0]
    assert call["is_causal"] and call["query_length"] == length and call["softmax_scale"] == module.scaling
    assert output.shape == (batch, length, HEADS, HEAD_DIM) and weights is None
    torch.testing.assert_close(output, causal_sdpa(query, key, value, module.scaling), atol=1e-5, rtol=1e-5)


def test_a_qwen2_vl_text_attention_layer_on_flash_attention_2_matches_it_on_sdpa(kernel_calls):
    flash, sdpa = text_attention("flash_attention_2"), text_attention("sdpa")
    batch, length = 2, 9
    hidden = torch.randn(batch, length, HEADS * HEAD_DIM, generator=torch.Generator().manual_seed(2))
    positions = torch.arange(length).view(1, 1, -1).expand(3, batch, -1)  # text-only M-RoPE positions
    rotary = Qwen2VLRotaryEmbedding(flash.config)(hidden, positions)

    with torch.no_grad():
        output, _ = flash(hidden, attention_mask=None, position_ids=None, position_embeddings=rotary)
        expected, _ = sdpa(hidden, attention_mask=None, position_ids=None, position_embeddings=rotary)

    assert len(kernel_calls) == 1
    assert output.shape == (batch, length, HEADS * HEAD_DIM)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def test_vlmflow_has_one_version_number_the_package_and_its_metadata_share():
    import tomllib

    import vlmflow

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" not in project and project["dynamic"] == ["version"]  # read from vlmflow.__version__
    assert version("vlmflow") == vlmflow.__version__
