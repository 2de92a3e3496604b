"""The family table (mm_adapter/model/family.py): every row checked against the explicit formula.

Each supported ``model_type`` gets a tiny random model here (ROWS); a row added to the table
without one fails ``test_every_family_row_has_a_tiny_model``. Gemma2's model is built with a wide
initialisation and a small softcap so that the caps visibly change scores (with transformers'
default init, scores are ~0.1 and a cap of 50 would be a no-op the tests could not see). Gemma3's
(tiny.GEMMA3) mixes sliding and global layers and gets random norm weights (tiny.randomise_norms), so
its 1 + weight norm scale and its q/k norms are visible.
"""

import pytest
import torch
from transformers import (
    Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Olmo2Config,
    Olmo2ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM,
)

from mm_adapter import AdapterConfig, MMAdapterError, adapter_parameters, attach_adapter, detach_adapter
from mm_adapter.model.adapter import adaption_prompts
from mm_adapter.model.family import FAMILIES, eager_function
from reference import reference_logits
from tiny import COMMON, GEMMA3, left_padded_batch, randomise_adapter, randomise_norms, tiny_model

ROWS = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(num_key_value_heads=2)),
    "mistral": (MistralConfig, MistralForCausalLM, dict(num_key_value_heads=1, sliding_window=4)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(num_key_value_heads=2, use_sliding_window=True, sliding_window=4,
                                                  max_window_layers=2)),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(num_key_value_heads=2, head_dim=16)),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, dict(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                                                     sliding_window=4, attn_logit_softcapping=2.0,
                                                     initializer_range=0.2)),
    "gemma3_text": GEMMA3,
}
RANDOM_NORMS = {"gemma3_text"}
ATTENTION = {"gemma2": ["eager"]}  # SDPA cannot softcap: refused (test_softcap_under_sdpa_is_refused_in_one_line)
CASES = [(family, attn) for family in ROWS for attn in ATTENTION.get(family, ["sdpa", "eager"])]


def tiny(family, attn="sdpa", seed=0, **overrides):
    model = tiny_model(family, seed, attn, rows=ROWS, **overrides)
    return randomise_norms(model) if family in RANDOM_NORMS else model


def forward(model, batch):
    ids, mask, positions = batch
    return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def reference(model, batch, **switches):
    """tests/reference.py on the live adapter parameters (differentiable)."""
    return reference_logits(model, *batch, adapter_parameters(model), **switches)


def test_every_family_row_has_a_tiny_model():
    """No table row goes untested: adding a family means adding its tiny model here."""
    assert set(ROWS) == set(FAMILIES)


@pytest.mark.parametrize("family,attn", CASES)
def test_each_family_zero_init_is_exact_and_forward_matches_the_formula(family, attn):
    """Per row: a zero gate leaves the base model bit-identical (token block = the family's own
    attention, sliding windows included), and random prompts/gates match tests/reference.py."""
    model = tiny(family, attn)
    batch = left_padded_batch()
    real = batch[1].bool()
    with torch.no_grad():
        base = forward(model, batch)
        attach_adapter(model, AdapterConfig(adapter_len=5, adapter_layers=3))
        assert torch.equal(forward(model, batch), base)
        randomise_adapter(model)
        ours, expected = forward(model, batch), reference(model, batch)
    torch.testing.assert_close(ours[real], expected[real], atol=2e-5, rtol=1e-4)
    assert (ours[real] - base[real]).abs().max() > 1e-2  # not vacuous: the adapter moved the logits


@pytest.mark.parametrize("family,attn", CASES)
def test_each_family_gradients_match_the_formula(family, attn):
    """Per row: the training path (matmul chain, softcap included) gives the formula's gradients."""
    model = randomise_adapter(attach_adapter(tiny(family, attn), AdapterConfig(adapter_len=4, adapter_layers=2))).train()
    batch = left_padded_batch()
    weights = torch.linspace(-1, 1, model.config.vocab_size)

    def grads(logits):
        params = [p for entry in adapter_parameters(model).values() for p in entry.values()]
        return torch.autograd.grad(((logits * weights).sum(-1) * batch[1]).sum(), params)

    for ours, expected in zip(grads(forward(model, batch)), grads(reference(model, batch)), strict=True):
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-3)
        assert ours.abs().sum() > 0


@pytest.mark.parametrize("family", ["qwen3", "gemma3_text"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prompt_keys_go_through_k_norm(family, attn):
    """Qwen3 and Gemma3 RMS-normalise keys per head before rotary; prompt keys must get the same k_norm
    (Gemma3's with its 1 + weight scale). The formula with and without it differ by far more than the
    tolerance, and ours is the former."""
    model = randomise_adapter(attach_adapter(tiny(family, attn), AdapterConfig(adapter_len=5, adapter_layers=3)))
    assert model.model.layers[-1].self_attn.adapter.runtime.family.key_norm == "k_norm"
    batch = left_padded_batch()
    real = batch[1].bool()
    with torch.no_grad():
        ours = forward(model, batch)
        with_norm, without = reference(model, batch), reference(model, batch, prompt_key_norm=False)
    assert (with_norm[real] - without[real]).abs().max() > 1e-2
    torch.testing.assert_close(ours[real], with_norm[real], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_gemma2_softcap_is_applied_to_prompt_scores(grad):
    """Gemma2 softcaps attention logits; prompt scores get cap * tanh(s / cap) too, on both the
    inference and the training path. Formula with and without the prompt cap differ; ours is the former."""
    model = randomise_adapter(attach_adapter(tiny("gemma2", "eager"), AdapterConfig(adapter_len=5, adapter_layers=3)))
    assert model.model.layers[-1].self_attn.adapter.runtime.family.softcap == 2.0
    batch = left_padded_batch()
    real = batch[1].bool()
    with torch.set_grad_enabled(grad):
        ours = forward(model, batch).detach()
    with torch.no_grad():
        capped, uncapped = reference(model, batch), reference(model, batch, prompt_softcap=False)
    assert (capped[real] - uncapped[real]).abs().max() > 1e-2
    torch.testing.assert_close(ours[real], capped[real], atol=2e-5, rtol=1e-4)


def test_gemma2_cached_decoding_matches_a_full_forward():
    """The no-grad softcap path with prompt K/V reused across decoding steps (projected once) gives
    the full forward's logits."""
    model = randomise_adapter(attach_adapter(tiny("gemma2", "eager"), AdapterConfig(adapter_len=5, adapter_layers=3)))
    ids = torch.randint(3, 97, (1, 9), generator=torch.Generator().manual_seed(2))
    adapters = list(adaption_prompts(model).values())
    with torch.no_grad():
        full = model(input_ids=ids).logits
        out = model(input_ids=ids[:, :6], use_cache=True)
        before = [adapter.kv_computations for adapter in adapters]
        steps = [out.logits]
        for position in range(6, 9):
            out = model(input_ids=ids[:, position:position + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits)
    assert [adapter.kv_computations for adapter in adapters] == before  # reused, not recomputed
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)


def test_softcap_under_sdpa_is_refused_in_one_line():
    """SDPA cannot softcap: attaching to a softcapped model under SDPA is refused, not silently wrong."""
    model = tiny("gemma2", "eager")
    model.config._attn_implementation = "sdpa"
    with pytest.raises(MMAdapterError) as error:
        attach_adapter(model, AdapterConfig(adapter_len=2, adapter_layers=1))
    assert str(error.value) == ("model type 'gemma2' is not supported by the adapter: attention logits are softcapped "
                                "(attn_logit_softcapping=2.0) and SDPA cannot softcap; load it with "
                                "attn_implementation='eager'")


def test_gemma2_eager_token_block_runs_gemma2s_own_eager_attention():
    """The wrapped eager function comes from the family row: Gemma2's caps token scores, Llama's
    would not (the zero-init model would then differ from the base). The caps matter here: the same
    model without a softcap computes other logits."""
    model = tiny("gemma2", "eager")
    batch = left_padded_batch()
    with torch.no_grad():
        base = forward(model, batch)
        attach_adapter(model, AdapterConfig(adapter_len=2, adapter_layers=4))
        assert model.config._attn_implementation == "mm_adapter_eager_gemma2"
        assert torch.equal(forward(model, batch), base)
        uncapped = forward(tiny("gemma2", "eager", attn_logit_softcapping=None), batch)
    assert (uncapped - base).abs().max() > 1e-2
    from transformers.models.gemma2 import modeling_gemma2
    assert eager_function(FAMILIES["gemma2"]) is modeling_gemma2.eager_attention_forward


def test_gemma3_tiny_model_exercises_every_layer_kind():
    """The Gemma3 parity tests are not vacuous: the sliding window, the global layers' own rotary base and
    query_pre_attn_scalar each change the tiny model's logits, and its eager token block is Gemma3's own."""
    batch = left_padded_batch()
    real = batch[1].bool()
    with torch.no_grad():
        base = forward(tiny("gemma3_text"), batch)
        variants = {
            "no window": dict(sliding_window=64),
            "one rotary base": dict(rope_parameters={kind: {"rope_type": "default", "rope_theta": 10000.0}
                                                     for kind in ("sliding_attention", "full_attention")}),
            "head_dim scaling": dict(query_pre_attn_scalar=16),
        }
        for name, overrides in variants.items():
            assert (forward(tiny("gemma3_text", **overrides), batch)[real] - base[real]).abs().max() > 1e-3, name
    from transformers.models.gemma3 import modeling_gemma3
    assert eager_function(FAMILIES["gemma3_text"]) is modeling_gemma3.eager_attention_forward


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gemma3_attn_logit_softcapping_is_ignored_as_transformers_ignores_it(attn):
    """Gemma3's config has attn_logit_softcapping, but its attention never passes it on: token scores are not
    capped, so prompt scores are not either, and SDPA is not refused (a row copying Gemma2's would do both)."""
    batch = left_padded_batch()
    real = batch[1].bool()
    model = tiny("gemma3_text", attn, attn_logit_softcapping=0.5)
    with torch.no_grad():
        assert torch.equal(forward(model, batch), forward(tiny("gemma3_text", attn), batch))
        randomise_adapter(attach_adapter(model, AdapterConfig(adapter_len=5, adapter_layers=3)))
        ours, expected = forward(model, batch), reference(model, batch)
    assert model.model.layers[-1].self_attn.adapter.runtime.family.softcap is None
    torch.testing.assert_close(ours[real], expected[real], atol=2e-5, rtol=1e-4)


def test_bidirectional_gemma3_is_refused_in_one_line():
    """use_bidirectional_attention makes Gemma3 an encoder (EmbeddingGemma): refused, nothing attached."""
    model = tiny("gemma3_text", use_bidirectional_attention=True)
    with pytest.raises(MMAdapterError) as error:
        attach_adapter(model, AdapterConfig(adapter_len=2, adapter_layers=1))
    assert str(error.value) == ("model type 'gemma3_text' is not supported by the adapter: its attention is "
                                "bidirectional (use_bidirectional_attention=True), not a causal decoder's")
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_gqa_query_head_h_reads_prompt_kv_head_h_over_groups(family):
    """GQA: query head h uses key/value head h // (heads / kv_heads), as transformers' repeat_kv does
    (repeat_interleave, not tiling)."""
    model = randomise_adapter(attach_adapter(tiny(family), AdapterConfig(adapter_len=3, adapter_layers=1)))
    (adapter,) = adaption_prompts(model).values()
    heads = adapter.runtime.family.heads
    assert (heads.num_heads, heads.num_kv_heads, heads.kv_groups) == (4, model.config.num_key_value_heads,
                                                                      4 // model.config.num_key_value_heads)
    attn = model.model.layers[-1].self_attn
    with torch.no_grad():
        key, value = adapter.prompt_kv(attn, torch.float32)
        raw_k = attn.k_proj(adapter.prompt).view(3, heads.num_kv_heads, heads.head_dim)
        raw_v = attn.v_proj(adapter.prompt).view(3, heads.num_kv_heads, heads.head_dim)
    for h in range(heads.num_heads):
        assert torch.equal(key[0, h], raw_k[:, h // heads.kv_groups])
        assert torch.equal(value[0, h], raw_v[:, h // heads.kv_groups])


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3_text"])
def test_norm_scaled_init_multiplies_prompts_by_the_input_norm_scale(family):
    """prompt_init="norm_scaled": prompts are N(0, std^2) draws (in layer order, from the global seed)
    times the layer's input-norm scale, which is weight for Llama and 1 + weight for Gemma2 and Gemma3."""
    model = tiny(family, "eager")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(-0.5, 1.5)  # not all ones/zeros: the scale must be visible
    offset = {"llama": 0.0, "gemma2": 1.0, "gemma3_text": 1.0}[family]
    torch.manual_seed(11)
    attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=2, prompt_init="norm_scaled",
                                        prompt_init_std=0.5))
    torch.manual_seed(11)
    for index, entry in adapter_parameters(model).items():
        draw = torch.randn(4, model.config.hidden_size) * 0.5
        expected = draw * (offset + model.model.layers[index].input_layernorm.weight)
        torch.testing.assert_close(entry["prompt"].detach(), expected, atol=0, rtol=1e-6)
        assert (expected - draw).abs().max() > 0.1


def test_unknown_model_type_is_refused_in_one_line():
    """Families outside the table are refused, not guessed as Llama-like: OLMo2 looks like Llama but
    normalises keys over the whole projection, which a Llama default would silently skip."""
    config = Olmo2Config(**COMMON, num_key_value_heads=2)
    config._attn_implementation = "sdpa"
    model = Olmo2ForCausalLM(config)
    with pytest.raises(MMAdapterError) as error:
        attach_adapter(model, AdapterConfig(adapter_len=2, adapter_layers=1))
    assert str(error.value) == ("model type 'olmo2' is not supported by the adapter: it is not in the family table "
                                "(supported: gemma2, gemma3_text, llama, mistral, qwen2, qwen3)")
    assert model.config._attn_implementation == "sdpa" and all(p.requires_grad for p in model.parameters())


def test_a_layer_missing_what_its_row_promises_is_refused_at_attach():
    """A qwen3 model whose attention lost its k_norm is refused when attaching, not mid-forward."""
    model = tiny("qwen3")
    del model.model.layers[3].self_attn.k_norm
    with pytest.raises(MMAdapterError, match=r"^model type 'qwen3' is not supported by the adapter: decoder layer 3 "
                                             r"\(Qwen3DecoderLayer\) has no self_attn.k_norm$"):
        attach_adapter(model, AdapterConfig(adapter_len=2, adapter_layers=1))


def test_detach_restores_the_family_eager_implementation():
    """Detaching gives back the plain implementation name, whatever family name was registered."""
    model = tiny("qwen3", "eager")
    attach_adapter(model, AdapterConfig(adapter_len=2, adapter_layers=1))
    assert model.config._attn_implementation == "mm_adapter_eager_qwen3"
    detach_adapter(model)
    assert model.config._attn_implementation == "eager"
