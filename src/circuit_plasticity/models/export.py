"""`export`: any model or checkpoint of ours as a folder `AutoModelForCausalLM.from_pretrained`
loads with transformers alone (and so the Trainer, PEFT and every other tool).

- Checkpoints of hub models (GPT-2, Pythia, Llama, ... fine-tuned by `train`/`run`): their
  base's architecture, with these weights (`save_pretrained`).
- Our native models with MLPs (toy-gt and its fine-tunes): a GPT-2 config expresses them
  exactly (learned positions, LayerNorm, biases, exact GELU, separate unembedding).
- Attention-only native models (toy-ioi) are refused: no architecture of transformers has
  blocks without an MLP, and a GPT-2 with MLPs of zeros is the same function only until it is
  trained (the MLP's output bias would learn), so it would not be the same model to fine-tune.
"""

from __future__ import annotations

from pathlib import Path

import torch

from circuit_plasticity.errors import UserError
from circuit_plasticity.models.load import LoadedModel, load_model


def export_model(spec: str, out: str | Path) -> Path:
    """Write `spec` (a model name or folder) to `out` as a transformers folder; returns `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; export into a new folder")
    loaded = load_model(spec, device="cpu")
    hf_model = _native_as_gpt2(loaded) if loaded.kind == "native" else _hub_copy(loaded)
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out)
    _save_tokenizer(loaded, out)
    return out


def _hub_copy(loaded: LoadedModel):
    """A plain transformers model of the base's architecture holding these weights (the
    bridge's own module holds views that `save_pretrained` cannot write)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(loaded.base or loaded.name, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config)
    state = {  # the bridge wraps each module: its names carry `._original_component`
        k.replace("._original_component", ""): v.detach().clone().contiguous()
        for k, v in loaded.model.original_model.state_dict().items()
    }
    wanted = model.state_dict()  # the bridge's dict also holds aliases (ln1 for ln_1, ...)
    missing = [k for k in wanted if k not in state and "lm_head" not in k and not k.endswith("attn.bias")]
    if missing:
        raise UserError(f"{loaded.name}: weights do not fit {loaded.base} (missing {missing[:3]})")
    model.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()


def _native_as_gpt2(loaded: LoadedModel):
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuit_plasticity.models.native import stable_state_dict

    cfg = loaded.model.cfg
    if getattr(cfg, "attn_only", False):
        raise UserError(
            f"{loaded.name} is attention-only: no transformers architecture has blocks without an MLP "
            "(a GPT-2 with zeroed MLPs would learn MLP biases when trained); export works for models "
            "with MLPs (toy-gt and its fine-tunes) and for checkpoints of hub models"
        )
    act = str(getattr(cfg, "act_fn", "gelu"))
    if act != "gelu" or cfg.d_head * cfg.n_heads != cfg.d_model or cfg.normalization_type != "LN":
        raise UserError(f"{loaded.name}: GPT-2 cannot express this architecture (act {act}, LN, d_head)")
    w = stable_state_dict(loaded.model)
    if "unembed.bias" in w and bool(w["unembed.bias"].abs().max() > 0):
        raise UserError(f"{loaded.name}: its unembedding has a bias, which GPT-2's lm_head lacks")
    tok = loaded.tokenizer
    config = GPT2Config(
        vocab_size=int(cfg.d_vocab),
        n_positions=int(cfg.n_ctx),
        n_embd=int(cfg.d_model),
        n_layer=int(cfg.n_layers),
        n_head=int(cfg.n_heads),
        n_inner=int(cfg.d_mlp),
        activation_function="gelu",
        layer_norm_epsilon=float(getattr(cfg, "eps", 1e-5)),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.bos_id,
        pad_token_id=tok.pad_id,
    )
    model = GPT2LMHeadModel(config)
    state = {
        "transformer.wte.weight": w["embed.weight"],
        "transformer.wpe.weight": w["pos_embed.weight"],
        "transformer.ln_f.weight": w["ln_final.weight"],
        "transformer.ln_f.bias": w["ln_final.bias"],
        "lm_head.weight": w["unembed.weight"],
    }
    for layer in range(int(cfg.n_layers)):
        ours, theirs = f"blocks.{layer}.", f"transformer.h.{layer}."
        for a, b in (("ln1", "ln_1"), ("ln2", "ln_2")):
            state[theirs + f"{b}.weight"] = w[ours + f"{a}.weight"]
            state[theirs + f"{b}.bias"] = w[ours + f"{a}.bias"]
        qkv = [w[ours + f"attn.{x}.weight"] for x in "qkv"]  # nn.Linear: [out, in]
        state[theirs + "attn.c_attn.weight"] = torch.cat(qkv, 0).T.contiguous()  # Conv1D: [in, out]
        state[theirs + "attn.c_attn.bias"] = torch.cat([w[ours + f"attn.{x}.bias"] for x in "qkv"])
        state[theirs + "attn.c_proj.weight"] = w[ours + "attn.o.weight"].T.contiguous()
        state[theirs + "attn.c_proj.bias"] = w[ours + "attn.o.bias"]
        state[theirs + "mlp.c_fc.weight"] = w[ours + "mlp.fc_in.weight"].T.contiguous()
        state[theirs + "mlp.c_fc.bias"] = w[ours + "mlp.fc_in.bias"]
        state[theirs + "mlp.c_proj.weight"] = w[ours + "mlp.fc_out.weight"].T.contiguous()
        state[theirs + "mlp.c_proj.bias"] = w[ours + "mlp.fc_out.bias"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.endswith(("attn.bias", "attn.masked_bias"))]:
        raise UserError(f"{loaded.name}: weights do not map onto GPT-2 ({missing[:3]}, {unexpected[:3]})")
    return model.eval()


def _save_tokenizer(loaded: LoadedModel, out: Path) -> None:
    from circuit_plasticity.models.load import hf_tokenizer

    if loaded.kind == "native":
        tmp = out / "tokenizer.json"
        loaded.tokenizer.backend.save(str(tmp))
        hf_tokenizer(str(tmp)).save_pretrained(out)
    else:
        hf_tokenizer(loaded.base or loaded.name).save_pretrained(out)
