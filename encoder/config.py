"""The one object that fixes every size of the model; saved with each checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes, bucket counts and ablation switches of a DUPN model.

    Ids are hashed into ``*_buckets`` rows (bucket 0 = absent), so an id never
    seen in training still maps somewhere instead of failing.
    """

    # hash buckets
    item_buckets: int = 1 << 17
    shop_buckets: int = 1 << 13
    brand_buckets: int = 1 << 13
    category_buckets: int = 1 << 11
    tag_buckets: int = 1 << 12
    query_buckets: int = 1 << 11
    talent_buckets: int = 1 << 11
    # item embedding sizes (the seed: 32, 24, 24, 16, 28)
    item_dim: int = 32
    shop_dim: int = 24
    brand_dim: int = 24
    category_dim: int = 16
    tag_dim: int = 28
    # behavior property sizes (scenario, time, event type: 16 each)
    scenario_dim: int = 16
    time_dim: int = 16
    type_dim: int = 16
    # user profile (age group x gender) and query
    profile_dim: int = 16
    query_dim: int = 16
    n_age_groups: int = 6
    n_genders: int = 2
    # sequence model
    hidden: int = 128
    attention_dim: int = 32
    value_dim: int = 64
    pooled_dim: int = 128
    rep_dim: int = 256
    window: int = 100
    # ablations: where behavior properties enter (DUPN-nobp / bplstm / bpatt / all)
    props_in_lstm: bool = True
    props_in_attention: bool = True
    # the query also enters the representation (r = tanh(W_r [pooled; u; q])), as it enters the
    # baselines' inputs; off by default so that checkpoints written before the field load unchanged
    query_in_rep: bool = False
    # attention values also take the behavior's own item embedding and type (a skip connection
    # around the LSTM: v_t = W_v h_t + W_ve e_t + E_vt(type_t)); off = the talk's v_t = W_v h_t
    value_skip: bool = False
    # attention weights: "softmax" over the window (the talk) or "sigmoid": α_t = σ(s_t) / window,
    # unnormalised so the pooled vector keeps how much of the window matches (AttentionPooling.alpha)
    attention_norm: str = "softmax"
    # attention heads H: each scores the window with its own w_h and pools its own Σ_t α_ht v_t, and W_o
    # maps the H pooled values together (AttentionPooling); 1 = the talk's single attention
    attention_heads: int = 1
    # towers G: the user part as G independent towers, each with hidden/G LSTM units, attention_dim/G key
    # and value_dim/G value dims, its own attention head(s) and rep_dim/G of r (r = [r_1; …; r_G]); they
    # share only the embeddings and the context. With ``TrainConfig.tower_tasks`` each tower learns from
    # its own tasks. 1 = the talk's single encoder (DUPN.towers, encoder.model.tower_masks)
    towers: int = 1
    # initial std of the item and context embedding rows (an initialisation only: checkpoints carry
    # the trained rows, so the field changes what training starts from, never what a model serves)
    embedding_std: float = 0.05
    # r = tanh(W_r [pooled; u; q] + b_r) (the default); False: r = W_r [...] + b_r, unbounded like Wide's
    rep_tanh: bool = True
    # heads. interaction_dim k > 0 adds a factorised user×candidate term to the CTR and talent
    # heads (TaskHeads); 0, the default, is the concatenation-only head older checkpoints have
    interaction_dim: int = 0
    # the item part (CTR candidates) reads its own embedding tables, [E'_item; E'_shop; ...], instead of
    # the behavior sequence's: candidate rows then learn from the CTR loss alone (DUPN.item_vectors)
    candidate_tables: bool = False
    n_ranking_features: int = 4
    n_talent_features: int = 3
    n_shop_features: int = 3
    n_power_levels: int = 7
    dropout: float = 0.2

    @property
    def item_vec_dim(self) -> int:
        return self.item_dim + self.shop_dim + self.brand_dim + self.category_dim + self.tag_dim

    @property
    def score_heads(self) -> int:
        """Attention scores per behavior: ``attention_heads`` per tower."""
        return self.attention_heads * self.towers

    @property
    def prop_vec_dim(self) -> int:
        return self.scenario_dim + self.time_dim + self.type_dim

    def to_json(self) -> str:
        """The config as saved with a checkpoint, and hashed into its ``model_version``.

        A field added after checkpoints were written is left out while it holds its neutral default
        (:data:`OMITTED_AT_DEFAULT`), so every existing checkpoint keeps its recorded version and loads.
        """
        doc = dataclasses.asdict(self)
        for name, neutral in OMITTED_AT_DEFAULT.items():
            if doc[name] == neutral:
                del doc[name]
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown encoder config fields: {sorted(unknown)}")
        return cls(**raw)

    def variant(self, name: str) -> EncoderConfig:
        """The paper's ablations by name: nobp, bplstm, bpatt, all."""
        flags = {
            "nobp": (False, False),
            "bplstm": (True, False),
            "bpatt": (False, True),
            "all": (True, True),
        }
        if name not in flags:
            raise ValueError(f"unknown DUPN variant {name!r}; expected one of {sorted(flags)}")
        lstm, att = flags[name]
        return dataclasses.replace(self, props_in_lstm=lstm, props_in_attention=att)


#: Fields added after checkpoints existed, and the value that means "as before" (omitted from
#: :meth:`EncoderConfig.to_json` at that value, so the content hash of older models is unchanged).
OMITTED_AT_DEFAULT: dict[str, object] = {
    "interaction_dim": 0,
    "value_skip": False,
    "rep_tanh": True,
    "attention_norm": "softmax",
    "embedding_std": 0.05,
    "candidate_tables": False,
    "attention_heads": 1,
    "towers": 1,
}
